"""GGUF files side by side, all measured by llama.cpp: llama.cpp's own quantizations of a source
model (llama-quantize Q8_0 / Q4_K_M / Q4_0, and Q4_K_M with an importance matrix that llama-imatrix
computes on slmkit's calibration text) beside slmkit's calibrated GGUFs (a quantizer onto GGUF
block grids, the integers and scales written unchanged; the tied embedding/head table Q8_0).

Per file: size, perplexity on two held-out texts (llama-perplexity: windows of --ctx tokens, the
second half of each scored, the first --chunks windows), decode tok/s (llama-bench tg128 at
--threads, the files interleaved over --rounds rounds, the median kept).

    bash benchmarks/peers/setup.sh llamacpp          # llama.cpp's tools -> .venv-peers/llamacpp/bin
    python benchmarks/gguf_compare.py --model models/smollm2-135m-instruct --tag _smollm2

Each file is made once under --work and reused; results are written after every measurement
(`results/gguf_compare<tag>.json`), and a re-run picks up where one stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

from _common import AUSTEN, RESULTS, ROOT, model_arg, write_result  # noqa: E402

LLAMA_TYPES = {"llama Q8_0": ("Q8_0", False), "llama Q4_K_M": ("Q4_K_M", False),
               "llama Q4_0": ("Q4_0", False), "llama Q4_K_M imatrix": ("Q4_K_M", True)}


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=model_arg, default="models/smollm2-135m-instruct")
    ap.add_argument("--tools", type=Path, default=ROOT / ".venv-peers" / "llamacpp" / "bin")
    ap.add_argument("--work", type=Path, default=ROOT / "out" / "gguf_compare")
    ap.add_argument("--slmkit", default="rtn:q4_0,gptq:q4_0,gptq:q5_0",
                    help="slmkit rows, METHOD:GGUF_TYPE[+ROLE=TYPE...] (e.g. gptq:q5_0+down=q8_0), or "
                         "METHOD:like-LLAMA_TYPE: every linear on the block type llama-quantize gave it "
                         "in that row's file (e.g. gptq:like-Q4_K_M), or METHOD:bpw-N: types chosen by "
                         "measured sensitivity, the linears averaging N bits per weight (--gguf-bpw); "
                         "METHOD@OPTION=VALUE... passes quantize options (e.g. gptq@damp=0.3:q5_0)")
    ap.add_argument("--llama", default=",".join(LLAMA_TYPES), help="llama.cpp rows")
    ap.add_argument("--calib", default="embedded@0.5,self@0.5")
    ap.add_argument("--calib-n", type=int, default=128)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tag", default="")
    ap.add_argument("--respeed", action="store_true",
                    help="drop the decode runs already recorded and time every file afresh, interleaved")
    return ap.parse_args()


def run(cmd: list, log: Path) -> float:
    """Run `cmd`, its output into `log`; -> wall seconds. A failure stops the benchmark."""
    t = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run([str(c) for c in cmd], stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed ({proc.returncode}); see {log}")
    return time.perf_counter() - t


def texts(args, work: Path) -> dict[str, Path]:
    """The two held-out texts as files llama-perplexity reads."""
    from slmkit.data import load_text

    out = {"pydoc (eval part)": work / "pydoc_eval.txt", "austen": work / "austen.txt"}
    if not out["pydoc (eval part)"].exists():
        out["pydoc (eval part)"].write_text("\n\n".join(load_text("default").docs))
    if not out["austen"].exists():
        out["austen"].write_text(AUSTEN.read_text())
    return out


def calibration_text(args, work: Path) -> Path:
    """slmkit's calibration rows, decoded, for llama-imatrix (the same text slmkit calibrates on)."""
    path = work / "calib.txt"
    if not path.exists():
        from slmkit.generate import build_calibration
        from slmkit.models import load

        model, tok = load(args.model, "float32")
        ids = build_calibration(model, tok, args.calib, n=args.calib_n, length=args.ctx)
        path.write_text("\n".join(tok.decode(row) for row in ids))
    return path


def make_llama(args, work: Path, source: Path, label: str) -> tuple[Path, float]:
    qtype, imatrix = LLAMA_TYPES[label]
    out = work / f"llama-{qtype}{'-imatrix' if imatrix else ''}.gguf"
    seconds = 0.0
    if not out.exists():
        cmd = [args.tools / "llama-quantize"]
        if imatrix:
            imat = work / "imatrix.dat"
            if not imat.exists():
                seconds += run([args.tools / "llama-imatrix", "-m", source, "-f", calibration_text(args, work),
                                "-c", args.ctx, "-t", args.threads, "-o", imat], work / "imatrix.log")
            cmd += ["--imatrix", imat]
        seconds += run(cmd + [source, out, qtype, args.threads], work / f"{out.stem}.log")
    return out, seconds


GGUF_ROLES = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
              "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
              "ffn_down": "mlp.down_proj"}


def llama_layout(args, work: Path, source: Path, qtype: str) -> list[str]:
    """`base+NAME=TYPE...` overrides giving each linear the block type llama-quantize chose for it."""
    from slmkit.models.gguf_export import describe_gguf

    path, _ = make_llama(args, work, source, f"llama {qtype}")
    types = {}
    for name, t in describe_gguf(path)["tensor_types"].items():
        parts = name.split(".")
        if parts[0] == "blk" and parts[2] in GGUF_ROLES:
            types[f"model.layers.{parts[1]}.{GGUF_ROLES[parts[2]]}"] = t.lower()
    base = max(set(types.values()), key=list(types.values()).count)
    return [base] + [f"{n}={t}" for n, t in types.items() if t != base]


def make_slmkit(args, work: Path, spec: str, source: Path) -> tuple[Path, float]:
    method, grids = spec.split(":", 1)
    method, *options = method.split("@")
    base, *over = (llama_layout(args, work, source, grids[len("like-"):]) if grids.startswith("like-")
                   else grids.split("+"))
    grid = ["--gguf-bpw", base[len("bpw-"):]] if base.startswith("bpw-") else ["--gguf-type", base]
    name = "@".join([method, *options]).replace("=", "-")
    out = work / f"slmkit-{name}-{grids.replace('+', '_').replace('=', '-')}.gguf"  # the spec names it
    seconds = 0.0
    if not out.exists():
        folder = out.with_suffix("")
        slmkit = [sys.executable, "-m", "slmkit.cli.main"]
        cmd = slmkit + ["quantize", args.model, folder, "--method", method, *grid, "--overwrite"]
        for o in options:
            key, value = o.split("=", 1)
            cmd += [f"--{key.replace('_', '-')}", value]
        if method != "rtn" or base.startswith("bpw-"):
            cmd += ["--calib", args.calib, "--calib-n", args.calib_n, "--calib-len", args.ctx]
        for o in over:
            role, qtype = o.split("=")
            cmd += ["--override", f"{role}:gguf_type={qtype}"]
        seconds += run(cmd, work / f"{out.stem}.quantize.log")
        seconds += run(slmkit + ["export", "gguf", folder, out, "--type", "q8_0"], work / f"{out.stem}.export.log")
    return out, seconds


def perplexity(args, gguf: Path, text: Path, log: Path) -> float:
    run([args.tools / "llama-perplexity", "-m", gguf, "-f", text, "-c", args.ctx, "--chunks", args.chunks,
         "-t", args.threads, "-b", args.ctx], log)
    for line in reversed(log.read_text().splitlines()):
        if "Final estimate: PPL =" in line:
            return float(line.split("PPL =")[1].split()[0])
    raise SystemExit(f"no final perplexity in {log}")


def decode_speed(args, gguf: Path, log: Path) -> float:
    run([args.tools / "llama-bench", "-m", gguf, "-p", 0, "-n", 128, "-t", args.threads, "-r", 1,
         "-o", "json"], log)
    return float(json.loads(log.read_text()[log.read_text().index("["):])[0]["avg_ts"])


def main() -> int:
    args = parse_args()
    work = args.work / (Path(args.model).name + args.tag)
    work.mkdir(parents=True, exist_ok=True)
    for tool in ("llama-quantize", "llama-imatrix", "llama-perplexity", "llama-bench"):
        if not (args.tools / tool).exists():
            raise SystemExit(f"{args.tools / tool} missing: build llama.cpp's tools with "
                             "`bash benchmarks/peers/setup.sh llamacpp`")
    topic = f"gguf_compare{args.tag}"
    prev = RESULTS / f"{topic}.json"
    rows = json.loads(prev.read_text())["rows"] if prev.exists() else {}
    if args.respeed:
        for row in rows.values():
            row.pop("decode_tok_s_runs", None)
            row.pop("decode_tok_s", None)

    def save():
        write_result(topic, {"model": args.model, "ctx": args.ctx, "chunks": args.chunks,
                             "threads": args.threads, "calib": args.calib, "rows": rows})

    source = work / "source-bf16.gguf"
    if not source.exists():
        run([sys.executable, "-m", "slmkit.cli.main", "export", "gguf", args.model, source, "--type", "bf16"],
            work / "source.log")
    files = {"source bf16": (source, 0.0)}
    for label in [s for s in args.llama.split(",") if s]:
        files[label] = make_llama(args, work, source, label)
    for spec in [s for s in args.slmkit.split(",") if s]:
        files[f"slmkit {spec}"] = make_slmkit(args, work, spec, source)
    for label, (path, seconds) in files.items():
        row = rows.setdefault(label, {"file": path.name})
        row["bytes"] = path.stat().st_size
        if seconds:
            row["seconds_to_make"] = round(seconds, 1)
        for name, text in texts(args, work).items():
            if name not in row.get("ppl", {}):
                row.setdefault("ppl", {})[name] = perplexity(args, path, text, work / f"{path.stem}.ppl.log")
                save()
        print(label, row["bytes"], row["ppl"], flush=True)
    for r in range(args.rounds):                       # interleaved: every file once per round
        for label, (path, _) in files.items():
            speeds = rows[label].setdefault("decode_tok_s_runs", [])
            if len(speeds) <= r:
                speeds.append(decode_speed(args, path, work / f"{path.stem}.bench.log"))
                rows[label]["decode_tok_s"] = statistics.median(speeds)
                save()
    save()
    src = rows["source bf16"]["ppl"]
    print(f"{'row':34} {'MB':>7} " + " ".join(f"{n[:18]:>18}" for n in src) + f" {'tok/s':>7}")
    for label, row in rows.items():
        rise = " ".join(f"{row['ppl'][n]:8.3f} ({100 * (row['ppl'][n] / src[n] - 1):+5.1f}%)" for n in src)
        print(f"{label:34} {row['bytes'] / 1e6:7.1f} {rise} {row.get('decode_tok_s', 0):7.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
