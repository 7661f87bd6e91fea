"""Calibration mixes (spec parsing, row allocation, building) and self-generated calibration text."""

from __future__ import annotations

import copy
import math
import random

import pytest
import torch
from fixed_models import biased_model

from slmkit.data import TextData, calib, embedded_text, token_stream
from slmkit.data.calib import CalibSpec, allocate_rows
from slmkit.errors import SlmkitError
from slmkit.generate.calibration import (
    build_calibration,
    build_calibration_with_provenance,
    build_calibration_with_targets,
)
from slmkit.generate.selfgen import (
    _special_ids,
    generate_calibration_text,
    generate_calibration_text_with_provenance,
    generate_with_teacher_targets,
    model_fingerprint,
)
from slmkit.models.tiny import tiny_model

T1, T2 = 100, 200  # ordinary token ids a biased model prefers


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models decode token by token; on a shared 2-core machine one thread is far faster."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class ForwardCounter:
    """Counts forward calls of a model through a hook (the model itself is not replaced)."""

    def __init__(self, model):
        self.calls = 0
        self.handle = model.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.calls += 1


# ---- spec parsing --------------------------------------------------------------------------------
def test_spec_weights_default_to_one_and_are_normalised():
    assert CalibSpec.parse("embedded").sources == (calib.CalibSource("embedded", 1.0),)
    spec = CalibSpec.parse(" a.txt@1 , self@3 ")
    assert [s.source for s in spec.sources] == ["a.txt", "self"]
    assert [s.weight for s in spec.sources] == pytest.approx([0.25, 0.75])
    spec = CalibSpec.parse("embedded,self@2,x.jsonl")
    assert [s.weight for s in spec.sources] == pytest.approx([0.25, 0.5, 0.25])
    assert sum(s.weight for s in spec.sources) == pytest.approx(1.0)
    assert spec.needs_model and not CalibSpec.parse("embedded").needs_model


def test_spec_keeps_colons_of_hf_sources_and_round_trips():
    spec = CalibSpec.parse("hf:wikitext:wikitext-2-raw-v1@1,embedded@3")
    assert spec.sources[0].source == "hf:wikitext:wikitext-2-raw-v1"
    again = CalibSpec.parse(str(spec))
    assert [s.source for s in again.sources] == [s.source for s in spec.sources]
    assert [s.weight for s in again.sources] == pytest.approx([s.weight for s in spec.sources])
    assert CalibSpec.parse(spec) is spec


@pytest.mark.parametrize("text, message", [
    ("", "empty"), ("   ", "empty"), ("embedded,,self", "empty entry"),
    ("embedded@", "not a number"), ("embedded@abc", "not a number"), ("@0.5", "no source"),
    ("embedded@0", "> 0"), ("embedded@-1", "> 0"), ("self@nan", "> 0"), ("self@inf", "> 0"),
    ("embedded,embedded@2", "twice"), ("default", "evaluation text"),
    ("default:eval@1", "evaluation text"),
])
def test_spec_errors(text, message):
    with pytest.raises(SlmkitError, match=message):
        CalibSpec.parse(text)


# ---- allocation ----------------------------------------------------------------------------------
def test_allocation_sums_to_n_and_stays_within_one_row_of_each_quota():
    rng = random.Random(0)
    for _ in range(300):
        k = rng.randint(1, 6)
        weights = [rng.uniform(0.05, 5) for _ in range(k)]
        n = rng.randint(1, 300)
        rows = allocate_rows(weights, n)
        assert sum(rows) == n and len(rows) == k
        quotas = [n * w / sum(weights) for w in weights]
        if min(quotas) >= 1:  # no minimum-one adjustment needed: pure largest remainder
            assert all(math.floor(q) <= r <= math.ceil(q) for q, r in zip(quotas, rows))
        if n >= k:
            assert min(rows) >= 1


def test_allocation_gives_every_source_a_row_when_n_allows():
    rows = allocate_rows([0.98, 0.01, 0.01], 10)
    assert rows[1] == rows[2] == 1 and sum(rows) == 10
    assert sum(allocate_rows([1, 1, 1], 2)) == 2  # n < sources: someone gets none


# ---- building mixes from text ----------------------------------------------------------------------
def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.fixture
def two_texts(tmp_path):
    """Two files with disjoint vocabularies (digits vs letters), long enough for many rows."""
    rng = random.Random(1)
    digits = " ".join(str(rng.randint(0, 9999)) for _ in range(600))
    letters = " ".join("".join(rng.choice("qwxzjk") for _ in range(5)) for _ in range(600))
    return _write(tmp_path / "digits.txt", digits), _write(tmp_path / "letters.txt", letters)


def test_mix_follows_weights_and_records_provenance(tiny_tok, two_texts):
    a, b = two_texts
    ids, prov = build_calibration_with_provenance(None, tiny_tok, f"{a}@3,{b}@1", n=8, length=16)
    assert ids.shape == (8, 16) and ids.dtype == torch.long
    from slmkit.data.sources import text_files

    a_ids = set(token_stream(tiny_tok, text_files(a)).tolist())
    b_ids = set(token_stream(tiny_tok, text_files(b)).tolist())
    from_a = sum(set(r.tolist()) <= a_ids and not set(r.tolist()) <= b_ids for r in ids)
    from_b = sum(set(r.tolist()) <= b_ids and not set(r.tolist()) <= a_ids for r in ids)
    assert (from_a, from_b) == (6, 2)
    assert [s["rows"] for s in prov["sources"]] == [6, 2]
    assert [s["tokens"] for s in prov["sources"]] == [6 * 16, 2 * 16]
    assert prov["sources"][0]["text"]["sha256"] == text_files(a).sha256
    assert prov["n"] == 8 and prov["length"] == 16 and prov["spec"].endswith("@0.25")
    # rows are shuffled: the 6 digit rows are not simply the first 6
    order = [set(r.tolist()) <= a_ids for r in ids]
    assert order != [True] * 6 + [False] * 2


def test_mix_is_deterministic_per_seed(tiny_tok, two_texts):
    a, b = two_texts
    spec = f"{a}@1,{b}@1"
    one = build_calibration(None, tiny_tok, spec, n=6, length=16, seed=3)
    assert torch.equal(one, build_calibration(None, tiny_tok, spec, n=6, length=16, seed=3))
    assert not torch.equal(one, build_calibration(None, tiny_tok, spec, n=6, length=16, seed=4))


def test_embedded_keyword_is_the_calibration_part():
    assert calib._load_source("embedded", "text", "train").sha256 == embedded_text("calib").sha256


def test_mix_errors(tiny_tok, tmp_path, two_texts):
    a, _ = two_texts
    short = _write(tmp_path / "short.txt", "just a few words")
    n_short = token_stream(tiny_tok, TextData("s", ["just a few words"])).numel()
    with pytest.raises(SlmkitError, match=rf"short.txt.*has {n_short} tokens.*64"):
        build_calibration(None, tiny_tok, f"{a},{short}", n=4, length=64)
    with pytest.raises(SlmkitError, match="unknown calibration source 'no/such.txt'"):
        build_calibration(None, tiny_tok, "no/such.txt", n=4, length=16)
    for n, length in [(0, 16), (4, 1), (-1, 16)]:
        with pytest.raises(SlmkitError, match="n >= 1 and length >= 2"):
            build_calibration(None, tiny_tok, a, n=n, length=length)
    with pytest.raises(SlmkitError, match="pass the model"):
        build_calibration(None, tiny_tok, "self", n=4, length=16)
    model = tiny_model("llama")  # context 256
    with pytest.raises(SlmkitError, match="300 tokens but the model's context is 256"):
        build_calibration(model, tiny_tok, a, n=4, length=300)


def test_text_errors_come_before_slow_generation(tiny_tok, tmp_path):
    short = _write(tmp_path / "short.txt", "tiny")
    model = tiny_model("llama")
    counter = ForwardCounter(model)
    with pytest.raises(SlmkitError, match="tokens"):
        build_calibration(model, tiny_tok, f"self@9,{short}@1", n=10, length=32, cache_dir=tmp_path)
    assert counter.calls == 0


def test_mix_with_self_generated_rows(tiny_tok, tmp_path, two_texts):
    a, _ = two_texts
    model = biased_model({T2: 30.0})
    ids, prov = build_calibration_with_provenance(model, tiny_tok, f"self@1,{a}@1", n=6, length=12,
                                                  cache_dir=tmp_path)
    assert ids.shape == (6, 12)
    self_rows = [r for r in ids if r[0] == tiny_tok.bos_token_id and (r[1:] == T2).all()]
    assert len(self_rows) == 3
    gen = prov["sources"][0]["generation"]
    assert gen["n"] == 3 and gen["length"] == 12 and gen["model_fingerprint"] == model_fingerprint(model)


# ---- self-generated text ---------------------------------------------------------------------------
def test_selfgen_shape_determinism_and_seeds(tiny_tok):
    model = tiny_model("llama")
    kw = {"cache": False, "batch_size": 3}
    ids = generate_calibration_text(model, tiny_tok, 5, 24, seed=0, **kw)
    assert ids.shape == (5, 24) and ids.dtype == torch.long
    assert (ids[:, 0] == tiny_tok.bos_token_id).all()
    assert torch.equal(ids, generate_calibration_text(model, tiny_tok, 5, 24, seed=0, **kw))
    other = generate_calibration_text(model, tiny_tok, 5, 24, seed=1, **kw)
    assert not torch.equal(ids, other)
    assert len({tuple(r.tolist()) for r in ids}) == 5  # rows differ from each other too


def test_selfgen_is_cached_and_keyed_by_weights(tiny_tok, tmp_path):
    model = tiny_model("llama")
    counter = ForwardCounter(model)
    ids, rec = generate_calibration_text_with_provenance(model, tiny_tok, 4, 16, cache_dir=tmp_path)
    assert rec["cache"] == "miss" and counter.calls == 15  # one forward per sampled position
    again, rec2 = generate_calibration_text_with_provenance(model, tiny_tok, 4, 16, cache_dir=tmp_path)
    assert rec2["cache"] == "hit" and counter.calls == 15 and torch.equal(ids, again)
    assert len(list(tmp_path.glob("*.pt"))) == 1 and not list(tmp_path.glob("*.tmp"))
    (tmp_path / f"{rec['cache_path'].rsplit('/', 1)[-1]}").write_bytes(b"truncated")
    redone, rec_redone = generate_calibration_text_with_provenance(model, tiny_tok, 4, 16,
                                                                   cache_dir=tmp_path)
    assert rec_redone["cache"] == "miss" and torch.equal(redone, ids)  # a broken file is remade
    counter.calls = 15
    with torch.no_grad():  # a different model must not reuse the cached rows
        model.model.layers[0].mlp.down_proj.weight.mul_(2.0)
    _, rec3 = generate_calibration_text_with_provenance(model, tiny_tok, 4, 16, cache_dir=tmp_path)
    assert rec3["cache"] == "miss" and counter.calls == 30
    _, rec4 = generate_calibration_text_with_provenance(model, tiny_tok, 4, 16, seed=5,
                                                        cache_dir=tmp_path)
    assert rec4["cache"] == "miss"  # the seed is part of the key


def test_selfgen_samples_the_models_distribution(tiny_tok):
    # logits: T2 = T1 + ln 3, both far above the rest -> p(T2) ~ 3/4 at temperature 1
    model = biased_model({T1: 10.0, T2: 10.0 + math.log(3)})
    kw = {"cache": False, "top_p": 1.0, "loop_window": 0}  # two tokens only would count as a loop
    ids = generate_calibration_text(model, tiny_tok, 8, 64, temperature=1.0, **kw)[:, 1:]
    assert ((ids == T1) | (ids == T2)).float().mean() > 0.97
    assert 0.68 < (ids == T2).float().mean() < 0.82
    # temperature 0.5 squares the odds: p(T2) ~ 9/10
    cold = generate_calibration_text(model, tiny_tok, 8, 64, temperature=0.5, **kw)[:, 1:]
    assert 0.85 < (cold == T2).float().mean() < 0.95
    # top-p 0.5 keeps only the most likely token
    nucleus = generate_calibration_text(model, tiny_tok, 4, 32, cache=False, top_p=0.5,
                                        loop_window=0)[:, 1:]
    assert (nucleus == T2).all()


def test_selfgen_temperature_schedule_runs_from_start_to_end(tiny_tok):
    model = biased_model({T1: 10.0, T2: 10.0 + math.log(3)})
    ids = generate_calibration_text(model, tiny_tok, 32, 40, temperature=(0.05, 1.0),
                                    temperature_steps=20, top_p=1.0, loop_window=0, cache=False)
    assert (ids[:, 1:4] == T2).all()                     # t ~ 0.05: nearly greedy
    assert (ids[:, 22:] == T2).float().mean() < 0.85     # t = 1: T1 comes back


def test_selfgen_restarts_with_bos_after_eos(tiny_tok):
    eos, bos = tiny_tok.eos_token_id, tiny_tok.bos_token_id
    model = biased_model({eos: 30.0})
    ids = generate_calibration_text(model, tiny_tok, 3, 11, cache=False)
    assert ids.shape == (3, 11)
    assert (ids[:, 0::2] == bos).all() and (ids[:, 1::2] == eos).all()


def test_selfgen_without_bos_starts_from_the_models_first_token(tiny_tok):
    tok = copy.deepcopy(tiny_tok)
    tok.bos_token = None
    assert tok.bos_token_id is None
    model = biased_model({T2: 30.0})
    ids = generate_calibration_text(model, tok, 2, 8, cache=False)
    assert ids.shape == (2, 8) and (ids == T2).all()  # the EOS prompt is not part of the rows


def test_selfgen_min_p_drops_tokens_far_below_the_top_one(tiny_tok):
    # p(T1) / p(T2) = 1/3: min-p 0.25 keeps T1, min-p 0.5 drops it
    model = biased_model({T1: 10.0, T2: 10.0 + math.log(3)})
    kw = {"cache": False, "top_p": 1.0, "temperature": 1.0, "loop_window": 0}
    kept = generate_calibration_text(model, tiny_tok, 8, 32, min_p=0.25, **kw)[:, 1:]
    assert 0.15 < (kept == T1).float().mean() < 0.35
    dropped = generate_calibration_text(model, tiny_tok, 8, 32, min_p=0.5, **kw)[:, 1:]
    assert (dropped == T2).all()
    # without min-p the 254 other tokens (logit 0) share ~1e-4 of the mass; min-p removes them all
    flat = biased_model({T1: 3.0, T2: 3.0})  # others at 0: p(other) ~ e^-3 / (2 + 254 e^-3) each
    wide = generate_calibration_text(flat, tiny_tok, 8, 32, min_p=0.0, **kw)[:, 1:]
    narrow = generate_calibration_text(flat, tiny_tok, 8, 32, min_p=0.1, **kw)[:, 1:]
    assert ((wide != T1) & (wide != T2)).any()
    assert ((narrow == T1) | (narrow == T2)).all()


def test_selfgen_ends_a_looping_document_and_starts_a_new_one(tiny_tok):
    bos = tiny_tok.bos_token_id
    model = biased_model({T2: 30.0})  # writes T2 forever
    off = generate_calibration_text(model, tiny_tok, 2, 80, cache=False, loop_window=0)
    assert (off[:, 1:] == T2).all()
    ids, rec = generate_calibration_text_with_provenance(model, tiny_tok, 2, 80, cache=False,
                                                         loop_window=10, loop_distinct=2)
    # the 10th T2 in a row would complete a 10-token window of one kind: a BOS comes instead
    starts = [i for i, t in enumerate(ids[0].tolist()) if t == bos]
    assert starts == list(range(0, 80, 10)) and (ids[1] == ids[0]).all()
    assert rec["loop_restarts"] == 2 * 7 and rec["loop_window"] == 10
    # a varied document is left alone: four equally likely tokens rarely fill 16 with 2 kinds
    four = biased_model({T1: 10.0, T2: 10.0, T1 + 1: 10.0, T2 + 1: 10.0})
    mixed = generate_calibration_text(four, tiny_tok, 4, 64, cache=False, loop_window=16,
                                      loop_distinct=2, temperature=1.0, top_p=1.0)
    assert (mixed[:, 1:] != bos).all()


def test_selfgen_without_bos_ends_a_loop_with_the_separator(tiny_tok):
    tok = copy.deepcopy(tiny_tok)
    tok.bos_token = None
    model = biased_model({T2: 30.0})
    ids = generate_calibration_text(model, tok, 1, 40, cache=False, loop_window=8, loop_distinct=1)
    sep = min(_special_ids(model, tok)[1])
    seps = [i for i, t in enumerate(ids[0].tolist()) if t == sep]
    assert seps == [7, 15, 23, 31, 39]  # a window of 8 T2 ends with the separator instead
    assert (ids[0][[i for i in range(40) if i not in seps]] == T2).all()


def test_teacher_targets_are_the_models_own_next_token_distributions(tiny_tok, tmp_path):
    """generate_with_teacher_targets writes the same tokens as plain self-generation and, at each
    position, the model's top-k next-token distribution at temperature 1 (what a full forward of
    the row gives), whatever the sampling temperature; cached apart from plain rows."""
    model = tiny_model("llama", seed=4)
    kw = {"seed": 3, "batch_size": 2, "temperature": (1.5, 1.0), "cache_dir": tmp_path}
    plain = generate_calibration_text(model, tiny_tok, 3, 20, **kw)
    ids, soft_ids, soft_probs, rec = generate_with_teacher_targets(model, tiny_tok, 3, 20, 5, **kw)
    assert torch.equal(ids, plain) and rec["teacher_topk"] == 5 and rec["cache"] == "miss"
    assert soft_ids.shape == soft_probs.shape == (3, 20, 5) and soft_ids.dtype == torch.int32
    with torch.no_grad():
        probs = torch.softmax(model(ids).logits.float(), -1)
    top = probs.topk(5, dim=-1)
    torch.testing.assert_close(soft_probs[:, :-1], top.values[:, :-1], rtol=1e-4, atol=1e-6)
    assert torch.equal(soft_ids[:, :-1].long(), top.indices[:, :-1])
    assert (soft_probs[:, -1] == 0).all()                 # nothing predicts past the row
    again = generate_with_teacher_targets(model, tiny_tok, 3, 20, 5, **kw)
    assert again[3]["cache"] == "hit" and all(torch.equal(a, b) for a, b in zip(again[:3], (ids, soft_ids, soft_probs)))
    assert generate_calibration_text_with_provenance(model, tiny_tok, 3, 20, **kw)[1]["cache"] == "hit"
    with pytest.raises(SlmkitError, match="topk"):
        generate_with_teacher_targets(model, tiny_tok, 3, 20, 0, **kw)
    with pytest.raises(SlmkitError, match="larger than the model's vocabulary"):
        generate_with_teacher_targets(model, tiny_tok, 3, 20, 10 ** 6, **kw)


def test_teacher_targets_are_zero_where_a_token_was_forced(tiny_tok):
    """After EOS the sampler forces BOS, and a loop restart forces BOS: those positions carry no
    soft target (the model did not predict the forced token)."""
    eos, bos = tiny_tok.eos_token_id, tiny_tok.bos_token_id
    ids, _, probs, _ = generate_with_teacher_targets(biased_model({eos: 30.0}), tiny_tok, 2, 9, 3, cache=False)
    assert (ids[:, 0::2] == bos).all()
    assert (probs[:, 1::2].sum(-1) == 0).all()           # the prediction of each forced BOS
    assert (probs[:, 0:-1:2].sum(-1) > 0.99).all()       # BOS -> EOS was sampled
    ids, _, probs, _ = generate_with_teacher_targets(biased_model({T2: 30.0}), tiny_tok, 1, 30, 2,
                                                     cache=False, loop_window=10, loop_distinct=2)
    forced = [i - 1 for i, t in enumerate(ids[0].tolist()) if t == bos and i > 0]
    assert forced == [9, 19] and (probs[0, forced].sum(-1) == 0).all()
    assert (probs[0, [i for i in range(29) if i not in forced]].sum(-1) > 0.99).all()


def test_calibration_with_targets_keeps_the_rows_and_zeroes_text_rows(tiny_tok, tmp_path, two_texts):
    a, _ = two_texts
    model = biased_model({T1: 10.0, T2: 10.0 + math.log(3)})
    spec, kw = f"self@1,{a}@1", {"n": 6, "length": 12, "cache_dir": tmp_path}
    ids, prov = build_calibration_with_provenance(model, tiny_tok, spec, **kw)
    ids2, soft_ids, soft_probs, prov2 = build_calibration_with_targets(model, tiny_tok, spec, topk=4, **kw)
    assert torch.equal(ids, ids2) and prov["sha256"] == prov2["sha256"]
    self_rows = (ids[:, 1:] == T1) | (ids[:, 1:] == T2)
    is_self = self_rows.all(1)
    assert int(is_self.sum()) == 3
    assert (soft_probs[~is_self] == 0).all()
    assert (soft_probs[is_self, :-1, 0] > 0.7).all() and set(soft_ids[is_self, :-1, 0].unique().tolist()) == {T2}


def test_selfgen_errors(tiny_tok):
    model = tiny_model("llama")
    for kwargs, message in [({"n": 0}, "n >= 1"), ({"length": 1}, "length >= 2"),
                            ({"length": 257}, "context is 256"),
                            ({"temperature": 0.0}, "temperature"),
                            ({"temperature": (1.0, -1.0)}, "temperature"),
                            ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"),
                            ({"min_p": 1.0}, "min_p"), ({"min_p": -0.1}, "min_p"),
                            ({"loop_window": 1}, "loop_window"),
                            ({"loop_window": 8, "loop_distinct": 8}, "loop_distinct"),
                            ({"batch_size": 0}, "batch_size")]:
        args = {"n": 2, "length": 8, **kwargs}
        with pytest.raises(SlmkitError, match=message):
            generate_calibration_text(model, tiny_tok, cache=False, **args)
