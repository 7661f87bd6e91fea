"""A learned router (as RouteLLM): predict from the query alone whether the small model will get
it right, and send the rest to the large model.

Features: the small model's mean-pooled last hidden state of the query (one forward, no
generation). Classifier: logistic regression trained with AdamW on (query, small model was
right?) pairs. `router.confidence` plugs into `cascade(..., confidence=...)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from slmkit.errors import SlmkitError

if TYPE_CHECKING:
    import torch


def query_features(lm, prompts: list[str]) -> "torch.Tensor":
    """[n, hidden] mean of the last hidden states over each prompt's tokens (float32)."""
    import torch

    rows = []
    with torch.inference_mode():
        for p in prompts:
            ids = lm.encode(p) or [lm.tokenizer.eos_token_id or 0]
            out = lm.model(input_ids=torch.tensor([ids]), output_hidden_states=True, use_cache=False)
            rows.append(out.hidden_states[-1][0].float().mean(0))
    return torch.stack(rows)


@dataclass
class Router:
    """Logistic regression over query features; `confidence` is P(the small model answers correctly)."""

    weight: "torch.Tensor"     # [hidden]
    bias: float
    mean: "torch.Tensor"       # feature standardisation
    std: "torch.Tensor"

    def probability(self, features: "torch.Tensor") -> "torch.Tensor":
        import torch

        return torch.sigmoid(((features - self.mean) / self.std) @ self.weight + self.bias)

    def confidence(self, lm, prompt: str, answer: str | None = None) -> float:
        """P(small model is right) for `prompt` (the answer is not needed)."""
        return float(self.probability(query_features(lm, [prompt]))[0])


def train_router(features: "torch.Tensor", small_correct: list[bool], *, epochs: int = 300,
                 lr: float = 0.05, weight_decay: float = 1e-2, seed: int = 0) -> Router:
    """Fit a `Router` on query features [n, hidden] and whether the small model got each query right."""
    import torch

    if features.shape[0] != len(small_correct) or features.shape[0] < 2:
        raise SlmkitError("router training needs >= 2 queries with one label each")
    y = torch.tensor(small_correct, dtype=torch.float32)
    if y.min() == y.max():
        raise SlmkitError("router training needs queries the small model gets right and wrong")
    torch.manual_seed(seed)
    mean, std = features.mean(0), features.std(0).clamp(min=1e-6)
    x = (features - mean) / std
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.AdamW([w, b], lr=lr, weight_decay=weight_decay)
    for _ in range(epochs):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return Router(w.detach(), float(b), mean, std)
