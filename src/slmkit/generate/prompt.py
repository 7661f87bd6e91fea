"""Prompts as a model expects them: through the tokenizer's chat template, or raw."""

from __future__ import annotations

from slmkit.errors import SlmkitError


def build_prompt(tokenizer, text: str, chat: str) -> str:
    use_chat = chat == "yes" or (chat == "auto" and getattr(tokenizer, "chat_template", None))
    if use_chat:
        if not getattr(tokenizer, "chat_template", None):
            raise SlmkitError("chat=yes but the tokenizer has no chat template")
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
    return text
