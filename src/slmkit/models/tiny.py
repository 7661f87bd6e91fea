"""Tiny randomly initialised models built from real configs, and a tiny tokenizer (for tests).

Each entry of `TINY_CONFIGS` is a real transformers config class at toy size (2 layers, hidden 64),
so a test exercises exactly the module structure of the full-size architecture in milliseconds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from slmkit.errors import SlmkitError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

TINY_VOCAB = 512
_COMMON = dict(vocab_size=TINY_VOCAB, bos_token_id=1, eos_token_id=2, pad_token_id=0,
               tie_word_embeddings=False)
_DECODER = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)

# model_type -> (transformers config class name, kwargs)
TINY_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", {**_DECODER}),
    "mistral": ("MistralConfig", {**_DECODER, "sliding_window": None}),
    "qwen2": ("Qwen2Config", {**_DECODER}),
    "qwen3": ("Qwen3Config", {**_DECODER, "head_dim": 16}),
    "gemma3_text": ("Gemma3TextConfig", {**_DECODER, "head_dim": 16, "sliding_window": 32,
                                         "layer_types": ["sliding_attention", "full_attention"]}),
    "phi3": ("Phi3Config", {**_DECODER, "pad_token_id": 0}),
    "gpt2": ("GPT2Config", dict(n_embd=64, n_layer=2, n_head=4, n_positions=256)),
    "opt": ("OPTConfig", dict(hidden_size=64, ffn_dim=128, num_hidden_layers=2,
                              num_attention_heads=4, max_position_embeddings=256,
                              word_embed_proj_dim=64)),
}


def tiny_config(model_type: str, **overrides: Any):
    import transformers

    try:
        cls_name, kwargs = TINY_CONFIGS[model_type]
    except KeyError:
        raise SlmkitError(f"no tiny config for {model_type!r}; have: {', '.join(TINY_CONFIGS)}") from None
    return getattr(transformers, cls_name)(**{**_COMMON, **kwargs, **overrides})


def tiny_model(model_type: str, seed: int = 0, **overrides: Any) -> "PreTrainedModel":
    """A randomly initialised causal LM of `model_type` at toy size, in float32, eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type, **overrides),
                                             dtype=torch.float32)
    return model.eval()


def tiny_tokenizer(vocab_size: int = TINY_VOCAB) -> "PreTrainedTokenizerFast":
    """A byte-level BPE tokenizer trained (deterministically, in ~1 s) on the embedded text."""
    from pydoc_data import topics

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>"]  # ids 0, 1, 2 as in _COMMON
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([topics.topics[k] for k in sorted(topics.topics)[::2]], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", model_max_length=256)
