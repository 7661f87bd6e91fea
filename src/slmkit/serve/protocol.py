"""The OpenAI API's request bodies (the fields slmkit serves), its error shape, and the step from a
request to per-sequence `Sampling`.

Unknown fields are ignored, as OpenAI's server does; a field with a bad value is a 400 whose
`param` names it. Sampling fields a request leaves out come from the model's generation config
(`Sampling.for_model`); `temperature: 0` is greedy.
"""

from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from slmkit.generate import Sampling

MAX_N = 16
MAX_STOP = 4


class APIError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    repetition_penalty: float | None = Field(default=None, gt=0, le=10)
    n: int = Field(default=1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Union[str, list[str], None] = None
    seed: int | None = Field(default=None, ge=0, lt=2**63)
    ignore_eos: bool = False
    user: str | None = None

    def stops(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > MAX_STOP:
            raise APIError(400, f"stop takes at most {MAX_STOP} strings, not {len(stops)}", param="stop")
        return tuple(s for s in stops if s)

    def sampling(self, model, max_tokens: int, logprobs: int | None, index: int) -> Sampling:
        """Sampling of choice `index` (with a seed, choice i samples with seed + i)."""
        return Sampling.for_model(
            model, max_new_tokens=max_tokens, temperature=self.temperature, top_p=self.top_p,
            top_k=self.top_k, repetition_penalty=self.repetition_penalty, stop=self.stops(),
            ignore_eos=self.ignore_eos, logprobs=logprobs,
            seed=None if self.seed is None else self.seed + index)


class CompletionRequest(_Common):
    prompt: Union[str, list[str], list[int], list[list[int]]]
    max_tokens: int | None = Field(default=16, ge=1)   # OpenAI's default for completions
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: bool = False


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: Union[str, list[dict], None] = None

    def text(self) -> str:
        """The message's text (a list of content parts: their text parts, joined)."""
        if isinstance(self.content, list):
            if any(p.get("type") != "text" for p in self.content):
                raise APIError(400, "only text content parts are served", param="messages")
            return "".join(str(p.get("text", "")) for p in self.content)
        return self.content or ""


class ChatRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)

    def wanted_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def logprob_count(self) -> int | None:
        if not self.logprobs:
            if self.top_logprobs:
                raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
            return None
        return self.top_logprobs or 0
