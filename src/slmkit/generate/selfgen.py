"""Self-generated calibration text: token sequences sampled from the model being compressed.

Following "Self-calibration for language model quantization and pruning" (Williams, Chrysostomou
and Aletras, NAACL 2025): with no prompt but the start-of-document token, the model writes its own
calibration set, so calibration follows what the model itself models instead of one domain. The
paper samples with a temperature schedule, because the first tokens decide what a text is about:

    t_i = t_start + min(i, steps) / steps * (t_end - t_start)     i = tokens since the document start

A row always holds exactly `length` tokens. It starts with BOS when the tokenizer has one (the model
sees BOS first in real use); a model without BOS is prompted with its EOS (the usual document
separator), which is not kept. Sampling never stops at EOS: after an EOS the next token is a fresh
BOS (or, without BOS, the model goes on after its separator), and the temperature schedule restarts.

Rows are sampled in batches on the generation engine (`slmkit.generate.Engine`, with a picker that
chooses every row's token at once; all rows stay at the same position, so no padding), in
the model's own dtype under `torch.inference_mode`, with one seeded `torch.Generator`: the same
(model weights, n, length, seed, sampling parameters, batch size) gives the same tokens. Results are
cached under `$SLMKIT_CACHE/selfgen/`, keyed by a fingerprint of the model's weights and config and
by every generation parameter, so benchmarks do not sample twice.

The schedule's form is the paper's; the default values below (1.5 -> 1.0 over 32 tokens, top-p
0.95) are ours, not taken from the paper.

Two guards (selfgen-v2) keep a model with a large vocabulary from writing junk. Both were added
after Qwen2.5-Coder-0.5B-Instruct, sampled with v1, produced rows where one token repeated up to
496 times (`的的的...`, `GetProcAddress` x 150), and those rows made GPTQ and AWQ worse than RTN:
- min-p: at every step, tokens whose probability is below `min_p` x the top token's probability
  (after the temperature) are dropped. At t = 1.5 a 151k vocabulary's tail otherwise adds up to a
  lot of probability; min-p cuts it and still lets a flat distribution keep its choices.
- loop restart: when the last `loop_window` tokens of a document hold at most `loop_distinct`
  different tokens, the document ends there and a new one starts (BOS, or the separator), so a
  degenerate loop costs at most `loop_window` tokens of a row instead of the rest of it. On AVX2-only CPUs load the model in float32 before
generating: batched bf16 decode is emulated and was ~2.7x slower than fp32 at batch 16 (SmolLM2-135M).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from slmkit.errors import SlmkitError
from slmkit.generate.engine import Engine
from slmkit.generate.sampling import Sampling
from slmkit.models.default import cache_dir as slmkit_cache
from slmkit.models.introspect import check_length, eos_ids
from slmkit.progress import note, progress_bar

if TYPE_CHECKING:
    import torch

ALGORITHM = "selfgen-v2"     # bump when the sampling loop changes what a seed produces
TEMPERATURE = (1.5, 1.0)     # (start, end): explore prefixes, then sample the model's distribution
TEMPERATURE_STEPS = 32       # tokens over which the temperature moves from start to end
TOP_P = 0.95                 # nucleus sampling; 1.0 samples the full distribution
MIN_P = 0.05                 # drop tokens below MIN_P x the top token's probability; 0 disables
LOOP_WINDOW = 32             # a document whose last LOOP_WINDOW tokens hold ...
LOOP_DISTINCT = 8            # ... at most LOOP_DISTINCT different tokens is ended; window 0 disables
BATCH_SIZE = 16              # rows sampled together; per-token cost falls steeply with the batch


# ---- model fingerprint -----------------------------------------------------------------------
def model_fingerprint(model) -> str:
    """sha256 over the model class, its config (minus bookkeeping keys) and every weight's name,
    dtype, shape and bytes: two models that compute different things never share a fingerprint.
    Costs one pass over the weights (about a second for a 135M model)."""
    import torch

    h = hashlib.sha256()
    h.update(type(model).__name__.encode())
    cfg = {k: v for k, v in model.config.to_dict().items()
           if not k.startswith("_") and k not in ("transformers_version", "name_or_path")}
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    seen: set[int] = set()
    for name, t in model.state_dict().items():
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        if t.data_ptr() in seen and t.data_ptr() != 0:  # tied weights: hash the bytes once
            continue
        seen.add(t.data_ptr())
        try:
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
        except (RuntimeError, TypeError):  # tensor subclasses that refuse a byte view
            h.update(repr(t.detach().float().cpu().sum().item()).encode())
    return h.hexdigest()


# ---- sampling --------------------------------------------------------------------------------
def _temperatures(temperature, steps: int) -> tuple[float, float]:
    start, end = (temperature, temperature) if isinstance(temperature, (int, float)) else temperature
    start, end = float(start), float(end)
    if not (start > 0 and end > 0):
        raise SlmkitError(f"sampling temperature must be > 0, got {temperature!r}")
    if steps < 1:
        raise SlmkitError(f"temperature_steps must be >= 1, got {steps}")
    return start, end


def _sample(logits: torch.Tensor, temps: torch.Tensor, top_p: float,
            gen: torch.Generator, min_p: float = 0.0) -> torch.Tensor:
    """One token per row from softmax(logits / t), restricted to the tokens with at least
    `min_p` x the top probability and to the top-p nucleus -> [b]."""
    import torch

    probs = torch.softmax(logits.float() / temps[:, None], dim=-1)
    if min_p > 0.0:
        probs = probs.masked_fill(probs < min_p * probs.amax(-1, keepdim=True), 0.0)
    if top_p >= 1.0:
        return torch.multinomial(probs, 1, generator=gen)[:, 0]
    sorted_p, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_p.cumsum(-1) - sorted_p
    outside = mass_before > top_p * sorted_p.sum(-1, keepdim=True)  # p of what min-p left
    sorted_p = sorted_p.masked_fill(outside, 0.0)       # the top token always stays
    pick = torch.multinomial(sorted_p, 1, generator=gen)
    return order.gather(-1, pick)[:, 0]


def _special_ids(model, tokenizer) -> tuple[int | None, set[int]]:
    """(BOS id or None, the set of EOS ids from the tokenizer, config and generation config)."""
    return getattr(tokenizer, "bos_token_id", None), eos_ids(model, tokenizer)


def _looping(out: list, nxt: torch.Tensor, since_start: torch.Tensor, window: int,
             distinct: int) -> torch.Tensor:
    """Rows whose current document's last `window` tokens (ending with `nxt`) hold at most
    `distinct` different tokens -> BoolTensor [b]."""
    import torch

    if window < 2 or len(out) + 1 < window:
        return torch.zeros_like(nxt, dtype=torch.bool)
    recent = torch.stack(out[len(out) - window + 1:] + [nxt], dim=1).sort(dim=1).values
    kinds = 1 + (recent[:, 1:] != recent[:, :-1]).sum(dim=1)
    return (kinds <= distinct) & (since_start >= window)


class _Picker:
    """The next token of every row of a batch, the self-calibration way (an `Engine` picker): one
    random stream for the batch, the temperature schedule from each document's start, min-p and
    top-p, EOS -> a fresh BOS (or the separator starts a new document), loop restarts; with
    `topk`, the model's own top-k prediction at every position (see `_generate_batch`)."""

    def __init__(self, first: torch.Tensor, keep_first: bool, length: int, bos: int | None,
                 eos: set[int], temps: tuple[float, float], steps: int, top_p: float,
                 gen: torch.Generator, min_p: float, loop: tuple[int, int], topk: int):
        import torch

        b = first.shape[0]
        self.last, self.out = first, ([first] if keep_first else [])
        self.eos_t = torch.tensor(sorted(eos), dtype=torch.long)
        self.bos, self.force_bos = bos, bos is not None and bos not in eos  # else EOS starts a document
        self.restart = bos if self.force_bos else (min(eos) if eos else None)
        self.temps, self.steps, self.top_p, self.gen, self.min_p = temps, steps, top_p, gen, min_p
        self.loop, self.topk, self.restarts = loop, topk, 0
        self.since_start = torch.zeros(b, dtype=torch.long)   # tokens sampled since the document start
        self.soft_ids = torch.zeros(b, length, topk, dtype=torch.int32)
        self.soft_probs = torch.zeros(b, length, topk)

    def __call__(self, logits: torch.Tensor, seqs) -> list[int]:
        import torch

        out, pos = self.out, len(self.out) - 1
        if self.topk and out:                            # the prediction made at position len(out) - 1
            top = torch.softmax(logits, -1).topk(self.topk, dim=-1)
            self.soft_ids[:, pos], self.soft_probs[:, pos] = top.indices.int(), top.values
        after_eos = torch.isin(self.last, self.eos_t)
        if not self.force_bos:                           # EOS is the separator: a new document
            self.since_start = torch.where(after_eos, 0, self.since_start)
        frac = self.since_start.clamp(max=self.steps).float() / self.steps
        t = self.temps[0] + frac * (self.temps[1] - self.temps[0])
        nxt = _sample(logits, t, self.top_p, self.gen, self.min_p)
        self.since_start = self.since_start + 1
        forced = torch.zeros_like(after_eos)
        if self.restart is not None:                     # a degenerate loop ends its document
            forced = _looping(out, nxt, self.since_start, *self.loop) & ~after_eos
            self.restarts += int(forced.sum())
            nxt = torch.where(forced, torch.full_like(nxt, self.restart), nxt)
            if self.force_bos:
                self.since_start = torch.where(forced, 0, self.since_start)
        if self.force_bos:                               # EOS -> a fresh BOS, schedule restarts
            nxt = torch.where(after_eos, torch.full_like(nxt, self.bos), nxt)
            self.since_start = torch.where(after_eos, 0, self.since_start)
            forced = forced | after_eos
        if self.topk and out:
            self.soft_probs[forced, pos] = 0.0
        out.append(nxt)
        self.last = nxt
        return nxt.tolist()


def _generate_batch(model, b: int, length: int, bos: int | None, eos: set[int], vocab: int,
                    temps: tuple[float, float], steps: int, top_p: float,
                    gen: torch.Generator, advance, min_p: float = 0.0,
                    loop: tuple[int, int] = (0, 0), topk: int = 0):
    """Sample `b` rows of exactly `length` tokens on the generation engine ->
    (LongTensor [b, length], how many documents the loop guard ended, soft targets or None).

    With `topk`, soft targets (ids int32 [b, length, topk], probs float32 [b, length, topk]) hold at
    position i the model's own top-k next-token distribution (temperature 1, before any sampling
    filter) for the token at i + 1; zero probs where that token was forced (BOS after EOS, a loop
    restart) rather than sampled, and at the last position."""
    import torch

    if bos is not None:                                  # BOS is the row's first token
        first, keep = torch.full((b,), bos, dtype=torch.long), True
    elif eos:                                            # the separator prompts, and is not kept
        first, keep = torch.full((b,), min(eos), dtype=torch.long), False
    else:                                                # no special tokens at all: a random seed token
        first, keep = torch.randint(0, vocab, (b,), generator=gen), False
    picker = _Picker(first, keep, length, bos, eos, temps, steps, top_p, gen, min_p, loop, topk)
    advance(len(picker.out) * b)
    engine = Engine(model, max_batch=b, narrow=False, picker=picker)
    todo = Sampling(max_new_tokens=length - len(picker.out), ignore_eos=True)
    for token in first.tolist():
        engine.add([token], todo)
    while engine.has_work():
        engine.step()
        advance(b)
    soft = (picker.soft_ids, picker.soft_probs) if topk else None
    return torch.stack(picker.out, dim=1), picker.restarts, soft


# ---- cache -----------------------------------------------------------------------------------
def _cache_root(cache_dir) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    return slmkit_cache() / "selfgen"


def _load_cached(path: Path, n: int, length: int, topk: int = 0):
    import torch

    if not path.is_file():
        return None
    try:
        blob = torch.load(path, weights_only=True)
        ids, saved = blob["ids"], json.loads(blob.get("record", "{}"))
        soft = (blob["soft_ids"], blob["soft_probs"]) if topk else None
    except Exception:  # noqa: BLE001  torch.load of a truncated/foreign file raises anything
        return None    # regenerate and overwrite it
    if tuple(ids.shape) != (n, length) or ids.dtype != torch.long:
        return None
    if topk and not all(tuple(t.shape) == (n, length, topk) for t in soft):
        return None
    return ids, saved, soft


def _save_atomic(path: Path, ids: torch.Tensor, record: dict, soft=None) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    blob = {"ids": ids, "record": json.dumps(record, sort_keys=True)}
    if soft is not None:
        blob["soft_ids"], blob["soft_probs"] = soft
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(blob, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---- public API ------------------------------------------------------------------------------
def generate_calibration_text_with_provenance(model, tokenizer, n: int, length: int,
                                              **kwargs) -> tuple[torch.Tensor, dict]:
    """`generate_calibration_text`, also returning the record of how the rows were made
    (fingerprint, parameters, cache path and whether it was a cache hit) for `slmkit.json`."""
    ids, _, record = _self_generate(model, tokenizer, n, length, **kwargs)
    return ids, record


def generate_with_teacher_targets(model, tokenizer, n: int, length: int, topk: int = 32,
                                  **kwargs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """`generate_calibration_text_with_provenance`, also keeping what the model predicted while it
    wrote: (ids [n, length], soft_ids int32 [n, length, topk], soft_probs [n, length, topk], record).
    Position i holds the model's top-`topk` next-token distribution (temperature 1, before the
    sampling filters) for the token at i + 1, zero where that token was forced (BOS after EOS, a
    loop restart) and at the last position. The same seed writes the same tokens as without
    targets; they are cached separately. A student trained on these rows can learn the full
    distributions at no teacher cost (`slmkit.train.CausalLM(soft_weight=...)`)."""
    if not isinstance(topk, int) or isinstance(topk, bool) or topk < 1:
        raise SlmkitError(f"topk must be an integer >= 1, got {topk!r}")
    ids, soft, record = _self_generate(model, tokenizer, n, length, topk=topk, **kwargs)
    return ids, soft[0], soft[1], record


def _self_generate(
        model, tokenizer, n: int, length: int, *, seed: int = 0,
        temperature: float | tuple[float, float] = TEMPERATURE,
        temperature_steps: int = TEMPERATURE_STEPS, top_p: float = TOP_P, min_p: float = MIN_P,
        loop_window: int = LOOP_WINDOW, loop_distinct: int = LOOP_DISTINCT,
        batch_size: int = BATCH_SIZE, cache_dir: str | Path | None = None,
        cache: bool = True, topk: int = 0):
    """-> (ids, (soft_ids, soft_probs) or None when topk is 0, record)."""
    import torch

    if not (isinstance(n, int) and isinstance(length, int)) or n < 1 or length < 2:
        raise SlmkitError(f"self-generated calibration needs n >= 1 and length >= 2 "
                          f"(got n={n}, length={length})")
    check_length(model, length, "the self-generated sequence length")
    temps = _temperatures(temperature, temperature_steps)
    if not 0.0 < float(top_p) <= 1.0:
        raise SlmkitError(f"top_p must be in (0, 1], got {top_p}")
    if not 0.0 <= float(min_p) < 1.0:
        raise SlmkitError(f"min_p must be in [0, 1), got {min_p}")
    if loop_window and not (loop_window >= 2 and 1 <= loop_distinct < loop_window):
        raise SlmkitError(f"loop_window must be 0 (off) or >= 2 with 1 <= loop_distinct < loop_window, "
                          f"got loop_window={loop_window}, loop_distinct={loop_distinct}")
    if batch_size < 1:
        raise SlmkitError(f"batch_size must be >= 1, got {batch_size}")
    bos, eos = _special_ids(model, tokenizer)
    vocab = getattr(model.config, "vocab_size", None) or len(tokenizer)
    if topk > vocab:
        raise SlmkitError(f"topk {topk} is larger than the model's vocabulary ({vocab} tokens)")
    record = {
        "kind": "self-generated", "algorithm": ALGORITHM, "model_fingerprint": model_fingerprint(model),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "n": n, "length": length, "seed": seed, "temperature": list(temps),
        "temperature_steps": temperature_steps, "top_p": float(top_p), "min_p": float(min_p),
        "loop_window": loop_window, "loop_distinct": loop_distinct if loop_window else None,
        "batch_size": batch_size,
        "bos_token_id": bos, "eos_token_ids": sorted(eos),
    }
    if topk:                     # only then: the cache keys of plain rows stay what they were
        record["teacher_topk"] = topk
    key = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:32]
    path = _cache_root(cache_dir) / f"{key}.pt"
    if cache and (hit := _load_cached(path, n, length, topk)) is not None:
        ids, saved, soft = hit
        return ids, soft, {**record, "loop_restarts": saved.get("loop_restarts"), "cache": "hit",
                           "cache_path": str(path)}

    gen = torch.Generator().manual_seed(seed)
    batches, softs, restarts = [], [], 0
    was_training = model.training
    model.eval()
    note(f"self-generated calibration text: {n} x {length} tokens are not cached for this model and "
         f"settings; sampling them once costs about as long as decoding {n * length // batch_size:,} "
         f"tokens at batch {batch_size} (minutes for a 135M model on 2 cores), then they are reused"
         + (f" from {path.parent}" if cache else ""))
    try:
        with torch.inference_mode(), progress_bar("self-generating calibration text",
                                                  n * length) as advance:
            for start in range(0, n, batch_size):
                b = min(batch_size, n - start)
                rows, k, soft = _generate_batch(model, b, length, bos, eos, vocab, temps,
                                                temperature_steps, float(top_p), gen, advance,
                                                float(min_p), (loop_window, loop_distinct), topk)
                batches.append(rows)
                softs.append(soft)
                restarts += k
    finally:
        model.train(was_training)
    ids = torch.cat(batches).clone()  # a normal tensor, not an inference-mode one
    soft = (torch.cat([s[0] for s in softs]).clone(), torch.cat([s[1] for s in softs]).clone()) if topk else None
    record["loop_restarts"] = restarts
    if cache:
        _save_atomic(path, ids, record, soft)
    return ids, soft, {**record, "cache": "miss" if cache else "off",
                       "cache_path": str(path) if cache else None}


def generate_calibration_text(model, tokenizer, n: int, length: int, *, seed: int = 0,
                              temperature: float | tuple[float, float] = TEMPERATURE,
                              temperature_steps: int = TEMPERATURE_STEPS, top_p: float = TOP_P,
                              min_p: float = MIN_P, loop_window: int = LOOP_WINDOW,
                              loop_distinct: int = LOOP_DISTINCT, batch_size: int = BATCH_SIZE,
                              cache_dir: str | Path | None = None, cache: bool = True) -> torch.Tensor:
    """`n` rows of `length` token ids sampled from `model` itself -> LongTensor [n, length].

    temperature        a float, or (start, end) moved linearly over the first `temperature_steps`
                       tokens of every document (the self-calibration paper's schedule)
    top_p              nucleus sampling threshold (1.0: the full distribution)
    min_p              drop tokens below min_p x the top token's probability (0: off)
    loop_window, loop_distinct
                       end a document whose last `loop_window` tokens hold at most
                       `loop_distinct` different tokens (loop_window=0: off)
    batch_size         rows sampled at once with a KV cache; part of the cache key, since the
                       sampler's random stream is shared by the rows of a batch
    cache_dir, cache   where results are kept (default `$SLMKIT_CACHE/selfgen`); cache=False
                       neither reads nor writes it
    """
    ids, _ = generate_calibration_text_with_provenance(
        model, tokenizer, n, length, seed=seed, temperature=temperature,
        temperature_steps=temperature_steps, top_p=top_p, min_p=min_p, loop_window=loop_window,
        loop_distinct=loop_distinct, batch_size=batch_size, cache_dir=cache_dir, cache=cache)
    return ids
