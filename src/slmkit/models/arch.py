"""The architecture adapter table: where each part of a decoder-only model lives.

Every method that touches model internals asks this table; nothing else in slmkit writes a module
path such as `model.layers[i].self_attn.q_proj`. Paths are dotted attribute paths: model-level
ones start at the `*ForCausalLM` object, layer-level ones start at one decoder layer.

Adding an architecture = one `ArchSpec` entry in `ARCHS` plus a tiny config in
`slmkit.models.tiny.TINY_CONFIGS` (the conformance tests then cover it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from slmkit.errors import SlmkitError

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class ArchSpec:
    """Where the parts of one architecture live (None = this architecture has no such part)."""

    model_type: str
    layers: str                   # ModuleList of decoder layers
    embed: str                    # token embedding
    final_norm: str               # norm before the lm_head
    lm_head: str = "lm_head"
    pos_embed: str | None = None  # learned absolute positions (gpt2, opt)
    # attention projections, relative to a decoder layer
    q: str | None = "self_attn.q_proj"
    k: str | None = "self_attn.k_proj"
    v: str | None = "self_attn.v_proj"
    qkv: str | None = None        # fused q/k/v projection, when the architecture has one
    o: str = "self_attn.o_proj"
    # MLP projections, relative to a decoder layer
    gate: str | None = "mlp.gate_proj"
    up: str | None = "mlp.up_proj"
    gate_up: str | None = None    # fused gate/up projection (phi3)
    down: str = "mlp.down_proj"
    # norms inside a decoder layer, in forward order
    norms: tuple[str, ...] = ("input_layernorm", "post_attention_layernorm")
    # the norm whose output feeds the attention input projections, and the one feeding the MLP's
    # first projections: per-input-channel scales (AWQ, SmoothQuant) fold into these
    attn_in_norm: str = "input_layernorm"
    mlp_in_norm: str = "post_attention_layernorm"
    # the MLP is act(gate(x)) * up(x) (scales on down's input fold into up's rows), or uses a
    # positively homogeneous activation such as ReLU (they fold into the first projection's rows)
    mlp_foldable: bool = True
    # gpt2 stores linear weights as Conv1D with shape (in, out) instead of nn.Linear's (out, in)
    conv1d: bool = False
    # config attribute names that structured pruning rewrites (they differ per model_type)
    n_layers_attr: str = "num_hidden_layers"
    intermediate_attr: str = "intermediate_size"   # MLP width (opt: ffn_dim, gpt2: n_inner)
    heads_attr: str = "num_attention_heads"
    kv_heads_attr: str | None = "num_key_value_heads"  # None: no GQA, one k/v head per query head
    # the config attribute stating head_dim on its own; None = head_dim is always hidden / heads,
    # so the standard config cannot express fewer heads (heads are then not prunable)
    head_dim_attr: str | None = "head_dim"
    # per-layer config lists, cut along with the decoder layers (e.g. sliding/full attention)
    per_layer_config: tuple[str, ...] = ("layer_types",)
    # config ints that are layer-index thresholds (qwen2/qwen3 `max_window_layers`: layers from
    # this index on use sliding windows), renumbered when layers are removed
    layer_index_config: tuple[str, ...] = ()
    notes: str = field(default="", compare=False)

    # ---- lookups -------------------------------------------------------------------------
    def decoder_layers(self, model: "nn.Module") -> "nn.ModuleList":
        return get_submodule(model, self.layers)

    def linear_paths(self) -> dict[str, str]:
        """Role -> layer-relative path for every linear projection of a decoder layer."""
        roles = {"q": self.q, "k": self.k, "v": self.v, "qkv": self.qkv, "o": self.o,
                 "gate": self.gate, "up": self.up, "gate_up": self.gate_up, "down": self.down}
        return {role: path for role, path in roles.items() if path is not None}

    def linears(self, layer: "nn.Module") -> dict[str, "nn.Module"]:
        """Role -> module for every linear projection of one decoder layer."""
        return {role: get_submodule(layer, path) for role, path in self.linear_paths().items()}

    def gated_mlp_act(self, layer: "nn.Module"):
        """The activation of a gated MLP, act(gate(x)) * up(x): the `act_fn` of the module holding
        the gate projection, or None (no separate gate, or no `act_fn` there)."""
        if self.gate is None or self.up is None:
            return None
        parent = self.gate.rsplit(".", 1)[0] if "." in self.gate else ""
        return getattr(get_submodule(layer, parent) if parent else layer, "act_fn", None)

    def layer_norms(self, layer: "nn.Module") -> dict[str, "nn.Module"]:
        return {path: get_submodule(layer, path) for path in self.norms}

    def embedding(self, model: "nn.Module") -> "nn.Module":
        return get_submodule(model, self.embed)

    def head(self, model: "nn.Module") -> "nn.Module":
        return get_submodule(model, self.lm_head)

    def norm(self, model: "nn.Module") -> "nn.Module":
        return get_submodule(model, self.final_norm)


_LLAMA_LIKE = dict(layers="model.layers", embed="model.embed_tokens", final_norm="model.norm")

ARCHS: dict[str, ArchSpec] = {
    spec.model_type: spec
    for spec in [
        ArchSpec("llama", **_LLAMA_LIKE),
        ArchSpec("mistral", **_LLAMA_LIKE),
        ArchSpec("qwen2", **_LLAMA_LIKE, layer_index_config=("max_window_layers",)),
        ArchSpec("qwen3", **_LLAMA_LIKE, layer_index_config=("max_window_layers",),
                 notes="q_norm/k_norm RMSNorms inside self_attn"),
        ArchSpec(
            "gemma3_text", **_LLAMA_LIKE,
            norms=("input_layernorm", "post_attention_layernorm",
                   "pre_feedforward_layernorm", "post_feedforward_layernorm"),
            mlp_in_norm="pre_feedforward_layernorm",
            notes="embeddings scaled by sqrt(hidden); q_norm/k_norm; norms use (1 + weight)",
        ),
        ArchSpec("phi3", **_LLAMA_LIKE, q=None, k=None, v=None, qkv="self_attn.qkv_proj",
                 gate=None, up=None, gate_up="mlp.gate_up_proj"),
        ArchSpec(
            "gpt2", layers="transformer.h", embed="transformer.wte", final_norm="transformer.ln_f",
            pos_embed="transformer.wpe", q=None, k=None, v=None, qkv="attn.c_attn", o="attn.c_proj",
            gate=None, up="mlp.c_fc", down="mlp.c_proj", norms=("ln_1", "ln_2"), conv1d=True,
            attn_in_norm="ln_1", mlp_in_norm="ln_2", mlp_foldable=False,  # GELU: not homogeneous
            n_layers_attr="n_layer", intermediate_attr="n_inner", heads_attr="n_head",
            kv_heads_attr=None, head_dim_attr=None,
        ),
        ArchSpec(
            "opt", layers="model.decoder.layers", embed="model.decoder.embed_tokens",
            final_norm="model.decoder.final_layer_norm", pos_embed="model.decoder.embed_positions",
            o="self_attn.out_proj", gate=None, up="fc1", down="fc2",
            norms=("self_attn_layer_norm", "final_layer_norm"),
            attn_in_norm="self_attn_layer_norm", mlp_in_norm="final_layer_norm",  # ReLU MLP
            intermediate_attr="ffn_dim", kv_heads_attr=None, head_dim_attr=None,
            notes="sizes with word_embed_proj_dim != hidden_size add project_in/project_out",
        ),
    ]
}

HOW_TO_ADD = ("to add one, write an ArchSpec entry in slmkit/models/arch.py (ARCHS) and a tiny "
              "config in slmkit/models/tiny.py (TINY_CONFIGS); tests/test_conformance.py then covers it")


def supported() -> list[str]:
    """The `model_type`s the adapter table covers, sorted."""
    return sorted(ARCHS)


def get_arch(model_or_type: "nn.Module | str") -> ArchSpec:
    """The adapter for a model (or a `model_type` string); a clear error for unknown ones."""
    if isinstance(model_or_type, str):
        model_type = model_or_type
    else:
        config = getattr(model_or_type, "config", None)
        model_type = getattr(config, "model_type", None) or type(model_or_type).__name__
    try:
        return ARCHS[model_type]
    except KeyError:
        raise SlmkitError(
            f"architecture {model_type!r} is not in slmkit's adapter table; "
            f"supported: {', '.join(supported())}. {HOW_TO_ADD}"
        ) from None


def get_submodule(root: "nn.Module", path: str) -> "nn.Module":
    try:
        return root.get_submodule(path)
    except AttributeError as e:
        raise SlmkitError(
            f"{type(root).__name__} has no submodule {path!r} ({e}); the adapter table entry "
            "for this architecture does not match this model"
        ) from None


# role groups whose linears read one input (fused by `slmkit.runtime.fuse`)
SHARED_INPUT_ROLES = (("q", "k", "v"), ("gate", "up"))


def shared_input_sites(model: "nn.Module") -> "list[list[nn.Module]]":
    """Per decoder layer, the linears of each `SHARED_INPUT_ROLES` group the model's
    architecture has; none for a model missing from the architecture table."""
    try:
        spec = get_arch(model)
    except SlmkitError:
        return []
    paths = spec.linear_paths()
    return [[get_submodule(layer, paths[r]) for r in roles if r in paths]
            for layer in spec.decoder_layers(model) for roles in SHARED_INPUT_ROLES]
