"""Training data from text: plain language-modelling blocks, and SFT examples through the
tokenizer's chat template with the prompt tokens masked out of the loss."""

from __future__ import annotations

from typing import TYPE_CHECKING

from slmkit.data.chunk import chunk, token_stream
from slmkit.data.sources import TextData, load_text, read_jsonl
from slmkit.errors import SlmkitError
from slmkit.train.data import IGNORE, Batches

if TYPE_CHECKING:
    import torch


def lm_batches(tokenizer, data: TextData, length: int) -> Batches:
    """The text as one token stream cut into rows of `length` tokens (every token scored)."""
    return Batches(chunk(token_stream(tokenizer, data), length))


def _encode_chat(tokenizer, prompt: str, response: str) -> tuple[list[int], int]:
    """(ids of the whole conversation, number of leading prompt tokens)."""
    if getattr(tokenizer, "chat_template", None):
        user = [{"role": "user", "content": prompt}]
        head = tokenizer.apply_chat_template(user, tokenize=True, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": response}],
                                             tokenize=True)
        head, full = _ids(head), _ids(full)
        if full[: len(head)] != head:
            raise SlmkitError("the chat template renders the prompt differently with and without "
                              "the answer; cannot tell prompt tokens from answer tokens")
        return full, len(head)
    head = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    tail = tokenizer(response, add_special_tokens=False)["input_ids"]
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    return head + tail + eos, len(head)


def _ids(x) -> list[int]:
    if hasattr(x, "keys") and "input_ids" in x:   # some tokenizers return a BatchEncoding
        x = x["input_ids"]
    return list(x)


def sft_batches(tokenizer, examples: list[dict], length: int, *, prompt_key: str = "prompt",
                response_key: str = "response") -> Batches:
    """One row per {prompt, response} example, rendered with the chat template (if the tokenizer
    has one), right-padded to `length`; only response tokens are scored. Examples longer than
    `length` are cut at the end (their answer is partly kept); the count is printed."""
    import torch

    if not examples:
        raise SlmkitError("no SFT examples given")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise SlmkitError("the tokenizer has neither a pad nor an eos token to pad SFT rows with")
    ids = torch.full((len(examples), length), pad, dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), length), dtype=torch.long)
    cut = 0
    for i, ex in enumerate(examples):
        missing = [k for k in (prompt_key, response_key) if not isinstance(ex.get(k), str)]
        if missing:
            raise SlmkitError(f"SFT example {i} has no text under {missing} (keys: {sorted(ex)})")
        full, n_prompt = _encode_chat(tokenizer, ex[prompt_key], ex[response_key])
        if n_prompt >= length:
            raise SlmkitError(f"SFT example {i}: the prompt alone is {n_prompt} tokens, not shorter "
                              f"than the sequence length {length}; raise the length or shorten it")
        cut += len(full) > length
        full = full[:length]
        ids[i, : len(full)] = torch.tensor(full)
        labels[i, n_prompt: len(full)] = torch.tensor(full[n_prompt:])
        mask[i, : len(full)] = 1
    if cut:
        print(f"{cut} of {len(examples)} SFT examples were longer than {length} tokens and were cut")
    return Batches(ids, labels, mask)


def training_batches(tokenizer, *, data: str | None = None, sft: str | None = None,
                     seq_len: int = 512, max_rows: int | None = None, prompt_key: str = "prompt",
                     response_key: str = "response") -> Batches:
    """Rows to train on from a text spec (`data`: every token scored) or a prompt/response jsonl
    (`sft`: answers scored), optionally only the first `max_rows`."""
    if (data is None) == (sft is None):
        raise SlmkitError("give exactly one of --data (plain text) or --sft (prompt/response jsonl)")
    rows = (sft_batches(tokenizer, read_jsonl(sft), seq_len, prompt_key=prompt_key,
                        response_key=response_key) if sft
            else lm_batches(tokenizer, load_text(data), seq_len))
    return rows.head(max_rows) if max_rows else rows


def scored_tokens(batches: Batches) -> "torch.Tensor":
    return (batches.labels != IGNORE).sum() if batches.labels is not None else batches.ids.numel()
