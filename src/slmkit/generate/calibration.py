"""Calibration sets a model takes part in: the mix of `slmkit.data.calib` (text sources) with rows
the model writes itself (`self`, `slmkit.generate.selfgen`), shuffled with the seed. See
`slmkit.data.calib` for the spec; the same (model, tokenizer, spec, n, length, seed) gives the same rows."""

from __future__ import annotations

from pathlib import Path

import torch

from slmkit.data.calib import SELF, CalibSpec, allocate_rows, tensor_sha256, text_parts
from slmkit.errors import SlmkitError
from slmkit.generate.selfgen import generate_calibration_text_with_provenance, generate_with_teacher_targets
from slmkit.models.introspect import check_length


def build_calibration_with_provenance(
        model, tokenizer, spec: str | CalibSpec, n: int = 128, length: int = 512,
        seed: int = 0, *, field: str = "text", split: str = "train",
        selfgen: dict | None = None, cache_dir: str | Path | None = None,
) -> tuple[torch.Tensor, dict]:
    """`build_calibration`, also returning the provenance dict:

        {"spec": normalised spec, "n", "length", "seed", "sha256": of the returned ids,
         "sources": [{"source", "weight", "rows", "tokens",
                      "text": {name, docs, chars, sha256}            (text sources)
                      "generation": {fingerprint, parameters, cache} (self)}, ...]}
    """
    ids, _, provenance = _build(model, tokenizer, spec, n, length, seed, field=field, split=split,
                                selfgen=selfgen, cache_dir=cache_dir)
    return ids, provenance


def build_calibration_with_targets(
        model, tokenizer, spec: str | CalibSpec, n: int = 128, length: int = 512,
        seed: int = 0, *, topk: int = 32, field: str = "text", split: str = "train",
        selfgen: dict | None = None, cache_dir: str | Path | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """`build_calibration_with_provenance` (same rows, same order), also returning soft targets
    (soft_ids int32 [n, length, topk], soft_probs [n, length, topk]) for `slmkit.train.Batches`:
    the model's own next-token distributions, recorded while it wrote the `self` rows
    (`slmkit.generate.selfgen.generate_with_teacher_targets`), and zeros on every text row."""
    return _build(model, tokenizer, spec, n, length, seed, field=field, split=split,
                  selfgen=selfgen, cache_dir=cache_dir, topk=topk)


def _build(model, tokenizer, spec, n, length, seed, *, field, split, selfgen, cache_dir, topk=0):
    """-> (ids, soft_ids, soft_probs, provenance) with topk, else (ids, None, provenance)."""
    if not (isinstance(n, int) and isinstance(length, int)) or n < 1 or length < 2:
        raise SlmkitError(f"calibration set needs n >= 1 and length >= 2 (got n={n}, length={length})")
    parsed = CalibSpec.parse(spec)
    if model is not None:
        check_length(model, length, "the calibration sequence length")
    elif parsed.needs_model:
        raise SlmkitError("calibration source 'self' samples text from the model; pass the model")
    rows = allocate_rows([s.weight for s in parsed.sources], n)

    # text sources first: a missing file or a too-short text fails before any slow generation
    parts, records = text_parts(tokenizer, parsed, rows, length, seed, field=field, split=split)
    soft: dict[int, tuple[torch.Tensor, torch.Tensor]] = {
        i: (torch.zeros(*p.shape, topk, dtype=torch.int32), torch.zeros(*p.shape, topk)) for i, p in parts.items()}
    for i, (src, k) in enumerate(zip(parsed.sources, rows)):
        if src.source == SELF and k > 0:
            kwargs = {"seed": seed, "cache_dir": cache_dir, **(selfgen or {})}
            if topk:
                parts[i], *soft[i], records[i]["generation"] = generate_with_teacher_targets(
                    model, tokenizer, k, length, topk, **kwargs)
            else:
                parts[i], records[i]["generation"] = generate_calibration_text_with_provenance(
                    model, tokenizer, k, length, **kwargs)

    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    ids = torch.cat([parts[i] for i in sorted(parts)])[order]
    provenance = {"spec": str(parsed), "n": n, "length": length, "seed": seed,
                  "sha256": tensor_sha256(ids), "sources": records}
    if not topk:
        return ids, None, provenance
    return (ids, torch.cat([soft[i][0] for i in sorted(parts)])[order],
            torch.cat([soft[i][1] for i in sorted(parts)])[order], provenance)


def build_calibration(model, tokenizer, spec: str | CalibSpec, n: int = 128,
                      length: int = 512, seed: int = 0, *, field: str = "text",
                      split: str = "train", selfgen: dict | None = None,
                      cache_dir: str | Path | None = None) -> torch.Tensor:
    """Calibration rows mixed from `spec` -> LongTensor [n, length] (see the module docstring).

    model       needed for `self` and to check `length` against its context (may be None for a
                mix of text sources only)
    field       the jsonl field / dataset column of text sources
    split       the Hugging Face dataset split (calibrate on "train"; evaluate on "test")
    selfgen     keyword arguments for `generate_calibration_text` (temperature, top_p, ...)
    cache_dir   where self-generated rows are cached (default `$SLMKIT_CACHE/selfgen`)
    """
    ids, _ = build_calibration_with_provenance(model, tokenizer, spec, n, length, seed,
                                               field=field, split=split, selfgen=selfgen,
                                               cache_dir=cache_dir)
    return ids
