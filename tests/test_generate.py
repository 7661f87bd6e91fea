"""The step-level engine: batched rows compute what they would alone; sequences join and leave at
any step; sampling, stop rules and log-probabilities behave as documented."""

from __future__ import annotations

import pytest
import torch

from slmkit.errors import SlmkitError
from slmkit.generate import Engine, Sampling, generate
from slmkit.generate.sampling import shape_logits
from slmkit.models.tiny import tiny_model

ARCHS = ["llama", "qwen2", "gemma3_text", "gpt2"]
GEN = torch.Generator().manual_seed(0)
PROMPTS = [torch.randint(3, 500, (n,), generator=GEN).tolist() for n in (3, 9, 40)]


def greedy(n: int = 10, **kw) -> Sampling:
    return Sampling(max_new_tokens=n, ignore_eos=True, **kw)


def hf_greedy(model, prompt: list[int], n: int) -> list[int]:
    out = model.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                         pad_token_id=0)
    return out[0, len(prompt):].tolist()


@pytest.fixture(scope="module", params=ARCHS)
def model(request):
    return tiny_model(request.param)


def test_batched_greedy_equals_transformers_generate_alone(model, tiny_tok):
    done = generate(model, tiny_tok, PROMPTS, greedy())
    for prompt, c in zip(PROMPTS, done):
        assert c.token_ids == hf_greedy(model, prompt, 10), f"prompt of {len(prompt)} tokens"
        assert c.finish_reason == "length"


def test_a_sequence_joining_mid_flight_and_one_removed_leave_the_others_unchanged(model, tiny_tok):
    alone = [c.token_ids for c in generate(model, tiny_tok, PROMPTS, greedy(12), max_batch=1)]
    engine = Engine(model, tiny_tok)
    a = engine.add(PROMPTS[0], greedy(12))
    doomed = engine.add(PROMPTS[1], greedy(12))
    for _ in range(3):
        engine.step()
    b = engine.add(PROMPTS[2], greedy(12))   # longer than the running rows (and than gemma's window)
    engine.step()
    aborted = engine.remove(doomed)
    assert aborted.finish_reason == "abort" and len(aborted.token_ids) == 4
    engine.run()
    assert engine.result(a).token_ids == alone[0]
    assert engine.result(b).token_ids == alone[2]
    assert engine.result(doomed) is None, "a removed sequence's completion is handed out once"


def test_a_seeded_sample_does_not_depend_on_its_batch(model, tiny_tok):
    s = Sampling(max_new_tokens=8, temperature=1.0, top_p=0.9, seed=7, ignore_eos=True)
    alone = generate(model, tiny_tok, [PROMPTS[1]], s)[0].token_ids
    engine = Engine(model, tiny_tok)
    others = [engine.add(p, Sampling(max_new_tokens=5, temperature=1.0, ignore_eos=True)) for p in PROMPTS]
    mine = engine.add(PROMPTS[1], s)
    engine.run()
    assert engine.result(mine).token_ids == alone
    assert all(engine.result(o) is not None for o in others)


def test_logprobs_are_the_models_own(tiny_tok):
    model = tiny_model("llama")
    c = generate(model, tiny_tok, [PROMPTS[1]], greedy(6, logprobs=3))[0]
    ids = torch.tensor([PROMPTS[1] + c.token_ids])
    with torch.inference_mode():
        logp = torch.log_softmax(model(ids).logits[0].float(), -1)
    n = len(PROMPTS[1])
    for i, (tok, lp, top) in enumerate(zip(c.token_ids, c.logprobs, c.top_logprobs)):
        row = logp[n - 1 + i]
        assert lp == pytest.approx(float(row[tok]), abs=1e-4)
        assert [t for t, _ in top] == row.topk(3).indices.tolist()
        assert top[0][0] == tok, "greedy picks the top token"


def test_stop_strings_tokens_and_eos(tiny_tok):
    model = tiny_model("llama")
    free = generate(model, tiny_tok, [PROMPTS[0]], greedy(8))[0]
    third = tiny_tok.decode(free.token_ids[:3], skip_special_tokens=True)
    cut = generate(model, tiny_tok, [PROMPTS[0]], greedy(8, stop=(third[-2:],)))[0]
    assert cut.finish_reason == "stop" and len(cut.token_ids) <= 3
    assert third[-2:] not in cut.text and free.text.startswith(cut.text)
    by_id = generate(model, tiny_tok, [PROMPTS[0]], greedy(8, stop_token_ids=(free.token_ids[1],)))[0]
    assert by_id.token_ids == free.token_ids[:2] and by_id.finish_reason == "stop"
    engine = Engine(model, tiny_tok)
    engine.eos = {free.token_ids[0]}
    sid = engine.add(PROMPTS[0], Sampling(max_new_tokens=8))
    engine.run()
    assert engine.result(sid).token_ids == free.token_ids[:1]


def test_top_k_one_and_a_tiny_top_p_are_greedy(tiny_tok):
    model = tiny_model("qwen2")
    want = generate(model, tiny_tok, PROMPTS, greedy())
    for s in (greedy(temperature=1.5, top_k=1, seed=1), greedy(temperature=1.5, top_p=1e-6, seed=1)):
        got = generate(model, tiny_tok, PROMPTS, s)
        assert [c.token_ids for c in got] == [c.token_ids for c in want]


@pytest.mark.parametrize("scale", [8.0, 1.0, 0.01])        # peaked, moderate, nearly flat
def test_the_nucleus_is_the_one_a_full_sort_keeps(scale):
    """Top-p over a 50k vocabulary keeps exactly the tokens a full descending sort keeps, whether
    the nucleus is a few tokens or nearly all of them."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50_000, generator=g) * scale
    for p in (0.1, 0.5, 0.9, 0.99):
        probs = torch.softmax(logits, -1)
        ranked, order = torch.sort(probs, descending=True)
        want = torch.zeros_like(logits, dtype=torch.bool)
        want[order[(ranked.cumsum(-1) - ranked) < p]] = True
        got = shape_logits(logits, Sampling(temperature=1.0, top_p=p), None).isfinite()
        assert torch.equal(got, want), (scale, p, int(got.sum()), int(want.sum()))


def test_shape_logits_keeps_the_nucleus_and_penalises_repeats():
    logits = torch.log(torch.tensor([0.5, 0.25, 0.15, 0.1]))
    kept = shape_logits(logits, Sampling(temperature=1.0, top_p=0.7), None).isfinite()
    assert kept.tolist() == [True, True, False, False]     # 0.5 < 0.7 <= 0.75
    kept = shape_logits(logits, Sampling(temperature=1.0, top_p=0.75), None).isfinite()
    assert kept.tolist() == [True, True, False, False]
    kept = shape_logits(logits, Sampling(temperature=1.0, top_k=3), None).isfinite()
    assert kept.tolist() == [True, True, True, False]
    raw = torch.tensor([2.0, -2.0, 1.0])
    pen = shape_logits(raw, Sampling(repetition_penalty=2.0), torch.tensor([0, 1]))
    assert pen.tolist() == [1.0, -4.0, 1.0]


@pytest.mark.parametrize("bad", [dict(max_new_tokens=0), dict(temperature=-1), dict(top_p=0),
                                 dict(top_p=1.5), dict(top_k=-1), dict(repetition_penalty=0),
                                 dict(logprobs=-2)])
def test_bad_sampling_settings_are_refused(bad):
    with pytest.raises(SlmkitError):
        Sampling(**bad)


def test_empty_prompt_and_stop_strings_without_tokenizer_are_refused():
    engine = Engine(tiny_model("llama"))
    with pytest.raises(SlmkitError, match="at least one token"):
        engine.add([])
    with pytest.raises(SlmkitError, match="tokenizer"):
        engine.add([1, 2], Sampling(stop=("x",)))


def test_a_stop_string_late_in_a_long_text_cuts_at_its_first_occurrence(tiny_tok):
    model = tiny_model("llama")
    free = generate(model, tiny_tok, [PROMPTS[1]], greedy(60))[0]
    late = tiny_tok.decode(free.token_ids[:50], skip_special_tokens=True)
    stop = late[-6:]                                   # may span several tokens
    first = free.text.find(stop)
    cut = generate(model, tiny_tok, [PROMPTS[1]], greedy(60, stop=(stop,)))[0]
    assert cut.finish_reason == "stop" and cut.text == free.text[:first]
    assert cut.token_ids == free.token_ids[:len(cut.token_ids)] and len(cut.token_ids) <= 50


def test_a_picker_chooses_for_all_rows_and_logprobs_stay_the_models(tiny_tok):
    model = tiny_model("qwen2")
    calls = []

    def picker(logits, seqs):
        calls.append((logits.shape[0], [len(s.token_ids) for s in seqs]))
        return [7 + i for i in range(logits.shape[0])]

    engine = Engine(model, tiny_tok, picker=picker)
    ids = [engine.add(p, greedy(3, logprobs=0)) for p in PROMPTS[:2]]
    engine.run()
    done = [engine.result(i) for i in ids]
    assert [c.token_ids for c in done] == [[7, 7, 7], [8, 8, 8]]
    assert calls == [(2, [0, 0]), (2, [1, 1]), (2, [2, 2])]
    logits = model(torch.tensor([PROMPTS[0] + [7, 7]])).logits[0, -3:].float()
    want = torch.log_softmax(logits, -1)[:, 7]
    assert torch.allclose(torch.tensor(done[0].logprobs), want, atol=1e-4)


def test_a_long_prompt_goes_in_chunks_while_the_others_keep_decoding(model, tiny_tok):
    long = torch.randint(3, 500, (50,), generator=torch.Generator().manual_seed(1)).tolist()
    alone = [c.token_ids for c in generate(model, tiny_tok, [PROMPTS[0], long], greedy(12), max_batch=1)]
    engine = Engine(model, tiny_tok, prefill_chunk=8)
    a = engine.add(PROMPTS[0], greedy(12))
    engine.step()                                  # a's 3-token prompt fits one chunk: it starts
    b = engine.add(long, greedy(12))
    steps = []
    while engine.has_work():
        steps.append({o.id for o in engine.step()})
    assert all(a in ids for ids in steps[:11])     # a advances every step while b's prompt goes in
    assert next(i for i, ids in enumerate(steps) if b in ids) == 6   # 50 tokens, 8 per step: 7 steps
    assert engine.result(a).token_ids == alone[0] and engine.result(b).token_ids == alone[1]
    c = engine.add(long, greedy(4))
    engine.step()
    assert engine.remove(c).finish_reason == "abort" and not engine.has_work()   # removed mid-prefill
    d = engine.add(PROMPTS[1], greedy(4))
    assert engine.remove(d).finish_reason == "abort" and engine.result(d) is None  # waiting: handed out once
