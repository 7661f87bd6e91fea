"""A remote OpenAI-compatible endpoint behind the LM protocol (vLLM, llama.cpp's server, TGI,
OpenAI, ...), over httpx.

- generate: POST {base_url}/chat/completions (or /completions with `chat=False`), one request per
  prompt; `temperature` and `max_tokens` passed through.
- loglikelihood: POST /completions with echo=True, logprobs=1, max_tokens=0, the prompt being
  context + continuation; the continuation's tokens are those whose text offset is at or after
  len(context). Endpoints that do not serve prompt logprobs get a clear error.
- The API key comes from the environment variable `api_key_env` (default OPENAI_API_KEY), if set.
- Each request has a timeout; 429 and 5xx answers and connection errors are retried a bounded
  number of times with exponential backoff (honouring Retry-After); anything else fails at once
  with the status and the server's message.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from slmkit.errors import SlmkitError

RETRY_STATUS = {429, 500, 502, 503, 504}


@dataclass
class RemoteLM:
    """An OpenAI-compatible endpoint behind the LM protocol (see the module docstring); `base_url` ends
    in /v1."""

    base_url: str                        # e.g. http://127.0.0.1:8000/v1
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = 60.0
    retries: int = 3
    backoff: float = 0.5
    chat: bool = True

    @property
    def name(self) -> str:
        return f"{self.model}@{self.base_url}"

    def tokenizer_fingerprint(self) -> str:
        return f"remote:{self.name}"  # never equal to a local one: token-level methods refuse it

    def _client(self):
        try:
            import httpx
        except ImportError:
            raise SlmkitError("remote models need httpx: pip install 'slmkit[collab]'") from None
        headers = {}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return httpx.Client(base_url=self.base_url.rstrip("/"), headers=headers, timeout=self.timeout)

    def _post(self, path: str, payload: dict) -> dict:
        import httpx

        last = ""
        with self._client() as client:
            for attempt in range(self.retries + 1):
                try:
                    r = client.post(path, json=payload)
                except httpx.TimeoutException:
                    last = f"timed out after {self.timeout:g} s"
                except httpx.TransportError as e:
                    last = f"connection failed ({type(e).__name__}: {e})"
                else:
                    if r.status_code == 200:
                        try:
                            return r.json()
                        except ValueError:
                            raise SlmkitError(f"{self.name}{path}: answer is not JSON: {r.text[:200]!r}") from None
                    if r.status_code not in RETRY_STATUS:
                        raise SlmkitError(f"{self.name}{path}: HTTP {r.status_code}: {r.text[:300]}")
                    last = f"HTTP {r.status_code}: {r.text[:200]}"
                    wait = r.headers.get("retry-after")
                    if wait and attempt < self.retries:
                        time.sleep(min(float(wait), 30.0) if wait.replace(".", "").isdigit() else 0)
                        continue
                if attempt < self.retries:
                    time.sleep(self.backoff * 2 ** attempt)
        raise SlmkitError(f"{self.name}{path}: giving up after {self.retries + 1} attempts; last: {last}")

    def generate(self, prompts: list[str], max_new_tokens: int = 128, temperature: float = 0.0) -> list[str]:
        out = []
        for p in prompts:
            if self.chat:
                data = self._post("/chat/completions", {
                    "model": self.model, "messages": [{"role": "user", "content": p}],
                    "max_tokens": max_new_tokens, "temperature": temperature})
                out.append(self._field(data, "message", "content"))
            else:
                data = self._post("/completions", {"model": self.model, "prompt": p,
                                                   "max_tokens": max_new_tokens, "temperature": temperature})
                out.append(self._field(data, "text"))
        return out

    def _field(self, data: dict, *keys: str):
        try:
            x = data["choices"][0]
            for k in keys:
                x = x[k]
            return x
        except (KeyError, IndexError, TypeError):
            raise SlmkitError(f"{self.name}: unexpected answer shape (no choices[0].{'.'.join(keys)}): "
                              f"{str(data)[:200]}") from None

    def loglikelihood(self, context: str, continuation: str) -> float:
        data = self._post("/completions", {"model": self.model, "prompt": context + continuation,
                                           "max_tokens": 0, "echo": True, "logprobs": 1,
                                           "temperature": 0.0})
        lp = self._field(data, "logprobs")
        if not lp or "token_logprobs" not in lp or "text_offset" not in lp:
            raise SlmkitError(f"{self.name} does not serve prompt logprobs (echo + logprobs); "
                              "loglikelihood needs them")
        total, n = 0.0, 0
        for off, v in zip(lp["text_offset"], lp["token_logprobs"]):
            if off >= len(context) and v is not None:
                total, n = total + v, n + 1
        if n == 0:
            raise SlmkitError(f"{self.name}: no continuation tokens in the echoed logprobs")
        return total
