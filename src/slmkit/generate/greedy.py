"""Text from a model: chat-formatted prompts and greedy continuations of a batch of prompts."""

from __future__ import annotations

import torch

from slmkit.errors import SlmkitError
from slmkit.models.introspect import pad_id


def build_prompt(tokenizer, text: str, chat: str) -> str:
    use_chat = chat == "yes" or (chat == "auto" and getattr(tokenizer, "chat_template", None))
    if use_chat:
        if not getattr(tokenizer, "chat_template", None):
            raise SlmkitError("chat=yes but the tokenizer has no chat template")
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
    return text


def generate_greedy(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[str]:
    """Greedy continuations of a batch of prompts (left padding, KV cache)."""
    pad = pad_id(tokenizer)
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    width = max(len(e) for e in encoded)
    ids = torch.full((len(encoded), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, e in enumerate(encoded):
        ids[r, width - len(e):] = torch.tensor(e)
        mask[r, width - len(e):] = 1
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=pad)
    return [tokenizer.decode(row[width:], skip_special_tokens=True) for row in out]
