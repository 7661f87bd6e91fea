"""What a loaded model and its tokenizer say about themselves: context length, the tokens that
start and pad sequences, and optional forward arguments."""

from __future__ import annotations

import inspect

from slmkit.errors import SlmkitError


def context_length(model) -> int | None:
    """The longest sequence the model's config says it handles (None when it says nothing)."""
    cfg = model.config
    for attr in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        value = getattr(cfg, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_length(model, length: int, what: str) -> None:
    limit = context_length(model)
    if limit is not None and length > limit:
        raise SlmkitError(f"{what} is {length} tokens but the model's context is {limit} tokens; "
                          f"use a value <= {limit}")


def prefix_token(tokenizer) -> int:
    """The token that starts a sequence with no context: BOS, else EOS (lm-eval's rule)."""
    for tid in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return tid
    raise SlmkitError("the tokenizer has neither a BOS nor an EOS token to start sequences with")


def pad_id(tokenizer) -> int:
    for tid in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if tid is not None:
            return tid
    return 0


def accepts_logits_to_keep(model) -> bool:
    """Whether the model's forward takes `logits_to_keep` (compute logits for the last positions only)."""
    return "logits_to_keep" in inspect.signature(type(model).forward).parameters


def eos_ids(model, tokenizer=None) -> set[int]:
    """Every end-of-sequence id the tokenizer, the config and the generation config name."""
    eos: set[int] = set()
    for src in (tokenizer, getattr(model, "config", None), getattr(model, "generation_config", None)):
        value = getattr(src, "eos_token_id", None)
        for v in (value if isinstance(value, (list, tuple)) else [value]):
            if isinstance(v, int):
                eos.add(v)
    return eos


def kv_bytes_per_token(model) -> int:
    """Bytes of KV cache one token takes in every layer (keys and values in the model's float
    dtype); 0 for a model without attention heads in its config (a recurrent state)."""
    cfg = model.config
    cfg = getattr(cfg, "text_config", None) or cfg
    layers, heads = getattr(cfg, "num_hidden_layers", None), getattr(cfg, "num_attention_heads", None)
    if not layers or not heads:
        return 0
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    item = next((p.element_size() for p in model.parameters() if p.is_floating_point()), 4)
    return 2 * layers * kv_heads * head_dim * item
