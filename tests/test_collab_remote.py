"""The remote LM against a real OpenAI-compatible server on 127.0.0.1 (started and stopped by the
test): generation and scoring equal the local model's, retries on 500, timeouts, API key, and a
cascade whose large model is remote."""

import pytest

from slmkit.collab import LocalLM
from slmkit.collab.remote import RemoteLM
from slmkit.collab.route import best_threshold, cascade, logprob_confidence, sweep
from slmkit.errors import SlmkitError
from slmkit.models.tiny import tiny_model

from openai_server import OpenAIServer

PROMPTS = ["The cat", "Once upon a time", "def add(a, b):"]


@pytest.fixture(scope="module")
def local(tiny_tok):
    return LocalLM(tiny_model("llama", seed=0), tiny_tok, "tiny")


@pytest.fixture
def server(local):
    with OpenAIServer(local) as srv:
        yield srv


@pytest.mark.parametrize("chat", [True, False])
def test_remote_generation_and_scoring_match_the_local_model(server, local, chat, monkeypatch):
    monkeypatch.setenv("SLMKIT_TEST_KEY", "sk-test")
    remote = RemoteLM(server.url, "tiny", api_key_env="SLMKIT_TEST_KEY", chat=chat)
    assert remote.generate(PROMPTS, max_new_tokens=6) == local.generate(PROMPTS, max_new_tokens=6)
    assert server.requests[-1][2] == "Bearer sk-test"
    assert remote.loglikelihood("Once upon", " a time") == pytest.approx(
        local.loglikelihood("Once upon", " a time"), abs=1e-4)


def test_500s_are_retried_then_reported(server, local):
    remote = RemoteLM(server.url, "tiny", retries=2, backoff=0.01)
    server.fail_next = 2
    assert remote.generate(["The cat"], 4) == local.generate(["The cat"], 4)   # third try works
    server.fail_next = 5
    with pytest.raises(SlmkitError, match="giving up after 3 attempts.*HTTP 500"):
        remote.generate(["The cat"], 4)


def test_timeouts_and_unknown_routes_give_clear_errors(server):
    server.delay = 0.5
    with pytest.raises(SlmkitError, match="timed out after 0.1 s"):
        RemoteLM(server.url, "tiny", timeout=0.1, retries=1, backoff=0.01).generate(["x"], 2)
    server.delay = 0.0
    with pytest.raises(SlmkitError, match="HTTP 404"):
        RemoteLM(server.url + "/nope", "tiny", retries=0).generate(["x"], 2)
    with pytest.raises(SlmkitError, match="connection failed"):
        RemoteLM("http://127.0.0.1:9/v1", "tiny", retries=0).generate(["x"], 2)


def test_cascade_escalates_low_confidence_queries_to_the_remote_model(server, local, tiny_tok):
    large = RemoteLM(server.url, "tiny")
    small = LocalLM(tiny_model("llama", seed=5), tiny_tok, "small")
    conf = [logprob_confidence(small, p, a) for p, a in zip(PROMPTS, small.generate(PROMPTS, 6))]
    threshold = sorted(conf)[1]            # the least confident query goes up
    res = cascade(small, large, PROMPTS, threshold, max_new_tokens=6)
    assert res.escalated == [c < threshold for c in conf] and sum(res.escalated) == 1
    i = res.escalated.index(True)
    assert res.answers[i] == local.generate([PROMPTS[i]], 6)[0]      # answered by the large model
    assert res.stats["fraction_to_large"] == pytest.approx(1 / 3)


def test_sweep_finds_the_cheapest_threshold_keeping_accuracy():
    small = [True, False, True, False]
    large = [True, True, True, False]
    conf = [0.9, 0.1, 0.8, 0.2]
    points = sweep(small, large, conf)
    assert points[0]["fraction_to_large"] == 0 and points[-1]["fraction_to_large"] == 1
    best = best_threshold(points, keep=1.0, large_accuracy=0.75)
    assert best["accuracy"] == 0.75 and best["fraction_to_large"] == 0.25
