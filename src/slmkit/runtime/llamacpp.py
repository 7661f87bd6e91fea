"""llama.cpp itself, through llama-cpp-python (the optional extra `slmkit[llamacpp]`): GGUF files
measured where users run them.

- `missing()`: None when the extra is installed, else the one line that says how to get it.
- `quantize_gguf(src, dst, "Q4_K_M")`: llama.cpp's own quantization of a GGUF file
  (`llama_model_quantize`, as `llama-quantize` does it; no importance matrix: the binding cannot
  pass one).
- `LlamaCppModel(path)`: `score(tokens, n_ctx)`, the summed log-probability of `tokens[n_ctx:]`
  given everything before (the request of `slmkit.eval.scoring`, so slmkit's perplexity and
  multiple-choice evaluators run on it with the source's tokenizer), and `decode_speed(prompt,
  n)`, greedy decode tok/s after a prompt, both computed by llama.cpp's own kernels.
"""

from __future__ import annotations

import ctypes
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from slmkit.errors import SlmkitError

INSTALL = "pip install 'slmkit[llamacpp]' (llama-cpp-python builds llama.cpp: ~10 minutes on 2 cores)"


def missing() -> str | None:
    """None when llama-cpp-python imports, else why not and how to install it (one line)."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError as e:
        return f"llama.cpp rows skipped: llama-cpp-python is not installed ({e.msg}); {INSTALL}"
    return None


def _require():
    reason = missing()
    if reason is not None:
        raise SlmkitError(reason)
    import llama_cpp

    return llama_cpp


def quantize_gguf(src: str | Path, dst: str | Path, ftype: str, threads: int = 0) -> Path:
    """llama.cpp's quantization `ftype` ("Q4_0", "Q4_K_M", "Q8_0", ...) of the GGUF file `src`,
    written to `dst` (through a temporary name, so a failure leaves no partial file)."""
    llama_cpp = _require()
    code = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype.upper()}", None)
    if code is None:
        known = sorted(n[len("LLAMA_FTYPE_MOSTLY_"):] for n in dir(llama_cpp) if n.startswith("LLAMA_FTYPE_MOSTLY_"))
        raise SlmkitError(f"llama.cpp has no file type {ftype!r}; known: {', '.join(known)}")
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise SlmkitError(f"{src}: no such GGUF file")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.nthread = code, threads
    tmp = dst.with_name(f".{dst.name}.partial")
    from llama_cpp._utils import suppress_stdout_stderr  # its per-tensor log goes nowhere

    with suppress_stdout_stderr(disable=False):
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
    if rc != 0:
        tmp.unlink(missing_ok=True)
        raise SlmkitError(f"llama.cpp could not quantize {src} to {ftype} (code {rc})")
    tmp.replace(dst)
    return dst


class LlamaCppModel:
    """A GGUF file loaded by llama.cpp (CPU, `threads` threads, a context of `n_ctx` tokens; it
    keeps the logits of every position, n_ctx x vocabulary floats). Use it in a `with` block, or
    `close()` it."""

    def __init__(self, path: str | Path, n_ctx: int = 1024, threads: int = 2):
        llama_cpp = _require()
        if not Path(path).is_file():
            raise SlmkitError(f"{path}: no such GGUF file")
        self.path, self.n_ctx = Path(path), n_ctx
        self.config = SimpleNamespace(n_ctx=n_ctx)   # what the evaluators read of a config: the context
        self.llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_threads=threads,
                                   n_threads_batch=threads, logits_all=True, verbose=False)

    @property
    def n_vocab(self) -> int:
        return self.llm.n_vocab()

    def score(self, tokens: list[int], n_ctx: int) -> tuple[float, int, bool]:
        """(summed log-probability of tokens[n_ctx:], how many, whether each was the argmax)
        given every token before it; one window of at most `n_ctx` (the context) tokens."""
        if not 1 <= n_ctx < len(tokens) <= self.n_ctx:
            raise SlmkitError(f"a llama.cpp request needs 1 <= n_ctx < len(tokens) <= {self.n_ctx}, "
                              f"got n_ctx={n_ctx}, {len(tokens)} tokens")
        self.llm.reset()
        self.llm.eval(list(tokens[:-1]))
        import torch

        logits = torch.from_numpy(np.ascontiguousarray(self.llm.scores[n_ctx - 1: len(tokens) - 1], dtype=np.float32))
        target = torch.as_tensor(tokens[n_ctx:])
        logprob = -torch.nn.functional.cross_entropy(logits, target, reduction="sum").item()
        return logprob, len(target), bool((logits.argmax(-1) == target).all())

    def decode_speed(self, prompt: list[int], new_tokens: int) -> float:
        """Greedy decode tok/s after `prompt` (prefill not timed): one token per llama.cpp call."""
        if len(prompt) + new_tokens > self.n_ctx:
            raise SlmkitError(f"prompt + new tokens ({len(prompt) + new_tokens}) exceed the context {self.n_ctx}")
        self.llm.reset()
        self.llm.eval(list(prompt))
        token = int(np.argmax(self.llm.scores[len(prompt) - 1]))
        start = time.perf_counter()
        for i in range(new_tokens):
            self.llm.eval([token])
            token = int(np.argmax(self.llm.scores[len(prompt) + i]))
        return new_tokens / (time.perf_counter() - start)

    def close(self) -> None:
        self.llm.close()

    def __enter__(self) -> "LlamaCppModel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
