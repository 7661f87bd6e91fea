"""White-box distillation objectives for `slmkit.train.train`: the student's next-token
distribution is pulled towards a frozen teacher's (a divergence from `losses.py`), optionally
mixed with cross-entropy on the labels and with a hidden-state term."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from slmkit.distill.fused_kd import linear_distill
from slmkit.distill.losses import DIVERGENCES, hidden_loss
from slmkit.errors import SlmkitError
from slmkit.train.data import IGNORE
from slmkit.train.fused_ce import checked_head, shift_labels
from slmkit.train.objective import shifted_ce


@dataclass
class DistillConfig:
    """A distillation objective's settings: the divergence and temperature, the CE share, hidden-state
    matching, on-policy sampling."""

    loss: Literal["fkl", "rkl", "jsd", "skl"] = field(default="fkl", metadata={
        "help": "fkl = KL(teacher || student), rkl = KL(student || teacher), jsd = generalised "
                "Jensen-Shannon (beta), skl = skew KL (alpha)"})
    temperature: float = field(default=1.0, metadata={"help": "softening of both distributions"})
    ce_weight: float = field(default=0.0, metadata={
        "help": "loss = (1 - ce_weight) x divergence + ce_weight x cross-entropy on the labels"})
    beta: float = field(default=0.5, metadata={"help": "JSD mixture weight of the teacher"})
    alpha: float = field(default=0.1, metadata={"help": "skew-KL mixture weight of the teacher"})
    hidden_weight: float = field(default=0.0, metadata={
        "help": "weight of the hidden-state term (0 = logits only)"})
    hidden_loss: Literal["mse", "cosine"] = field(default="mse", metadata={
        "help": "distance between mapped hidden states"})
    on_policy: float = field(default=0.0, metadata={
        "help": "fraction of batches (GKD's lambda) where the student writes the continuation "
                "itself (sampled from the first on_policy_prompt tokens of each row) and the "
                "divergence is taken on the tokens it wrote"})
    on_policy_prompt: int = field(default=64, metadata={"help": "prompt tokens kept per row"})
    on_policy_tokens: int = field(default=64, metadata={"help": "tokens the student samples"})
    layer_map: dict[int, int] | None = field(default=None, metadata={
        "help": "student layer -> teacher layer whose output it should match (0-based); default: "
                "evenly spaced (student layer i -> teacher layer round((i + 1) n_t / n_s) - 1)"})

    def __post_init__(self) -> None:
        if self.loss not in DIVERGENCES:
            raise SlmkitError(f"distillation loss {self.loss!r} unknown; choose from {', '.join(DIVERGENCES)}")
        if not self.temperature > 0:
            raise SlmkitError(f"distillation temperature must be > 0, not {self.temperature}")
        if not 0 <= self.ce_weight <= 1:
            raise SlmkitError(f"ce_weight must be in [0, 1], not {self.ce_weight}")
        if self.hidden_weight < 0:
            raise SlmkitError(f"hidden_weight must be >= 0, not {self.hidden_weight}")
        if not 0 <= self.on_policy <= 1:
            raise SlmkitError(f"on_policy must be in [0, 1], not {self.on_policy}")
        if self.on_policy_prompt < 1 or self.on_policy_tokens < 1:
            raise SlmkitError("on_policy_prompt and on_policy_tokens must be >= 1")


def _vocab(tok) -> dict:
    return tok.get_vocab() if hasattr(tok, "get_vocab") else dict(tok.vocab)


def check_same_tokenizer(student_tok, teacher_tok) -> None:
    """Logit distillation compares distributions token id by token id: refuse different vocabularies."""
    if student_tok is None or teacher_tok is None:
        return
    if _vocab(student_tok) != _vocab(teacher_tok):
        raise SlmkitError(
            f"student and teacher use different tokenizers ({len(_vocab(student_tok))} vs "
            f"{len(_vocab(teacher_tok))} tokens, or the same size with other ids): logit "
            "distillation needs one vocabulary. Use black-box distillation instead "
            "(slmkit distill --objective blackbox: the teacher writes text, the student learns it)")


def default_layer_map(n_student: int, n_teacher: int) -> dict[int, int]:
    return {i: round((i + 1) * n_teacher / n_student) - 1 for i in range(n_student)}


class Distill:
    """`Distill(teacher, DistillConfig(...), student)` -> an objective for `train`.

    The teacher runs frozen (no grad, eval mode). `student` is needed only to size the hidden-state
    projection (created when hidden_weight > 0 and the widths differ; it trains with the student).

    `fused=True` (default): forward KL (with its cross-entropy share) is computed from both
    models' last hidden states with the output heads applied in row chunks
    (`slmkit.distill.fused_kd`), never holding either model's full logits, where both models'
    structure allows it (checked once per model, as `CausalLM` does); other divergences and
    models take the plain path."""

    def __init__(self, teacher, cfg: DistillConfig | None = None, student=None, *,
                 student_tokenizer=None, teacher_tokenizer=None, fused: bool = True):
        import torch

        self.cfg = cfg or DistillConfig()
        self.fused = fused
        self._checked: dict[int, bool] = {}
        check_same_tokenizer(student_tokenizer, teacher_tokenizer)
        self.teacher = teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.divergence = DIVERGENCES[self.cfg.loss]
        self.kwargs = {"beta": self.cfg.beta} if self.cfg.loss == "jsd" else (
            {"alpha": self.cfg.alpha} if self.cfg.loss == "skl" else {})
        self.projection = None
        self.layer_map: dict[int, int] = {}
        if self.cfg.hidden_weight > 0:
            if student is None:
                raise SlmkitError("hidden-state distillation needs the student (to map layers and widths)")
            s_cfg, t_cfg = student.config.get_text_config(), teacher.config.get_text_config()
            n_s, n_t = s_cfg.num_hidden_layers, t_cfg.num_hidden_layers
            self.layer_map = dict(self.cfg.layer_map or default_layer_map(n_s, n_t))
            bad = {i: j for i, j in self.layer_map.items() if not (0 <= i < n_s and 0 <= j < n_t)}
            if bad:
                raise SlmkitError(f"layer_map entries {bad} out of range: the student has {n_s} "
                                  f"layers, the teacher {n_t}")
            if s_cfg.hidden_size != t_cfg.hidden_size:
                self.projection = torch.nn.Linear(s_cfg.hidden_size, t_cfg.hidden_size, bias=False)
                dtype = next(student.parameters()).dtype
                self.projection.to(dtype)

    def parameters(self) -> list:
        return list(self.projection.parameters()) if self.projection is not None else []

    def on_policy_batch(self, model, batch: dict) -> dict:
        """The batch's rows cut to their first `on_policy_prompt` tokens and continued by the
        student (sampling at temperature 1, no grad); only the sampled tokens are scored."""
        import torch

        net = getattr(model, "module", model)  # DDP wraps the model
        prompt = batch["input_ids"][:, : self.cfg.on_policy_prompt]
        was_training = net.training
        net.eval()
        with torch.no_grad():
            out = net.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt),
                               max_new_tokens=self.cfg.on_policy_tokens, do_sample=True, top_k=0,
                               temperature=1.0, pad_token_id=0)
        net.train(was_training)
        labels = out.clone()
        labels[:, : prompt.shape[1]] = IGNORE
        eos = net.generation_config.eos_token_id
        if eos is not None:  # rows that stopped early are padded after their eos: not scored
            eos_ids = torch.tensor(eos if isinstance(eos, list) else [eos])
            gen = out[:, prompt.shape[1]:]
            after = (torch.isin(gen, eos_ids).long().cumsum(1) - torch.isin(gen, eos_ids).long()) > 0
            labels[:, prompt.shape[1]:][after] = IGNORE
        return {"input_ids": out, "labels": labels}

    def loss(self, model, batch: dict):
        import torch

        if self.cfg.on_policy > 0 and torch.rand(()) < self.cfg.on_policy:
            batch = self.on_policy_batch(model, batch)
        hidden = self.cfg.hidden_weight > 0
        kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch.get("attention_mask"),
                  "use_cache": False, "output_hidden_states": hidden}
        parts = self._fused_parts(model, batch)
        if parts is not None:
            return self._fused_loss(parts, batch, kwargs)
        with torch.no_grad():
            t_out = self.teacher(**kwargs)
        s_out = model(**kwargs)
        s_logits, t_logits = s_out.logits, t_out.logits
        if s_logits.shape[-1] != t_logits.shape[-1]:  # padded embedding rows of one vocabulary
            v = min(s_logits.shape[-1], t_logits.shape[-1])
            s_logits, t_logits = s_logits[..., :v], t_logits[..., :v]
        labels = batch["labels"]
        mask = labels[:, 1:] != IGNORE                  # positions that predict a scored token
        div = self.divergence(s_logits[:, :-1], t_logits[:, :-1], self.cfg.temperature, mask, **self.kwargs)
        metrics = {self.cfg.loss: float(div.detach())}
        total = div
        if self.cfg.ce_weight > 0:
            ce = shifted_ce(s_logits, labels)
            total = (1 - self.cfg.ce_weight) * div + self.cfg.ce_weight * ce
            metrics["ce"] = float(ce.detach())
        if hidden:
            h = self._hidden_term(s_out.hidden_states, t_out.hidden_states, batch.get("attention_mask"))
            total = total + self.cfg.hidden_weight * h
            metrics["hidden"] = float(h.detach())
        return total, metrics

    def _fused_parts(self, model, batch):
        """((student decoder, head), (teacher decoder, head)) when the fused path applies."""
        if not self.fused or self.cfg.loss != "fkl":
            return None
        student = checked_head(model, batch, self._checked)
        teacher = checked_head(self.teacher, batch, self._checked) if student else None
        return (student, teacher) if student and teacher else None

    def _fused_loss(self, parts, batch: dict, kwargs: dict):
        import torch

        (s_decoder, s_head), (t_decoder, t_head) = parts
        with torch.no_grad():
            t_out = t_decoder(**kwargs)
        s_out = s_decoder(**kwargs)
        total, div, ce = linear_distill(
            s_out.last_hidden_state.flatten(0, 1), s_head, t_out.last_hidden_state.flatten(0, 1),
            t_head, shift_labels(batch["labels"]).flatten(), self.cfg.temperature, self.cfg.ce_weight)
        metrics = {self.cfg.loss: float(div)}
        if self.cfg.ce_weight > 0:
            metrics["ce"] = float(ce)
        if self.cfg.hidden_weight > 0:
            h = self._hidden_term(s_out.hidden_states, t_out.hidden_states, batch.get("attention_mask"))
            total = total + self.cfg.hidden_weight * h
            metrics["hidden"] = float(h.detach())
        return total, metrics

    def _hidden_term(self, s_states, t_states, attention_mask):
        # hidden_states[0] is the embedding output; layer i's output is hidden_states[i + 1]
        terms = []
        for i, j in self.layer_map.items():
            s = s_states[i + 1]
            if self.projection is not None:
                s = self.projection(s.to(self.projection.weight.dtype))
            terms.append(hidden_loss(s, t_states[j + 1], self.cfg.hidden_loss,
                                     None if attention_mask is None else attention_mask.bool()))
        return sum(terms) / len(terms)
