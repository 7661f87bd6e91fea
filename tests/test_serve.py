"""`slmkit serve`: the official `openai` client against a real server on 127.0.0.1 (a tiny random
model in float32), streaming and not, the errors, disconnects, admission by KV budget."""
from __future__ import annotations

import concurrent.futures
import copy
import threading
import time

import httpx
import openai
import pytest

from serve_fixtures import client, reference, serving, worker  # skips the module without the serve extra
from slmkit.errors import SlmkitError
from slmkit.generate import Engine, Sampling
from slmkit.generate.stream import TextStream
from slmkit.serve import Served, model_name, parse_bytes
from slmkit.serve.metrics import Metrics
from slmkit.serve.worker import Worker


def test_models_health_and_metrics(server):
    assert [m.id for m in client(server).models.list()] == ["tiny"]
    assert httpx.get(server + "/health").json()["status"] == "ok"
    client(server).completions.create(model="tiny", prompt="Hello", max_tokens=3, temperature=0)
    text = httpx.get(server + "/metrics").text
    for name in ("slmkit_time_to_first_token_seconds_count", "slmkit_generation_tokens_total",
                 "slmkit_queue_depth", "slmkit_running_sequences", "slmkit_kv_cache_usage_ratio",
                 "slmkit_generation_tokens_per_second", "slmkit_time_per_output_token_seconds_count"):
        assert f'{name}{{model="tiny"}}' in text, name


def test_greedy_completion_is_generate_streamed_or_not(server, model_tok):
    model, tok = model_tok
    prompt = "The quick brown fox"
    ref = reference(model, tok, tok(prompt, add_special_tokens=False)["input_ids"])
    c = client(server)
    whole = c.completions.create(model="tiny", prompt=prompt, max_tokens=12, temperature=0)
    assert whole.choices[0].text == ref.text and whole.choices[0].finish_reason == "length"
    assert whole.usage.completion_tokens == 12 and whole.usage.prompt_tokens == len(ref.prompt_ids)
    chunks = list(c.completions.create(model="tiny", prompt=prompt, max_tokens=12, temperature=0, stream=True,
                                       stream_options={"include_usage": True}))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == ref.text
    assert chunks[-1].usage.completion_tokens == 12
    by_ids = c.completions.create(model="tiny", prompt=ref.prompt_ids, max_tokens=12, temperature=0)
    assert by_ids.choices[0].text == ref.text


def test_eight_concurrent_greedy_requests_are_each_alone(server, model_tok):
    """Batching changes no token: each of 8 requests decoded together equals its own decode."""
    model, tok = model_tok
    prompts = [f"Prompt number {i} " + "word " * i for i in range(8)]
    refs = [reference(model, tok, tok(p, add_special_tokens=False)["input_ids"], 16).text for p in prompts]
    c = client(server)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda p: c.completions.create(model="tiny", prompt=p, max_tokens=16,
                                                           temperature=0).choices[0].text, prompts))
    assert got == refs


def test_chat_streams_role_first_then_text(server, model_tok):
    model, tok = model_tok
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    ids = tok(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True),
              add_special_tokens=False)["input_ids"]
    ref = reference(model, tok, ids, 10)
    c = client(server)
    whole = c.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0)
    assert whole.choices[0].message.content == ref.text and whole.choices[0].message.role == "assistant"
    chunks = list(c.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0,
                                            stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == ref.text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_stop_strings_logprobs_n_and_seed(server, model_tok):
    model, tok = model_tok
    c = client(server)
    free = c.completions.create(model="tiny", prompt="The quick", max_tokens=12, temperature=0).choices[0].text
    stop = free[4:6]
    cut = c.completions.create(model="tiny", prompt="The quick", max_tokens=12, temperature=0, stop=[stop])
    assert cut.choices[0].finish_reason == "stop" and cut.choices[0].text == free[:free.find(stop)]
    streamed = c.completions.create(model="tiny", prompt="The quick", max_tokens=12, temperature=0, stop=stop,
                                    stream=True)
    assert "".join(ch.choices[0].text for ch in streamed) == cut.choices[0].text
    lp = c.completions.create(model="tiny", prompt="The quick", max_tokens=5, temperature=0, logprobs=3)
    lps = lp.choices[0].logprobs
    assert len(lps.token_logprobs) == 5 and all(len(t) == 3 for t in lps.top_logprobs)
    assert all(t[tok_] == v for t, tok_, v in zip(lps.top_logprobs, lps.tokens, lps.token_logprobs))
    chat = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], max_tokens=4,
                                     temperature=0, logprobs=True, top_logprobs=2)
    assert len(chat.choices[0].logprobs.content) == 4
    a = c.completions.create(model="tiny", prompt="Once", max_tokens=8, temperature=1.0, n=2, seed=7)
    b = c.completions.create(model="tiny", prompt="Once", max_tokens=8, temperature=1.0, n=2, seed=7)
    assert [x.text for x in a.choices] == [x.text for x in b.choices] and len(a.choices) == 2
    assert a.choices[0].text != a.choices[1].text       # choice i samples with seed + i


def test_errors_come_in_openai_shape(server, model_tok):
    c = client(server)
    with pytest.raises(openai.NotFoundError) as e:
        c.completions.create(model="nope", prompt="x")
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model="tiny", prompt="x", temperature=3)
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model="tiny", prompt="word " * 300, max_tokens=10)   # tiny context: 256
    assert e.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError):
        c.completions.create(model="tiny", prompt=[10**9])
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="tiny", messages=[])
    too_big = httpx.post(server + "/v1/completions", content=b"x" * (2 << 20),
                         headers={"Content-Type": "application/json"})
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "body_too_large"
    bad_json = httpx.post(server + "/v1/completions", content=b"{not json",
                          headers={"Content-Type": "application/json"})
    assert bad_json.status_code == 400 and "error" in bad_json.json()


def test_api_key(model_tok):
    model, tok = model_tok
    with serving({"tiny": Served(worker(model, tok), model, tok)}, api_key="sk-right") as url:
        with pytest.raises(openai.AuthenticationError):
            client(url, "sk-wrong").models.list()
        assert [m.id for m in client(url, "sk-right").models.list()] == ["tiny"]
        assert httpx.get(url + "/health").status_code == 200      # health needs no key


def test_a_closed_stream_frees_its_sequence_at_once(model_tok):
    model, tok = model_tok
    w = worker(model, tok)
    with serving({"tiny": Served(w, model, tok)}) as url:
        stream = client(url).completions.create(model="tiny", prompt="Go on", max_tokens=200, temperature=0,
                                                stream=True, extra_body={"ignore_eos": True})
        for i, _ in enumerate(stream):
            if i == 2:
                break
        stream.close()
        deadline = time.time() + 10
        while w.engine.has_work() and time.time() < deadline:
            time.sleep(0.05)
        assert not w.engine.has_work()
        assert client(url).completions.create(model="tiny", prompt="x", max_tokens=2).choices


def test_kv_budget_sets_concurrency_and_a_full_queue_is_429(model_tok):
    model, tok = model_tok
    prompt = tok("Count with me", add_special_tokens=False)["input_ids"]
    need = len(prompt) + 40            # one sequence's padded footprint
    peaks = {}
    for room in (2, 4):
        w = worker(model, tok, budget=room * need, max_queue=16)
        seen = []
        with serving({"tiny": Served(w, model, tok)}) as url:
            c = client(url)

            def one(_):
                r = c.completions.create(model="tiny", prompt=prompt, max_tokens=40, temperature=0,
                                         extra_body={"ignore_eos": True})
                return r.choices[0].finish_reason

            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                done = threading.Event()

                def watch():
                    while not done.is_set():
                        seen.append(len(w._by_seq))
                        time.sleep(0.002)
                t = threading.Thread(target=watch)
                t.start()
                assert list(pool.map(one, range(8))) == ["length"] * 8
                done.set()
                t.join()
        peaks[room] = max(seen)
    assert peaks[2] == 2 and peaks[4] == 4
    long = 256 - len(prompt)           # the whole context: one sequence fills the budget

    class Slow(Engine):                # 20 ms a step: the first request runs ~5 s, whatever the machine
        def step(self):
            time.sleep(0.02)
            return super().step()

    w = Worker("tiny", lambda: Slow(model, tok), kv_budget_tokens=len(prompt) + long, metrics=Metrics(),
               max_queue=1)
    with serving({"tiny": Served(w, model, tok)}) as url:
        c = client(url)
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            busy = [pool.submit(c.completions.create, model="tiny", prompt=prompt, max_tokens=long,
                                extra_body={"ignore_eos": True}) for _ in range(2)]
            deadline = time.time() + 20     # until one runs and one waits: the queue (1) is full
            while 'slmkit_queue_depth{model="tiny"} 1.0' not in httpx.get(url + "/metrics").text:
                assert time.time() < deadline, [f.exception() for f in busy if f.done()]
            r = httpx.post(url + "/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 2})
            assert r.status_code == 429 and r.headers["Retry-After"] == "1"
            assert r.json()["error"]["type"] == "rate_limit_error"
            assert all(f.result().choices for f in busy)
        with pytest.raises(openai.BadRequestError) as e:   # a request larger than the whole budget
            c.completions.create(model="tiny", prompt=prompt, max_tokens=long, n=2)
        assert "KV cache" in e.value.body["message"]


def test_text_stream_holds_back_broken_characters_and_stop_prefixes(tiny_tok):
    ids = tiny_tok("héllo wörld, and more", add_special_tokens=False)["input_ids"]
    s = TextStream(tiny_tok)
    assert "".join(s.push(t) for t in ids) + s.finish(None) == "héllo wörld, and more"
    s = TextStream(tiny_tok, stop=("d, a",))
    pushed = "".join(s.push(t) for t in ids)
    assert "héllo wörl".startswith(pushed) and "\ufffd" not in pushed
    assert pushed + s.finish("héllo wörl") == "héllo wörl"


def test_sampling_defaults_come_from_the_generation_config(model_tok):
    model, _ = model_tok
    m = copy.deepcopy(model)
    assert Sampling.for_model(m).temperature == 1.0 and Sampling.for_model(m).top_p == 1.0
    m.generation_config.temperature, m.generation_config.top_p = 0.7, 0.8
    m.generation_config.repetition_penalty = 1.1
    s = Sampling.for_model(m, max_new_tokens=5)
    assert (s.temperature, s.top_p, s.repetition_penalty, s.max_new_tokens) == (0.7, 0.8, 1.1, 5)
    assert Sampling.for_model(m, temperature=0.0).greedy


def test_names_and_sizes(tmp_path):
    assert model_name("default") == ("default", "default")
    assert model_name("small=some/path") == ("small", "some/path")
    assert model_name(str(tmp_path)) == (tmp_path.name, str(tmp_path))
    assert parse_bytes("2GB") == 2 << 30 and parse_bytes("512MiB") == 512 << 20 and parse_bytes("100") == 100
    with pytest.raises(SlmkitError):
        parse_bytes("lots")


def test_a_draft_decodes_a_lone_request_by_speculative_rounds_and_changes_no_token(tiny_dir):
    from slmkit.serve import load_served

    folder = str(tiny_dir("llama"))
    plain = load_served([f"m={folder}"], dtype="float32", kv_memory=64 << 20)
    drafted = load_served([f"m={folder}"], dtype="float32", kv_memory=64 << 20, draft=folder)
    prompt = "The quick brown fox jumps"
    texts = []
    for served in (plain, drafted):
        with serving(served) as url:
            texts.append(client(url).completions.create(model="m", prompt=prompt, max_tokens=20,
                                                        temperature=0).choices[0].text)
            metrics = httpx.get(url + "/metrics").text
    assert texts[0] == texts[1]
    assert 'slmkit_draft_tokens_total{model="m",outcome="accepted"}' in metrics
    stats = drafted["m"].worker.engine.speculator.stats
    assert stats.accepted > 0 and stats.target_forwards < 20
    with pytest.raises(SlmkitError, match="drafts for one served model"):
        load_served([f"a={folder}", f"b={folder}"], draft=folder)
