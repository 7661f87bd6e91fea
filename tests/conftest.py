"""Shared fixtures: tiny random models of every adapter architecture, a tiny tokenizer, the real
default model (tests marked `slow`). Nothing here touches the network: HF_HUB_OFFLINE=1."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from slmkit.models import tiny  # noqa: E402


@pytest.fixture(scope="session")
def tiny_tok():
    """A 512-token byte-level BPE tokenizer (ids: 0 pad, 1 <s>, 2 </s>)."""
    return tiny.tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, tiny_tok):
    """`tiny_dir("llama")` -> a saved HF folder of a tiny random model (cached per type)."""
    from slmkit.models import save

    made: dict[str, object] = {}

    def make(model_type: str = "llama"):
        if model_type not in made:
            out = tmp_path_factory.mktemp("models") / model_type
            made[model_type] = save(tiny.tiny_model(model_type), tiny_tok, out)
        return made[model_type]

    return make


@pytest.fixture(scope="session")
def default_model():
    """The real embedded default model (SmolLM2-135M-Instruct) in float32."""
    from slmkit.models import load

    return load("default", "float32")


@pytest.fixture(scope="module")
def model_tok(tiny_tok):
    """A tiny random llama and the tiny tokenizer with a chat template (the serve tests)."""
    from serve_fixtures import chat_model

    return chat_model(tiny_tok)


@pytest.fixture(scope="module")
def server(model_tok):
    """A real `slmkit serve` app of `model_tok` as "tiny" on 127.0.0.1 -> its base URL."""
    from serve_fixtures import serving, worker
    from slmkit.serve import Served

    model, tok = model_tok
    with serving({"tiny": Served(worker(model, tok), model, tok)}) as url:
        yield url
