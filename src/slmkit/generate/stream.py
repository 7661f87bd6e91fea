"""Text of a sequence as its tokens arrive: each new token gives the characters that are now
certain, so a stream never sends a broken character or the start of a stop string.

    stream = TextStream(tokenizer, stop=("\\n\\n",))
    for token in tokens: send(stream.push(token))
    send(stream.finish(completion.text))     # what is left of the final (stop-cut) text

A byte-level tokenizer can split one character over several tokens; until the rest arrives the
decoded text ends in U+FFFD and nothing new is released. Text that could be the beginning of a
stop string is held back until the next token settles it; `finish` releases the rest of the
final text (the engine's, already cut before a stop string).
"""

from __future__ import annotations


class TextStream:
    """Incremental detokenization of one sequence (see the module docstring)."""

    def __init__(self, tokenizer, stop: tuple[str, ...] = ()):
        self.tokenizer, self.stop = tokenizer, tuple(s for s in stop if s)
        self.ids: list[int] = []
        self.sent = 0        # characters released so far

    def push(self, token: int) -> str:
        """Add one token -> the characters released by it (possibly none)."""
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""
        safe = len(text) - self._held(text)
        if any(s in text for s in self.stop):   # the engine cuts here; `finish` sends the rest
            safe = min(safe, min(text.find(s) for s in self.stop if s in text))
        out = text[self.sent:safe] if safe > self.sent else ""
        self.sent = max(self.sent, safe)
        return out

    def finish(self, final_text: str | None) -> str:
        """The rest of the sequence's final text (None: everything decoded so far)."""
        if final_text is None:
            final_text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        return final_text[self.sent:]

    def _held(self, text: str) -> int:
        """How many trailing characters could start a stop string."""
        held = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(text)), held, -1):
                if text.endswith(s[:k]):
                    held = k
                    break
        return held
