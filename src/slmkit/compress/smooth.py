"""Per-input-channel scaling that leaves the float model's function unchanged (AWQ, SmoothQuant).

For an activation x [tokens, in] read by linears W_1..W_k [out_i, in], and a positive scale s [in]:

    W_i x = (W_i diag(s)) (diag(1/s) x)

so the linears' input columns are multiplied by s and the op that produced x ("absorber") is made
to emit x / s. Absorbers, derived from the adapter table (`slmkit.models.arch`):

- the attention input norm (feeds q/k/v or fused qkv) and the MLP input norm (feeds gate/up, up,
  or fused gate_up): RMSNorm weight / s, Gemma's (1 + weight) / s, LayerNorm weight and bias / s;
- for `o`: the rows of `v` (or the v rows of a fused qkv), since attention mixes v over tokens
  linearly per channel. Under grouped-query attention a kv head's v channel d feeds channel d of
  every query head in its group, so o's input channels are *tied*: the scale must be equal across
  the query heads sharing a kv head (`Absorber.tie`; `tie_channels` averages statistics over such
  channels). AutoAWQ and llm-awq skip this site under GQA; on Qwen2.5-Coder-0.5B (14 query heads,
  2 kv heads) a tied scale lowers o_proj's output error up to 4x;
- for `down`: the rows (and bias) of `up` (or the up half of a fused gate_up) when the adapter says
  `mlp_foldable` (act(gate) * up, or a ReLU MLP); impossible for GELU MLPs (gpt2).

`scale_groups(model, index)` lists every input site of a decoder layer, with its absorber or the
reason there is none; `fold_scales(group, s)` applies a scale exactly; `ActivationStats` collects
per-channel mean |x|, max |x| and optionally the Gram matrix X^T X / n of each site's input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from slmkit.compress.calibrate import InputHooks
from slmkit.compress.targets import Target, layer_targets
from slmkit.errors import SlmkitError
from slmkit.models.arch import get_arch, get_submodule

if TYPE_CHECKING:
    from torch import nn

ATTN_IN, ATTN_OUT, MLP_IN, MLP_OUT = "attn_in", "attn_out", "mlp_in", "mlp_out"
_SITE_OF_ROLE = {"q": ATTN_IN, "k": ATTN_IN, "v": ATTN_IN, "qkv": ATTN_IN, "o": ATTN_OUT,
                 "gate": MLP_IN, "up": MLP_IN, "gate_up": MLP_IN, "down": MLP_OUT}


@dataclass
class Absorber:
    """The op whose output is divided by s: a norm, or output rows `rows` of a linear."""
    name: str                      # full dotted name in the model
    module: "nn.Module"
    target: Target | None = None   # set when the absorber is a linear (rows of its output)
    rows: slice | None = None      # output rows of that linear (None = all of them)
    # int64 [site in_features]: which absorber channel (within `rows`) produces each input channel
    # of the site; None = channel i itself. Under GQA several of o's inputs come from one v row.
    tie: torch.Tensor | None = None


@dataclass
class ScaleGroup:
    """One input site of a decoder layer: the linears reading the same activation."""
    site: str                      # attn_in, attn_out, mlp_in, mlp_out
    linears: list[Target]          # every linear reading the activation (skip lists not applied)
    prev: Absorber | None          # None: no op can absorb a scale here (see `why_not`)
    why_not: str = ""

    @property
    def roles(self) -> list[str]:
        return [t.role for t in self.linears]

    @property
    def in_features(self) -> int:
        return self.linears[0].weight().shape[1]


def scale_groups(model: "nn.Module", index: int) -> list[ScaleGroup]:
    """The input sites of decoder layer `index` in forward order, each with its absorber."""
    spec = get_arch(model)
    layer = spec.decoder_layers(model)[index]
    prefix = f"{spec.layers}.{index}"
    by_site: dict[str, list[Target]] = {}
    for t in layer_targets(model, index, ()):
        by_site.setdefault(_SITE_OF_ROLE[t.role], []).append(t)
    roles = {t.role: t for ts in by_site.values() for t in ts}
    # post-norm layers (OPT-350m: `do_layer_norm_before=False`) feed the norm's output to the residual
    pre_norm = getattr(layer, "do_layer_norm_before", True) is not False

    def norm(path: str) -> tuple[Absorber | None, str]:
        if not pre_norm:
            return None, "post-norm layer: the norm's output also feeds the residual stream"
        return Absorber(f"{prefix}.{path}", get_submodule(layer, path)), ""

    def rows_of(t: Target, start: int, stop: int, tie: torch.Tensor | None = None) -> Absorber:
        return Absorber(t.name, t.module, t, slice(start, stop), tie)

    def attn_out() -> tuple[Absorber | None, str]:
        width = roles["o"].weight().shape[1]
        if "v" in roles:
            v_rows = roles["v"].weight().shape[0]
            tie, why = gqa_tie(width, v_rows)
            if why:
                return None, why
            return rows_of(roles["v"], 0, v_rows, tie), ""
        if "qkv" in roles:  # fused [q; k; v] rows (phi3, gpt2): k and v have the same width
            kv_rows = (roles["qkv"].weight().shape[0] - width) // 2
            tie, why = gqa_tie(width, kv_rows)
            if why:
                return None, f"fused qkv: {why}"
            return rows_of(roles["qkv"], width + kv_rows, width + 2 * kv_rows, tie), ""
        return None, "no v projection found"

    def gqa_tie(width: int, v_rows: int) -> tuple[torch.Tensor | None, str]:
        """The tie of o's `width` inputs to v's `v_rows` outputs (None without GQA)."""
        if v_rows == width:
            return None, ""
        heads = getattr(model.config, spec.heads_attr, None) or 0
        head_dim = width // heads if heads else 0
        kv_heads = v_rows // head_dim if head_dim else 0
        if not kv_heads or heads * head_dim != width or kv_heads * head_dim != v_rows or heads % kv_heads:
            return None, f"v's {v_rows} outputs do not map onto o's {width} inputs as grouped-query heads"
        # repeat_kv: kv head k serves query heads k * n_rep .. (k + 1) * n_rep - 1
        kv_of_head = torch.arange(heads) // (heads // kv_heads)
        return (kv_of_head[:, None] * head_dim + torch.arange(head_dim)).reshape(-1), ""

    def mlp_out() -> tuple[Absorber | None, str]:
        if not spec.mlp_foldable:
            return None, "the MLP activation is not positively homogeneous (e.g. GELU without a gate)"
        width = roles["down"].weight().shape[1]
        if "gate_up" in roles:  # fused [gate; up] rows (phi3): up is the second half
            if roles["gate_up"].weight().shape[0] == 2 * width:
                return rows_of(roles["gate_up"], width, 2 * width), ""
            return None, "gate_up's out_features != 2 x down's in_features"
        if "up" in roles and roles["up"].weight().shape[0] == width:
            return rows_of(roles["up"], 0, width), ""
        return None, "no up projection matching down's in_features"

    absorbers = {ATTN_IN: lambda: norm(spec.attn_in_norm), ATTN_OUT: attn_out,
                 MLP_IN: lambda: norm(spec.mlp_in_norm), MLP_OUT: mlp_out}
    groups = []
    for site in (ATTN_IN, ATTN_OUT, MLP_IN, MLP_OUT):
        if site in by_site:
            prev, why = absorbers[site]()
            groups.append(ScaleGroup(site, by_site[site], prev, why))
    return groups


# ---- folding -------------------------------------------------------------------------------

def norm_kind(norm: "nn.Module") -> str:
    """How a norm's output depends on its parameters: "rms" (x_hat * weight), "rms1"
    (Gemma: x_hat * (1 + weight)) or "layernorm" (x_hat * weight + bias)."""
    name = type(norm).__name__
    weight = getattr(norm, "weight", None)
    if isinstance(norm, torch.nn.LayerNorm) or name.endswith("LayerNorm"):
        if weight is None:
            raise SlmkitError(f"{name} has no affine weight, so it cannot absorb a per-channel scale")
        return "layernorm"
    if "RMSNorm" in name and isinstance(weight, torch.Tensor):
        return "rms1" if name.startswith("Gemma") else "rms"
    raise SlmkitError(
        f"cannot fold a per-channel scale into a {name}: slmkit knows RMSNorm (weight), Gemma's "
        "RMSNorm (1 + weight) and LayerNorm; add this norm type to slmkit/compress/smooth.py::norm_kind")


@torch.no_grad()
def absorb(prev: Absorber, s: torch.Tensor) -> None:
    """Make `prev` output x / s instead of x (s [channels], positive)."""
    if prev.target is not None:
        w = prev.target.weight()                      # [out, in] view of the stored weight
        rows = prev.rows or slice(0, w.shape[0])
        w[rows] = (w[rows].float() / s[:, None]).to(w.dtype)
        bias = getattr(prev.module, "bias", None)
        if bias is not None:
            bias[rows] = (bias[rows].float() / s).to(bias.dtype)
        return
    kind, w = norm_kind(prev.module), prev.module.weight
    if kind == "rms1":
        w.copy_((1 + w.float()) / s - 1)
    else:
        w.copy_(w.float() / s)
        if kind == "layernorm" and getattr(prev.module, "bias", None) is not None:
            prev.module.bias.copy_(prev.module.bias.float() / s)


def tie_channels(v: torch.Tensor, tie: torch.Tensor | None) -> torch.Tensor:
    """v [in] averaged over the input channels that share an absorber channel (`Absorber.tie`),
    expanded back to [in]; v itself when tie is None."""
    if tie is None:
        return v
    n = int(tie.max()) + 1
    sums = torch.zeros(n, dtype=v.dtype).index_add_(0, tie, v)
    return (sums / torch.bincount(tie, minlength=n).to(v.dtype))[tie]


@torch.no_grad()
def absorber_scales(prev: Absorber, s: torch.Tensor) -> torch.Tensor:
    """The site's scales s [in] per absorber channel: s itself, or under a tie (grouped-query
    attention) the scale each tied channel takes (one value per channel, assumed equal across it)."""
    if prev.tie is None:
        return s
    return torch.zeros(int(prev.tie.max()) + 1).scatter_(0, prev.tie, s)


def fold_scales(group: ScaleGroup, s: torch.Tensor) -> None:
    """Multiply the input columns of every linear in `group` by s [in] and make the absorber emit
    x / s: the float model computes the same function (up to rounding)."""
    if group.prev is None:
        raise SlmkitError(f"the {group.site} input ({', '.join(group.roles)}) cannot absorb a "
                          f"scale: {group.why_not}")
    s = s.detach().float()
    if s.shape != (group.in_features,) or not bool((s > 0).all()) or not bool(torch.isfinite(s).all()):
        raise SlmkitError(f"scales for {group.site} must be finite, positive, shape "
                          f"({group.in_features},); got shape {tuple(s.shape)}")
    tie = group.prev.tie
    if tie is None:
        absorb(group.prev, s)
    else:
        per_row = absorber_scales(group.prev, s)
        if not torch.allclose(per_row[tie], s, rtol=1e-5, atol=0):
            raise SlmkitError(
                f"scales for {group.site} must be equal across the query heads that share a kv head "
                "(grouped-query attention: one v channel feeds them all); tie them with "
                "slmkit.compress.smooth.tie_channels(..., group.prev.tie)")
        absorb(group.prev, per_row)
    for t in group.linears:
        w = t.weight()                                # [out, in] view
        w.copy_((w.float() * s[None, :]).to(w.dtype))


# ---- activation statistics -----------------------------------------------------------------

@dataclass
class SiteStats:
    """Statistics of one input site x [tokens, in] over all calibration tokens."""
    abs_sum: torch.Tensor | None = None       # float32 [in]: sum over tokens of |x|
    max_abs: torch.Tensor | None = None       # float32 [in]: max over tokens of |x|
    xtx: torch.Tensor | None = None           # float32 [in, in]: sum over tokens of x x^T (if asked)
    tokens: int = 0

    @property
    def mean_abs(self) -> torch.Tensor:       # float32 [in]
        return self.abs_sum / max(self.tokens, 1)

    @property
    def gram(self) -> torch.Tensor:           # float32 [in, in]: X^T X / tokens
        if self.xtx is None:
            raise SlmkitError("no Gram matrix was collected: use ActivationStats(..., gram=True)")
        return self.xtx / max(self.tokens, 1)


class ActivationStats(InputHooks):
    """`with ActivationStats({key: module}, gram=False) as st: run()` collects, for each module's
    input x, per-channel mean |x| and max |x| over every token, and with `gram=True` the Gram
    matrix X^T X / n (the output MSE of any weight error dW on these inputs is
    tr(dW Gram dW^T) / out, whatever the number of tokens)."""

    def __init__(self, modules: dict[str, "nn.Module"], gram: bool = False):
        super().__init__(modules)
        self.want_gram = gram
        self.stats = {key: SiteStats() for key in modules}

    def observe(self, key: str, x: torch.Tensor) -> None:      # x [tokens, in]
        st = self.stats[key]
        a = x.abs()
        st.abs_sum = a.sum(0) if st.abs_sum is None else st.abs_sum + a.sum(0)
        m = a.amax(0)
        st.max_abs = m if st.max_abs is None else torch.maximum(st.max_abs, m)
        if self.want_gram:
            st.xtx = x.T @ x if st.xtx is None else st.xtx.addmm_(x.T, x)
        st.tokens += x.shape[0]


def group_stats(groups: list[ScaleGroup], gram: bool = False) -> ActivationStats:
    """An `ActivationStats` keyed by site, hooked on the first linear of each group."""
    return ActivationStats({g.site: g.linears[0].module for g in groups}, gram)
