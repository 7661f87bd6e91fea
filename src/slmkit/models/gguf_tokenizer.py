"""The tokenizer part of a GGUF file: a byte-level BPE tokenizer as llama.cpp reads it, and
llama.cpp's pre-tokenizer name (`tokenizer.ggml.pre`) from the shape of a tokenizer.json."""

from __future__ import annotations

import json
import warnings

from slmkit.errors import SlmkitError

_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# regex of a Split + ByteLevel(use_regex=False) pre-tokenizer -> llama.cpp's pre-tokenizer name
KNOWN_SPLITS = {_QWEN2_SPLIT: "qwen2", _LLAMA3_SPLIT: "llama-bpe"}


def _steps(node: dict | None) -> list[dict]:
    if not node:
        return []
    if node.get("type") == "Sequence":
        return [s for sub in node.get("pretokenizers", []) for s in _steps(sub)]
    return [node]


def detect_pre(tokenizer_json: dict) -> str | None:
    """llama.cpp's `tokenizer.ggml.pre` for a byte-level BPE tokenizer.json, from the shape of its
    pre-tokenizer (llama.cpp itself hashes a test encoding); None when the shape is unknown."""
    steps = _steps(tokenizer_json.get("pre_tokenizer"))
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if (kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits")
            and steps[1].get("use_regex", True)):
        return "smollm"  # SmolLM / SmolLM2: digits one by one, then GPT-2's regex
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        return KNOWN_SPLITS.get((steps[0].get("pattern") or {}).get("Regex"))
    return None


def write_tokenizer(w, tokenizer, model, pre: str | None) -> None:
    """Write a byte-level BPE tokenizer to the GGUFWriter `w` as llama.cpp reads it ("gpt2" model,
    the pre-tokenizer name `pre` or the detected one, tokens and their types, merges, special ids,
    add_bos / add_eos, the chat template)."""
    import gguf

    backend = getattr(tokenizer, "backend_tokenizer", None)
    tj = json.loads(backend.to_str()) if backend is not None else {"model": {"type": "not fast"}}
    level = [s for s in _steps(tj.get("pre_tokenizer")) if s.get("type") == "ByteLevel"]
    if tj["model"]["type"] != "BPE" or not level:
        raise SlmkitError("GGUF export writes byte-level BPE tokenizers (GPT-2 / Llama-3 / Qwen / "
                          f"SmolLM style); {type(tokenizer).__name__} is {tj['model']['type']} "
                          "without ByteLevel")
    n_vocab, vocab = model.config.vocab_size, tokenizer.get_vocab()
    added = tokenizer.added_tokens_decoder  # id -> AddedToken
    beyond = sorted(i for i in vocab.values() if i >= n_vocab)
    if any(i not in added for i in beyond):
        raise SlmkitError(f"the tokenizer has ids up to {beyond[-1]} but the model's embedding has "
                          f"{n_vocab} rows")
    if beyond:  # added tokens the model has no embedding row for: it could never read them
        warnings.warn(f"dropping added token(s) {[added[i].content for i in beyond]} with ids >= "
                      f"the model's vocab_size {n_vocab}", stacklevel=3)
    by_id, T = {i: t for t, i in vocab.items()}, gguf.TokenType
    tokens, types = [], []
    for i in range(n_vocab):  # rows the tokenizer never produces are padded, as llama.cpp does
        tok, kind = ((f"[PAD{i}]", T.UNUSED) if i not in by_id else
                     (added[i].content, T.CONTROL if added[i].special else T.USER_DEFINED)
                     if i in added else (by_id[i], T.NORMAL))
        tokens.append(tok)
        types.append(int(kind))
    pre = pre or detect_pre(tj)
    if pre is None:
        warnings.warn("unknown pre-tokenizer shape; writing llama.cpp's 'default' (pass pre=... "
                      "to name the right one)", stacklevel=3)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre or "default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]])
    for kind, add in (("bos", w.add_bos_token_id), ("eos", w.add_eos_token_id),
                      ("unk", w.add_unk_token_id), ("pad", w.add_pad_token_id)):
        tid = getattr(tokenizer, f"{kind}_token_id", None)
        tid = tid if tid is not None else getattr(model.config, f"{kind}_token_id", None)
        if isinstance(tid, int) and 0 <= tid < n_vocab:
            add(tid)
    # add_bos / add_eos: whether encoding with special tokens adds them, so llama.cpp does too
    plain, full = tokenizer("a b", add_special_tokens=False)["input_ids"], tokenizer("a b")["input_ids"]
    bos, eos, extra = tokenizer.bos_token_id, tokenizer.eos_token_id, len(full) > len(plain)
    w.add_add_bos_token(bool(extra and bos is not None and full[0] == bos))
    w.add_add_eos_token(bool(extra and eos is not None and full[-1] == eos))
    w.add_add_space_prefix(bool(level[0].get("add_prefix_space", False)))
    if isinstance(getattr(tokenizer, "chat_template", None), str):
        w.add_chat_template(tokenizer.chat_template)
