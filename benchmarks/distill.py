"""Training and distillation acceptance, in three parts (run one or several):

  lowrank     ASVD vs plain SVD at the same parameter cut on SmolLM2: ppl (protocol (i)) on the
              embedded eval text and Austen's Emma, before any recovery.
  throughput  training tokens/s of slmkit's loop vs a minimal hand-written PyTorch loop
              (forward, backward, AdamW step, same autocast) on the same model, rows, sequence
              length and batch, interleaved; peak RSS of each (each in its own process).
  recovery    SmolLM2 with 25% of parameters removed structurally, trained for the same number of
              steps with KD (forward KL from the unpruned model; `kd_ce`: mixed with CE on the
              labels) and with plain CE, then CE again for as long as KD took; share of the ppl
              gap recovered on both texts.

    python benchmarks/distill.py --parts lowrank,throughput [--model default] [--tag _smollm2]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

from _common import eval_texts, model_arg, ppl_function, write_result  # noqa: E402


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="lowrank,throughput")
    ap.add_argument("--model", type=model_arg, default="default")
    ap.add_argument("--eval-tokens", type=int, default=25600)
    ap.add_argument("--window", type=int, default=2048)
    ap.add_argument("--lowrank-keep", type=float, default=0.8, help="fraction of linear params kept")
    ap.add_argument("--calib-n", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--steps", type=int, default=30, help="throughput: steps timed after 5 warm-up")
    ap.add_argument("--recovery-steps", type=int, default=48, help="48 KD steps: ~21 min here")
    ap.add_argument("--recovery-method", default="width", choices=["width", "depth"])
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--curve-every", type=int, default=8, help="recovery: probe ppl every N steps")
    ap.add_argument("--kd-ce-weight", type=float, default=0.0,
                    help="recovery: the kd run's loss = (1 - w) x KL + w x CE on the labels")
    ap.add_argument("--kd-ce-mix", default="0.5",
                    help="recovery: w of the kd_ce run (KD mixed with CE, Hinton's recipe); a comma "
                         "list (0.7,0.9) makes one run per weight, named kd_ce<w>")
    ap.add_argument("--recovery-runs", default="kd,ce,ce_equal_time",
                    help="recovery runs to do, from kd, kd_ce, kd_cached, ce, ce_equal_time "
                         "(ce_equal_time needs ce and a KD run: it gets as many CE steps as fit in "
                         "the slowest KD run's training time). kd_cached: no teacher forward; on the "
                         "self-generated rows the target mixes in the teacher's top-k distributions "
                         "recorded while it wrote them (needs `self` in --recovery-data)")
    ap.add_argument("--soft-weight", type=float, default=0.5,
                    help="kd_cached: target = (1 - w) onehot(label) + w x the teacher's top-k")
    ap.add_argument("--soft-topk", type=int, default=64, help="kd_cached: teacher tokens kept per position")
    ap.add_argument("--recovery-data", default="pydoc-all",
                    help="recovery training rows: 'pydoc-all' (every 512-token chunk of the pydoc "
                         "calibration part, in order, repeated as needed: 120 rows, so 48 x 4 "
                         "rows is 1.6 epochs) or a calibration spec, e.g. 'embedded@0.5,self@0.5' "
                         "(steps x batch rows, shuffled; self = sampled from the unpruned model)")
    ap.add_argument("--repeats", type=int, default=2,
                    help="throughput: runs of each loop, in alternating order (forward, reversed, ...)")
    ap.add_argument("--loops", default="hand,slmkit,slmkit_ckpt50,slmkit_ckpt,trl",
                    help="throughput: the loops to time (trl needs benchmarks/peers/setup.sh trl). "
                         "slmkit_<allocator> (or hand_<allocator>) = that loop with the allocator settings of "
                         "ALLOCATORS: jemalloc (LD_PRELOAD=libjemalloc.so.2), jemalloc_thp (and "
                         "MALLOC_CONF=thp:always), thp (GLIBC_TUNABLES=glibc.malloc.hugetlb=1), "
                         "pin_thp (hugetlb=1 and a fixed 4 MB mmap threshold)")
    ap.add_argument("--tag", default="")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: one timed loop
    return ap.parse_args()


# ---- throughput: each loop in its own process so peak RSS is its own -----------------------

def _rows(tok, n: int, length: int):
    from slmkit.data import embedded_text
    from slmkit.data.chunk import chunk, token_stream

    return chunk(token_stream(tok, embedded_text("calib")), length)[:n]


def _steal_seconds() -> float | None:
    """CPU time the hypervisor gave to other guests since boot, summed over this VM's CPUs (the
    8th field of /proc/stat's cpu line, in USER_HZ ticks); None where /proc/stat has no such field."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def worker(args) -> int:
    """Run one loop (args.worker = 'slmkit' | 'slmkit_ckpt' | 'slmkit_ckpt50' | 'hand'); print a JSON
    line with its numbers. slmkit_ckpt = slmkit's loop with gradient checkpointing, as TRL's
    SFTConfig defaults to; slmkit_ckpt50 = checkpointing every other decoder layer."""
    import resource

    import torch

    from slmkit.models import load
    from slmkit.train import Batches, CausalLM, TrainConfig, train
    from slmkit.train.loop import use_bf16_autocast

    model, tok = load(args.model, "float32")
    steps, warm = args.steps, 5
    ids = _rows(tok, (steps + warm) * args.batch_size, args.seq_len)
    autocast = use_bf16_autocast("auto")
    times: list[float] = []
    steal: list[float | None] = []          # at the start and the end of the timed steps
    if args.worker.startswith("slmkit"):
        stamps = []
        cfg = TrainConfig(steps=steps + warm, batch_size=args.batch_size, lr=args.lr, warmup=0,
                          schedule="constant", max_grad_norm=1.0, log_every=1,
                          gradient_checkpointing=args.worker != "slmkit",
                          checkpoint_fraction=0.5 if args.worker == "slmkit_ckpt50" else 1.0)
        t_last = [time.perf_counter()]

        def stamp(step, record):
            now = time.perf_counter()
            stamps.append(now - t_last[0])
            t_last[0] = now
            if step in (warm, steps + warm):
                steal.append(_steal_seconds())

        import tempfile

        with tempfile.TemporaryDirectory(prefix="slmkit-tp-") as out:  # JSONL log on, as users run it
            train(model, CausalLM(), Batches(ids), cfg, out, callback=stamp)
        times = stamps[warm:]
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95))
        model.train()
        for i in range(steps + warm):
            if i == warm:
                steal.append(_steal_seconds())
            t0 = time.perf_counter()
            batch = ids[i * args.batch_size:(i + 1) * args.batch_size]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                logits = model(input_ids=batch, use_cache=False).logits
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(),
                                                     batch[:, 1:].flatten())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if i >= warm:
                times.append(time.perf_counter() - t0)
        steal.append(_steal_seconds())
    tokens = args.batch_size * args.seq_len * len(times)
    # the share of this VM's CPU time taken by the host for other guests while the steps ran:
    # a run with a large share timed the neighbours as much as the loop
    stolen = (steal[1] - steal[0]) / (sum(times) * (os.cpu_count() or 1)) if None not in steal[:2] else None
    print(json.dumps({"loop": args.worker, "tok_s": tokens / sum(times), "steps": len(times),
                      "steal_frac": stolen,
                      "step_s_median": sorted(times)[len(times) // 2], "bf16_autocast": autocast,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
    return 0


TRL_PY = Path(__file__).resolve().parents[1] / ".venv-peers" / "trl" / "bin" / "python"


def _trl_cmd(args) -> list[str]:
    """TRL's SFTTrainer on the same rows, in its own venv (benchmarks/peers/setup.sh trl)."""
    import tempfile

    import torch

    from slmkit.models import load, save
    from slmkit.train.loop import use_bf16_autocast

    work = Path(tempfile.mkdtemp(prefix="slmkit-trl-"))
    model, tok = load(args.model, "float32")
    folder = save(model, tok, work / "model")
    torch.save(_rows(tok, (args.steps + 5) * args.batch_size, args.seq_len), work / "rows.pt")
    cmd = [str(TRL_PY), str(Path(__file__).parent / "peers" / "trl_run.py"), "--model", str(folder),
           "--rows", str(work / "rows.pt"), "--batch-size", str(args.batch_size), "--steps",
           str(args.steps), "--warmup-steps", "5", "--lr", str(args.lr)]
    return cmd + (["--bf16"] if use_bf16_autocast("auto") else [])


def _jemalloc() -> str | None:
    """Path of jemalloc's shared library (Debian's libjemalloc2), or None."""
    for folder in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib"):
        path = Path(folder) / "libjemalloc.so.2"
        if path.exists():
            return str(path)
    return None


_HUGE = "glibc.malloc.hugetlb=1"  # glibc >= 2.35: madvise(MADV_HUGEPAGE) on malloc's own memory
# slmkit_<name> loops: slmkit's default loop in a process started with these variables
# ("{jemalloc}" is filled with the library's path; a loop whose library is missing is dropped).
ALLOCATORS = {
    "jemalloc": {"LD_PRELOAD": "{jemalloc}"},
    "jemalloc_thp": {"LD_PRELOAD": "{jemalloc}", "MALLOC_CONF": "thp:always,metadata_thp:auto"},
    "thp": {"GLIBC_TUNABLES": _HUGE},
    "pin_thp": {"GLIBC_TUNABLES": f"{_HUGE}:glibc.malloc.mmap_threshold={4 << 20}"},
}


def _split_loop(loop: str) -> tuple[str, str | None]:
    """'slmkit_jemalloc' -> ('slmkit', 'jemalloc'); 'hand' -> ('hand', None)."""
    for base in ("slmkit", "hand"):
        name = loop.removeprefix(base + "_")
        if loop.startswith(base + "_") and name in ALLOCATORS:
            return base, name
    return loop, None


def _allocator_env(loop: str) -> dict | None:
    """The environment of an allocator loop; None for other loops; {} if its library is missing."""
    name = _split_loop(loop)[1]
    if name is None:
        return None
    jemalloc = _jemalloc()
    if any("{jemalloc}" in v for v in ALLOCATORS[name].values()) and not jemalloc:
        return {}
    return {k: v.format(jemalloc=jemalloc) for k, v in ALLOCATORS[name].items()}


def throughput(args) -> dict:
    """Run each loop `--repeats` times, alternating the order given and its reverse (drift and
    bursts from other tenants of the host then hit every loop alike); report best and median."""
    loops = [loop.strip() for loop in args.loops.split(",") if loop.strip()]
    known = {"hand", "slmkit", "slmkit_ckpt50", "slmkit_ckpt", "trl"} | {
        f"{base}_{a}" for a in ALLOCATORS for base in ("slmkit", "hand")}
    if args.repeats < 1:
        raise SystemExit(f"--repeats must be >= 1, not {args.repeats}")
    if set(loops) - known:
        raise SystemExit(f"--loops: unknown loop(s) {sorted(set(loops) - known)}; known: {sorted(known)}")
    trl = _trl_cmd(args) if "trl" in loops and TRL_PY.exists() else None
    if "trl" in loops and not trl:
        print(f"TRL venv missing ({TRL_PY}): run benchmarks/peers/setup.sh trl; timing without it")
        loops.remove("trl")
    envs = {loop: _allocator_env(loop) for loop in loops}
    for loop in [loop for loop, env in envs.items() if env == {}]:
        print(f"libjemalloc.so.2 not found (apt-get install libjemalloc2); timing without {loop}")
        loops.remove(loop)
    out: dict[str, list[dict]] = {loop: [] for loop in loops}
    # forward, reversed, forward, ...: drift and another tenant's bursts hit every loop alike
    order = [loop for i in range(args.repeats) for loop in (loops if i % 2 == 0 else loops[::-1])]
    for loop in order:
        cmd = trl if loop == "trl" else [
            sys.executable, __file__, "--worker", _split_loop(loop)[0], "--model", args.model,
            "--steps", str(args.steps), "--seq-len", str(args.seq_len), "--batch-size", str(args.batch_size)]
        env = {**os.environ, **envs[loop]} if envs[loop] else None
        r = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
        rec = json.loads(r.stdout.strip().splitlines()[-1])
        rec["loop"], rec["env"] = loop, envs[loop] or {}
        print(rec, flush=True)
        out[loop].append(rec)
    best = {k: max(r["tok_s"] for r in v) for k, v in out.items()}
    ratios = {f"{a} / {k}": best[a] / best[k] for a in best if a.startswith("slmkit") for k in best
              if k != a}
    median = {k: statistics.median(r["tok_s"] for r in v) for k, v in out.items()}
    return {"runs": out, "best_tok_s": best, "median_tok_s": median, "ratios": ratios,
            "median_ratios": {f"{a} / {k}": median[a] / median[k] for a in median
                              if a.startswith("slmkit") for k in median if k != a},
            "peak_rss_mb": {k: max(r["peak_rss_mb"] for r in v) for k, v in out.items()}}


# ---- low-rank ---------------------------------------------------------------------------------

def lowrank_part(args, base, tok, ppls) -> dict:
    from slmkit.compress import ASVDConfig, SVDConfig, lowrank
    from slmkit.generate.calibration import build_calibration

    calib = build_calibration(base, tok, "embedded", n=args.calib_n, length=args.seq_len, seed=0)
    rows = {}
    for name, cfg in (("svd", SVDConfig(keep=args.lowrank_keep)), ("asvd", ASVDConfig(keep=args.lowrank_keep))):
        model = copy.deepcopy(base)
        t0 = time.perf_counter()
        report = lowrank(model, cfg, calib)
        rows[name] = {"seconds": time.perf_counter() - t0, "params_before": report["params_before"],
                      "params_after": report["params_after"], "ppl": ppls(model)}
        print(name, rows[name], flush=True)
        del model
    return rows


# ---- recovery -----------------------------------------------------------------------------------

def _probe(tok, texts, rows: int = 4, length: int = 512):
    """A cheap comparable curve point: ppl on the first `rows` x `length` tokens of each eval text
    (non-overlapping rows; the final numbers use protocol (i) over the whole window)."""
    import torch

    from slmkit.data.chunk import chunk, token_stream

    probes = {k: chunk(token_stream(tok, t), length)[:rows] for k, t in texts.items()}

    def measure(model) -> dict:
        was = model.training
        model.eval()
        out = {}
        with torch.no_grad():
            for k, ids in probes.items():
                logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
                ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
                out[k] = float(ce.exp())
        model.train(was)
        return out
    return measure


def _plot_recovery(runs: dict, dense: dict, path: Path) -> Path | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, title in zip(axes, ("in", "out"), ("embedded eval text (pydoc)", "Austen, Emma")):
        for name, run in runs.items():
            curve = run["curve"]
            ax.plot([c["train_seconds"] / 60 for c in curve], [c["probe_ppl"][key] for c in curve],
                    marker="o", ms=3, label=f"{name} ({run['steps']} steps)")
        ax.axhline(dense[key], color="grey", ls="--", lw=1, label="unpruned (same probe)")
        ax.set_yscale("log")
        ax.set_xlabel("training minutes (optimizer steps only)")
        ax.set_ylabel("probe ppl (4 x 512 tokens)")
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _mixes(spec: str) -> list[float]:
    try:
        mixes = [float(w) for w in spec.split(",") if w.strip()]
    except ValueError:
        raise SystemExit(f"--kd-ce-mix: a comma list of weights in [0, 1] expected, got {spec!r}") from None
    if not mixes or any(not 0 <= w <= 1 for w in mixes):
        raise SystemExit(f"--kd-ce-mix: a comma list of weights in [0, 1] expected, got {spec!r}")
    return mixes


def recovery(args, base, tok, ppls, dense_ppl, texts) -> dict:
    from _common import RESULTS

    from slmkit.compress import DepthPruneConfig, WidthPruneConfig, prune
    from slmkit.distill import Distill, DistillConfig
    from slmkit.generate.calibration import build_calibration, build_calibration_with_targets
    from slmkit.train import Batches, CausalLM, TrainConfig, train

    calib = build_calibration(base, tok, "embedded", n=32, length=args.seq_len, seed=0)
    cfg_cls = WidthPruneConfig if args.recovery_method == "width" else DepthPruneConfig
    pruned = copy.deepcopy(base)
    prune(pruned, cfg_cls(target=0.25), calib)
    probe = _probe(tok, texts)
    rows = {"pruned": {"params": pruned.num_parameters(), "ppl": ppls(pruned)},
            "kd_objective": {"loss": "fkl", "ce_weight": args.kd_ce_weight}}
    start_probe = probe(pruned)
    rows["dense_probe_ppl"] = probe(base)
    print("pruned", rows["pruned"], flush=True)
    n_rows = args.recovery_steps * args.batch_size
    wanted = [r.strip() for r in args.recovery_runs.split(",") if r.strip()]
    soft = None
    if args.recovery_data == "pydoc-all":
        ids = _rows(tok, n_rows, args.seq_len)
    elif "kd_cached" in wanted:  # the same rows, and the teacher's top-k kept while it wrote them
        ids, *soft, _ = build_calibration_with_targets(base, tok, args.recovery_data, n=n_rows,
                                                       length=args.seq_len, seed=1, topk=args.soft_topk)
    else:  # sampled from the unpruned model (the teacher) where the spec says `self`
        ids = build_calibration(base, tok, args.recovery_data, n=n_rows, length=args.seq_len, seed=1)
    rows["data"] = {"spec": args.recovery_data, "rows": int(ids.shape[0]), "length": int(ids.shape[1])}
    if soft is not None:
        rows["data"]["soft"] = {"topk": args.soft_topk, "weight": args.soft_weight,
                                "rows_with_targets": int((soft[1].sum((1, 2)) > 0).sum()),
                                "mean_topk_mass": float(soft[1].sum(-1)[soft[1].sum(-1) > 0].mean())}
    print("recovery rows", rows["data"], flush=True)
    teacher = copy.deepcopy(base)
    logs = RESULTS / f"distill{args.tag}_runs"
    # KD and CE at equal steps; then CE again with as many steps as fit in KD's training time
    # (a CE step skips the teacher's forward, so equal time means more CE steps).
    objectives = {"kd": DistillConfig(loss="fkl", ce_weight=args.kd_ce_weight)}
    mixes = _mixes(args.kd_ce_mix)
    for w in mixes:
        objectives["kd_ce" if len(mixes) == 1 else f"kd_ce{w:g}"] = DistillConfig(loss="fkl", ce_weight=w)
    runs = [(name, lambda cfg=cfg: Distill(teacher, cfg), args.recovery_steps)
            for name, cfg in objectives.items()]
    runs += [("ce", lambda: CausalLM(), args.recovery_steps), ("ce_equal_time", lambda: CausalLM(), None)]
    runs.insert(len(objectives), ("kd_cached", lambda: CausalLM(soft_weight=args.soft_weight), args.recovery_steps))
    if "kd_ce" in wanted and len(mixes) > 1:  # kd_ce stands for every weight of the list
        at = wanted.index("kd_ce")
        wanted[at:at + 1] = [name for name in objectives if name.startswith("kd_ce")]
    unknown = set(wanted) - {r[0] for r in runs}
    if unknown:
        raise SystemExit(f"--recovery-runs: unknown {sorted(unknown)}; known: {[r[0] for r in runs]}")
    if "kd_cached" in wanted and (soft is None or not (soft[1] > 0).any()):
        raise SystemExit("--recovery-runs kd_cached needs self-generated rows: --recovery-data with 'self'")
    kd_runs = [r for r in [*objectives, "kd_cached"] if r in wanted]
    if "ce_equal_time" in wanted and ("ce" not in wanted or not kd_runs):
        raise SystemExit("--recovery-runs: ce_equal_time needs ce and kd or kd_ce in the same run")
    rows["kd_objectives"] = {name: vars(cfg) for name, cfg in objectives.items()}
    for name, objective, steps in (r for r in runs if r[0] in wanted):
        if steps is None:
            per_ce_step = rows["ce"]["train_seconds"] / args.recovery_steps
            slowest = max(rows[r]["train_seconds"] for r in kd_runs)
            steps = max(args.recovery_steps, round(slowest / per_ce_step))
        student = copy.deepcopy(pruned)
        curve = [{"step": 0, "train_seconds": 0.0, "probe_ppl": start_probe}]
        clock = [0.0]

        def point(step, record, student=student, curve=curve, clock=clock, steps=steps):
            clock[0] += record["seconds"]          # optimizer-step time only, not this probe
            if step % args.curve_every == 0 or step == steps:
                curve.append({"step": step, "train_seconds": clock[0], "probe_ppl": probe(student)})

        cfg = TrainConfig(steps=steps, batch_size=args.batch_size, lr=args.lr)
        data = Batches(ids, soft_ids=soft[0], soft_probs=soft[1]) if name == "kd_cached" else Batches(ids)
        summary = train(student, objective(), data, cfg, logs / name, callback=point)
        (logs / name / "checkpoint.pt").unlink(missing_ok=True)  # 1.2 GB; the log and curve stay
        p = ppls(student)
        gap = {k: (rows["pruned"]["ppl"][k] - p[k]) / (rows["pruned"]["ppl"][k] - dense_ppl[k]) for k in p}
        rows[name] = {"steps": steps, "ppl": p, "recovered": gap, "train_seconds": clock[0],
                      "seconds": summary["seconds"], "tok_s": summary["tokens"] / clock[0],
                      "curve": curve}
        print(name, {k: v for k, v in rows[name].items() if k != "curve"}, flush=True)
        del student
    plot = _plot_recovery({k: v for k, v in rows.items() if isinstance(v, dict) and "curve" in v},
                          rows["dense_probe_ppl"],
                          RESULTS / f"distill{args.tag}_recovery.png")
    rows["plot"] = str(plot) if plot else None
    return rows


def main() -> int:
    args = parse_args()
    if args.worker:
        return worker(args)
    from rich.console import Console

    from slmkit.models import load

    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if "recovery" in parts:
        _mixes(args.kd_ce_mix)  # a bad list fails here, not after the pruning
        if "kd_cached" in args.recovery_runs and "self" not in args.recovery_data:
            raise SystemExit("--recovery-runs kd_cached needs self-generated rows: --recovery-data with 'self'")
    payload: dict = {"args": vars(args)}
    console = Console(width=140)
    if "throughput" in parts:
        payload["throughput"] = throughput(args)
        t = payload["throughput"]
        console.print(f"throughput (best of {args.repeats}, tok/s): {t['best_tok_s']}; {t['ratios']}; "
                      f"peak RSS MB {t['peak_rss_mb']}")
    if "lowrank" in parts or "recovery" in parts:
        base, tok = load(args.model, "float32")
        texts = eval_texts(tok, args.eval_tokens)
        ppls = ppl_function(tok, texts, args.window)
        dense = ppls(base)
        payload["dense_ppl"] = dense
        console.print(f"dense ppl {dense}")
        if "lowrank" in parts:
            payload["lowrank"] = lowrank_part(args, base, tok, ppls)
        if "recovery" in parts:
            payload["recovery"] = recovery(args, base, tok, ppls, dense, texts)
    print(f"wrote {write_result('distill' + args.tag, payload)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
