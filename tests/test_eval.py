"""Evaluators against direct reference computations and constructed cases."""

import json
import math
import statistics

import pytest
import torch
from fixed_models import biased_model

from slmkit.data import TextData, embedded_text, token_stream
from slmkit.data.answers import extract_gsm8k
from slmkit.errors import SlmkitError
from slmkit.eval import (
    GenConfig,
    MCConfig,
    PerplexityConfig,
    Report,
    SpeedConfig,
    evaluate,
    multiple_choice,
    perplexity,
    speed,
)
from slmkit.eval.mc import MCItem, encode_pair
from slmkit.eval.perplexity import rolling_windows, window_requests
from slmkit.eval.scoring import score_requests
from slmkit.models.tiny import tiny_model

SMALL = TextData("small", embedded_text("eval").docs[0][:3000].split("\n\n")[:6])


def uniform_model(model_type="llama"):
    model = tiny_model(model_type)
    with torch.no_grad():
        model.get_output_embeddings().weight.zero_()  # logits all zero -> uniform distribution
    return model


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_uniform_logits_give_perplexity_equal_to_vocab(model_type, tiny_tok):
    model = uniform_model(model_type)
    out = perplexity(model, tiny_tok, SMALL, PerplexityConfig(window=64, max_length=64))
    vocab = model.config.vocab_size
    assert out["window"]["token_perplexity"] == pytest.approx(vocab, rel=1e-5)
    assert out["rolling"]["token_perplexity"] == pytest.approx(vocab, rel=1e-5)
    # word/byte perplexities rescale the same total log-likelihood
    r = out["rolling"]
    assert math.log(r["word_perplexity"]) * r["words"] == pytest.approx(r["tokens_scored"] * math.log(vocab), rel=1e-5)
    assert r["bits_per_byte"] == pytest.approx(r["tokens_scored"] * math.log2(vocab) / r["bytes"], rel=1e-5)


@pytest.mark.parametrize("stride", [None, 16])
def test_window_protocol_matches_direct_loss_loop(tiny_tok, stride):
    """Protocol (i) against HF's perplexity-guide loop (labels masked with -100)."""
    model = tiny_model("qwen2", seed=3)
    window = 48
    ids = token_stream(tiny_tok, SMALL)
    nll, count, prev_end = 0.0, 0, 0
    with torch.no_grad():
        for begin in range(0, ids.numel(), stride or window):
            end = min(begin + window, ids.numel())
            trg = end - prev_end
            inp = ids[begin:end][None]
            labels = inp.clone()
            labels[:, :-trg] = -100
            n = int((labels[:, 1:] != -100).sum())
            if n:
                nll += model(inp, labels=labels).loss.item() * n
                count += n
            prev_end = end
            if end == ids.numel():
                break
    ours = perplexity(model, tiny_tok, SMALL, PerplexityConfig(protocols=["window"], window=window, stride=stride))
    assert ours["window"]["tokens_scored"] == count
    assert ours["window"]["token_perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-5)


def test_window_requests_score_each_token_once():
    for n, window, stride in [(100, 10, 10), (101, 10, 4), (7, 10, 10), (50, 8, 3), (41, 10, 10)]:
        scored = []
        for begin, end, n_ctx in window_requests(n, window, stride, False):
            assert end - begin <= window and n_ctx >= 1
            scored += list(range(begin + n_ctx, end))
        if stride < window:  # overlapping: every token but the very first, once, in order
            assert scored == list(range(1, n))
        else:  # non-overlapping: a window's first token has no context and is not scored
            assert scored == [t for t in range(n) if t % window]
    full = window_requests(45, 10, 10, drop_last=True)
    assert [(b, e) for b, e, _ in full] == [(0, 10), (10, 20), (20, 30), (30, 40)]


def test_rolling_windows_predict_every_token_once():
    tokens = list(range(100, 137))
    for max_length in (1, 5, 16, 37, 50):
        predicted = []
        for seq, n_ctx in rolling_windows(tokens, 1, max_length):
            assert len(seq) - 1 <= max_length
            predicted += seq[n_ctx:]
        assert predicted == tokens
    assert rolling_windows(tokens, 1, 8)[0][0][0] == 1  # first window starts with the prefix


def test_scorer_batching_and_padding_do_not_change_scores(tiny_tok):
    model = tiny_model("llama", seed=2)
    reqs = [(list(range(3, 3 + n)), k) for n, k in [(20, 5), (7, 1), (33, 30), (12, 11)]]
    alone = [score_requests(model, [r])[0].logprob for r in reqs]
    batched = [s.logprob for s in score_requests(model, reqs, batch_tokens=10_000)]
    assert batched == pytest.approx(alone, abs=1e-4)


def test_sequence_longer_than_context_is_refused(tiny_tok):
    model = tiny_model("llama")  # max_position_embeddings = 256
    with pytest.raises(SlmkitError, match="context is 256"):
        perplexity(model, tiny_tok, SMALL, PerplexityConfig(protocols=["window"], window=300))


def test_mc_constructed_case_prefers_fewest_tokens_under_uniform_model(tiny_tok):
    model = uniform_model()
    choices = ["the", "the the the", "the the the the the"]
    items = [MCItem("Pick one.", choices[i:] + choices[:i], (-i) % 3) for i in range(3)]
    out = multiple_choice(model, tiny_tok, items, MCConfig())
    assert out["acc"] == 1.0 and out["n"] == 3
    for item, r in zip(items, out["items"]):
        n_tok = [len(encode_pair(tiny_tok, "Question: Pick one.\nAnswer:", " " + c)[1]) for c in item.choices]
        assert r["loglikelihoods"] == pytest.approx([-n * math.log(model.config.vocab_size) for n in n_tok], rel=1e-5)


def test_mc_loglikelihoods_match_direct_computation(tiny_tok):
    model = tiny_model("gemma3_text", seed=4)
    item = MCItem("Which word is defined as: a domestic animal?", ["cat", "quantum", "run", "table"], 0)
    out = multiple_choice(model, tiny_tok, [item], MCConfig())
    for choice, ll in zip(item.choices, out["items"][0]["loglikelihoods"]):
        ctx, cont = encode_pair(tiny_tok, "Question: " + item.question + "\nAnswer:", " " + choice)
        ids = torch.tensor([ctx + cont])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0, :-1].double(), -1)
        direct = sum(logp[len(ctx) - 1 + i, t].item() for i, t in enumerate(cont))
        assert ll == pytest.approx(direct, abs=1e-4)


def test_acc_norm_divides_by_bytes_not_tokens(tiny_tok):
    """Under a context-free model every continuation's log-likelihood is a sum of known per-token
    log-probabilities, so the three rules can be worked out by hand and made to disagree:
    "the" (1 token, 3 bytes) has the highest sum, "the the" (2 tokens, 7 bytes) the highest per
    byte, and "ééé" (7 byte-level tokens, 6 bytes, its 'Ã' '©' tokens boosted) the highest per token.
    acc_stderr is checked on the same items."""
    choices = ["the", "the the", "ééé"]
    boosted = set(tiny_tok("ééé")["input_ids"])
    model = biased_model({t: 2.0 for t in boosted})
    logp = torch.log_softmax(model.lm_head.bias.detach().double(), -1)
    context = "Question: Pick one.\nAnswer:"
    ll, n_tokens = {}, {}
    for c in choices:
        cont = encode_pair(tiny_tok, context, " " + c)[1]
        ll[c], n_tokens[c] = sum(logp[t].item() for t in cont), len(cont)
    by_sum = max(choices, key=ll.__getitem__)
    by_byte = max(choices, key=lambda c: ll[c] / len(c.encode("utf-8")))
    by_token = max(choices, key=lambda c: ll[c] / n_tokens[c])
    assert (by_sum, by_byte, by_token) == ("the", "the the", "ééé")   # the case discriminates
    # the answer is the per-byte winner twice, the per-token one once, the highest sum once
    orders = [choices[i:] + choices[:i] for i in (0, 1, 2, 0)]
    answers = ["the the", "the the", "ééé", "the"]
    items = [MCItem("Pick one.", o, o.index(a)) for o, a in zip(orders, answers)]
    out = multiple_choice(model, tiny_tok, items, MCConfig())
    for item, r in zip(items, out["items"]):
        assert r["loglikelihoods"] == pytest.approx([ll[c] for c in item.choices], abs=1e-4)
        assert item.choices[r["pred"]] == by_sum
        assert item.choices[r["pred_norm"]] == by_byte, \
            f"acc_norm picked {item.choices[r['pred_norm']]!r}; per UTF-8 byte the best is {by_byte!r}"
    assert out["acc"] == pytest.approx(1 / 4)
    assert out["acc_norm"] == pytest.approx(2 / 4)
    # lm-eval's stderr of a mean: the sample standard deviation of the per-item scores / sqrt(n)
    correct = [float(item.choices[r["pred"]] == a) for item, r, a in zip(items, out["items"], answers)]
    assert out["acc_stderr"] == pytest.approx(statistics.stdev(correct) / math.sqrt(len(correct)))


def test_mc_file_errors(tmp_path):
    from slmkit.eval.mc import load_items

    bad = tmp_path / "mc.jsonl"
    bad.write_text(json.dumps({"question": "q", "choices": ["a", "b"], "answer": 2}) + "\n")
    with pytest.raises(SlmkitError, match="record 1.*answer 2"):
        load_items(bad)
    bad.write_text(json.dumps({"question": "q", "answer": 0}) + "\n")
    with pytest.raises(SlmkitError, match="lacks choices"):
        load_items(bad)


@pytest.mark.parametrize("text, expected", [
    ("so the total is 5 apples.\n#### 1,234", "1234"),
    ("Janet has 3 eggs and sells 16. Answer: 18", "18"),
    ("The answer is 7.0.", "7"),
    ("no digits here", None),
])
def test_gsm8k_extraction(text, expected):
    assert extract_gsm8k(text) == expected


def test_generation_task_runs_and_scores(tiny_tok, tmp_path):
    model = tiny_model("llama")
    f = tmp_path / "gen.jsonl"
    f.write_text("".join(json.dumps({"question": f"What is {i}+{i}?", "answer": f"#### {2 * i}"}) + "\n"
                         for i in range(3)))
    out = evaluate(model, tiny_tok, {"gen": GenConfig(path=str(f), max_new_tokens=4, batch_size=2)})
    g = out["gen"]
    assert g["n"] == 3 and len(g["items"]) == 3
    assert g["exact_match"] == sum(r["correct"] for r in g["items"]) / 3
    assert all(r["gold"] == str(2 * i) for i, r in enumerate(g["items"]))


def test_speed_reports_phases_and_keeps_model_dtype(tiny_tok):
    model = tiny_model("llama")
    out = speed(model, tiny_tok, SpeedConfig(prompt_tokens=16, new_tokens=5, warmup=0, repeats=2,
                                             prefill_dtype="float32", decode_dtype="bfloat16"))
    assert next(model.parameters()).dtype == torch.float32  # decode ran on a converted copy
    assert out["decode_dtype"] == "bfloat16" and out["prefill_dtype"] == "float32"
    assert out["prefill_tok_s"] > 0 and out["decode_tok_s"] > 0 and out["ttft_s"] > 0
    assert out["latency_p95_ms"] >= out["latency_p50_ms"] > 0
    assert out["peak_rss_mb"] > 10 and out["params"] == sum(p.numel() for p in model.parameters())


def test_alternating_speed_interleaves_models_and_reduces_their_runs(tiny_tok):
    from itertools import groupby

    from slmkit.eval.speed import alternating

    order = []
    models = {}
    for name in ("a", "b"):
        m = tiny_model("llama")
        m.register_forward_pre_hook(lambda *_, name=name: order.append(name))
        models[name] = (m, tiny_tok)
    cfg = SpeedConfig(prompt_tokens=8, new_tokens=3, warmup=0, repeats=1, prefill_dtype="float32",
                      decode_dtype="float32")
    out = alternating(models, cfg, rounds=3, stat="max")
    assert [k for k, _ in groupby(order)] == ["a", "b"] * 3  # a, b, a, b, a, b: never two runs of one in a row
    for name in models:
        runs = out[name]["runs"]
        assert len(runs) == 3 and out[name]["decode_tok_s"] == max(r["decode_tok_s"] for r in runs)
    med = alternating(models, cfg, rounds=3)
    assert med["a"]["prefill_tok_s"] == sorted(r["prefill_tok_s"] for r in med["a"]["runs"])[1]
    with pytest.raises(SlmkitError, match="stat"):
        alternating(models, cfg, stat="mean")


def test_peak_rss_sees_what_a_block_allocates():
    from slmkit.eval.memory import PeakRSS

    with PeakRSS() as mem:
        x = torch.ones(64 * 2**20)  # 64 Mi float32 = 256 MiB, written so the pages are resident
        del x
    assert mem.start_bytes > 0
    assert 200 * 2**20 < mem.added_bytes < 1024 * 2**20


def test_report_json_markdown_and_plot(tmp_path):
    r = Report("t")
    r.add("a", {"ppl": {"window": {"token_perplexity": 10.0}}, "speed": {"decode_tok_s": 5.0}})
    r.add("b", {"ppl": {"window": {"token_perplexity": 12.5}}})
    md = r.to_markdown()
    assert "| a | 10.000 | 5.0 |" in md and "| b | 12.500 | - |" in md
    written = r.save(tmp_path)
    assert {p.name for p in written} == {"report.json", "report.md", "report.png"}
    assert json.loads((tmp_path / "report.json").read_text())["models"]["b"]["ppl"]["window"]["token_perplexity"] == 12.5
    assert (tmp_path / "report.png").read_bytes()[:4] == b"\x89PNG"
    single = Report("one")
    single.add("a", {"mc": {"acc": 0.5}})
    assert {p.name for p in single.save(tmp_path / "one")} == {"report.json", "report.md"}
