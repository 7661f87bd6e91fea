"""`where_it_loads` says which tools load each kind of output, and transformers does exactly what it
says: every "yes" loads with `AutoModelForCausalLM.from_pretrained`, every "no" fails there."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from slmkit.compress import RTNConfig, quantize
from slmkit.errors import SlmkitError
from slmkit.models import save, tiny
from slmkit.models.gguf_export import export_gguf
from slmkit.models.loads import where_it_loads

CASES = {
    "float": None,
    "int4 symmetric": RTNConfig(bits=4, group_size=32, symmetric=True),
    "int4 asymmetric": RTNConfig(bits=4, group_size=32, symmetric=False),
    "4-bit embeddings": RTNConfig(bits=4, group_size=32, symmetric=True, embed_bits=4),
    "q4_k grid": RTNConfig(gguf_type="q4_0", overrides={"down": {"gguf_type": "q4_k"}}),
}


@pytest.mark.parametrize("case", CASES)
def test_what_it_says_about_transformers_is_what_transformers_does(case, tmp_path):
    pytest.importorskip("compressed_tensors")
    model = tiny.tiny_model("llama", seed=2, intermediate_size=256)
    if CASES[case] is not None:
        quantize(model, CASES[case])
    out = save(model, tiny.tiny_tokenizer(), tmp_path / "m")
    said = where_it_loads(out)
    assert said["slmkit"] == "yes"
    if said["transformers"].startswith("yes"):
        AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    else:
        assert case in ("int4 asymmetric", "4-bit embeddings", "q4_k grid")
        with pytest.raises(Exception):
            AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert said["transformers"].startswith("yes") == (case in ("float", "int4 symmetric"))
    assert ("asymmetric" in said["transformers"]) == (case in ("int4 asymmetric", "4-bit embeddings"))  # the table is asymmetric


def test_a_gguf_file_loads_in_llama_cpp_and_other_paths_are_refused(tmp_path):
    model = tiny.tiny_model("llama", seed=2)
    path = export_gguf(model, tiny.tiny_tokenizer(), tmp_path / "m.gguf", "q8_0")
    assert where_it_loads(path)["llama.cpp"] == "yes"
    (tmp_path / "x.bin").write_bytes(b"nope")
    with pytest.raises(SlmkitError, match="neither a model folder nor a GGUF"):
        where_it_loads(tmp_path / "x.bin")
    with pytest.raises(SlmkitError, match="no config.json"):
        where_it_loads(tmp_path)
