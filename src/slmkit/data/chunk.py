"""Tokenise text and cut it into fixed-length sequences; the seeded calibration sampler."""

from __future__ import annotations

from typing import TYPE_CHECKING

from slmkit.data.sources import TextData
from slmkit.errors import SlmkitError

if TYPE_CHECKING:
    import torch

DOC_SEPARATOR = "\n\n"


def encode_docs(tokenizer, docs: list[str]) -> list[list[int]]:
    """Token ids of each document, without special tokens (callers add BOS/prefix themselves)."""
    return [tokenizer(doc, add_special_tokens=False)["input_ids"] for doc in docs]


def token_stream(tokenizer, data: TextData) -> "torch.Tensor":
    """All documents joined by a blank line and tokenised as one stream (1-D LongTensor), the
    way the GPTQ/Wanda papers and HF's perplexity guide treat a corpus."""
    import torch

    ids = tokenizer(DOC_SEPARATOR.join(data.docs), add_special_tokens=False)["input_ids"]
    if not ids:
        raise SlmkitError(f"{data.name} tokenises to no tokens")
    return torch.tensor(ids, dtype=torch.long)


def chunk(ids: "torch.Tensor", length: int, *, drop_last: bool = True) -> "torch.Tensor":
    """Cut a 1-D token stream into non-overlapping rows of `length` tokens -> [n, length]."""
    if length < 1:
        raise SlmkitError(f"sequence length must be >= 1, not {length}")
    n = ids.numel() // length if drop_last else -(-ids.numel() // length)
    if n == 0:
        raise SlmkitError(f"text has {ids.numel()} tokens, fewer than one sequence of {length}")
    if not drop_last and ids.numel() % length:
        raise SlmkitError("chunk(drop_last=False) needs a stream that divides evenly; pad first")
    return ids[: n * length].view(n, length)


def calibration_set(tokenizer, data: TextData, n: int = 128, length: int = 512,
                    seed: int = 0) -> "torch.Tensor":
    """`n` sequences of `length` tokens cut at seeded random offsets of the token stream
    -> LongTensor [n, length]. The same (data, tokenizer, n, length, seed) gives the same set."""
    import torch

    if n < 1 or length < 2:
        raise SlmkitError(f"calibration set needs n >= 1 and length >= 2 (got n={n}, length={length})")
    ids = token_stream(tokenizer, data)
    if ids.numel() < length:
        raise SlmkitError(f"{data.name} has {ids.numel()} tokens, fewer than one calibration "
                          f"sequence of {length}; use a shorter --length or more text")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - length + 1, (n,), generator=gen)
    return torch.stack([ids[s: s + length] for s in starts.tolist()])
