"""`slmkit serve`: the official `openai` client against a real server on 127.0.0.1 (a tiny random
model in float32), streaming and not, the errors, disconnects, admission by KV budget."""

from __future__ import annotations

import concurrent.futures
import copy
import importlib.util
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest

from slmkit.errors import SlmkitError
from slmkit.generate import Engine, Sampling, generate
from slmkit.generate.stream import TextStream
from slmkit.models import tiny
from slmkit.serve import Served, build_app, load_served, model_name, parse_bytes
from slmkit.serve.metrics import Metrics
from slmkit.serve.worker import Worker

uvicorn = pytest.importorskip("uvicorn")

TEMPLATE = ("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@contextmanager
def serving(served: dict, **kw):
    """A uvicorn server of build_app(served) on a free 127.0.0.1 port -> its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(build_app(served, **kw), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="module")
def model_tok(tiny_tok):
    tok = copy.deepcopy(tiny_tok)
    tok.chat_template = TEMPLATE
    return tiny.tiny_model("llama"), tok


def worker(model, tok, name="tiny", budget=100_000, **kw) -> Worker:
    return Worker(name, lambda: Engine(model, tok), kv_budget_tokens=budget, metrics=Metrics(), **kw)


@pytest.fixture(scope="module")
def server(model_tok):
    model, tok = model_tok
    with serving({"tiny": Served(worker(model, tok), model, tok)}) as url:
        yield url


def client(url, key="none", **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=60, **kw)


def reference(model, tok, prompt_ids, n=12) -> str:
    return generate(model, tok, [prompt_ids], Sampling(max_new_tokens=n))[0]


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


needs_llamacpp = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                    reason="llama-cpp-python (slmkit[llamacpp]) is not installed")


@pytest.fixture(scope="module")
def gguf(tmp_path_factory, tiny_tok):
    from slmkit.models.gguf_export import export_gguf

    model = tiny.tiny_model("llama", initializer_range=0.1)
    return export_gguf(model, tiny_tok, tmp_path_factory.mktemp("gguf") / "m.gguf", "f32")


@needs_llamacpp
def test_gguf_serves_on_llama_cpp_as_llama_cpp_python_decodes_it(gguf):
    import llama_cpp

    served = load_served([f"g={gguf}"], kv_memory=64 << 20, max_seqs=8, prefill_chunk=3)   # prompts in chunks
    ctx = served["g"].model
    assert type(ctx).__name__ == "LlamaCppContext" and served["g"].worker.kv_budget == ctx.n_ctx
    prompts = ["The quick brown fox", "Hello", "a b c d e f", "Numbers: 1 2 3"]
    own = []
    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=256, n_threads=1, verbose=False)
    tok = served["g"].tokenizer
    for p in prompts:
        llm.reset()
        ids = []
        for t in llm.generate(tok(p, add_special_tokens=False)["input_ids"], temp=0.0, top_k=1):
            ids.append(t)
            if len(ids) == 12 or t in ctx.config.eos_token_id:
                break
        own.append(tok.decode(ids, skip_special_tokens=True))
    llm.close()
    with serving(served) as url:
        c = client(url)
        alone = [c.completions.create(model="g", prompt=p, max_tokens=12, temperature=0).choices[0].text
                 for p in prompts]
        assert alone == own
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            together = list(pool.map(lambda p: c.completions.create(
                model="g", prompt=p, max_tokens=12, temperature=0).choices[0].text, prompts))
        assert together == own
        chunks = list(c.completions.create(model="g", prompt=prompts[0], max_tokens=12, temperature=0,
                                           stream=True))
        assert "".join(ch.choices[0].text for ch in chunks) == own[0]
    assert sorted(ctx._free) == list(range(8))     # every sequence freed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_command_serves_and_sigterm_drains_running_requests(tiny_dir):
    """`slmkit serve` as users start it; SIGTERM lets a running stream finish, then it exits."""
    import signal
    import subprocess
    import sys

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "slmkit.cli.main", "serve", f"t={tiny_dir('llama')}",
                             "--port", str(port), "--dtype", "float32", "--kv-memory", "64MB"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() else "slow"
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert "<title>slmkit serve</title>" in httpx.get(url + "/").text
        stream = client(url).completions.create(model="t", prompt="Go", max_tokens=150, temperature=0,
                                                stream=True, extra_body={"ignore_eos": True})
        chunks = [next(iter(stream))]
        proc.send_signal(signal.SIGTERM)
        chunks += list(stream)
        assert chunks[-1].choices[0].finish_reason == "length"
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_bad_serve_arguments_are_one_line_errors(capsys, tiny_dir):
    from slmkit.cli.main import main

    assert main(["serve", "a=x", "a=y"]) == 1
    assert "two models would be served as one name" in capsys.readouterr().err
    assert main(["serve", str(tiny_dir("llama")), "--kv-memory", "lots"]) == 1
    assert "memory size" in capsys.readouterr().err
    assert main(["serve", str(tiny_dir("llama")), "--engine", "llamacpp"]) == 1
    assert "serves .gguf files" in capsys.readouterr().err or "not installed" in capsys.readouterr().err


def test_schemathesis_finds_no_server_error(server, tmp_path):
    """Fuzzing every operation of the server's OpenAPI schema (schemathesis) gives no 5xx."""
    import shutil
    import subprocess
    import sys

    exe = shutil.which("schemathesis") or str(Path(sys.executable).with_name("schemathesis"))
    if not Path(exe).exists():
        pytest.skip("schemathesis is not installed (pip install schemathesis)")
    r = subprocess.run([exe, "run", server + "/openapi.json", "--checks", "not_a_server_error",
                        "--max-examples", "25", "--seed", "1", "--workers", "1", "--request-timeout", "30",
                        "--generation-deterministic"],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)   # its .schemathesis/ there
    assert r.returncode == 0, r.stdout[-3000:]
    assert "POST /v1/chat/completions" in r.stdout and "POST /v1/completions" in r.stdout


def test_the_chat_page_streams_an_answer_in_a_real_browser(server, tmp_path):
    """Headless Chromium (Debian's package) loads the page, a prompt is typed and sent, and the
    streamed answer on the page is the server's own greedy answer."""
    import json
    import shutil
    import subprocess

    exe = next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None)
    ws_client = pytest.importorskip("websockets.sync.client")
    if exe is None:
        pytest.skip("no chromium on PATH (apt-get install chromium)")
    want = client(server).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Tell me a story"}], max_tokens=40,
        temperature=0).choices[0].message.content
    browser = subprocess.Popen([exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                f"--user-data-dir={tmp_path}", "--remote-debugging-port=0", server + "/"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file, deadline = tmp_path / "DevToolsActivePort", time.time() + 60
        while not port_file.exists() or not port_file.read_text().strip():
            assert time.time() < deadline and browser.poll() is None, "chromium did not start"
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        page = next(t for t in httpx.get(f"http://127.0.0.1:{port}/json").json() if t["type"] == "page")
        with ws_client.connect(page["webSocketDebuggerUrl"], max_size=None) as ws:
            calls = iter(range(1, 10**6))

            def cdp(method, **params):
                n = next(calls)
                ws.send(json.dumps({"id": n, "method": method, "params": params}))
                while True:
                    msg = json.loads(ws.recv(timeout=30))
                    if msg.get("id") == n:
                        return msg.get("result", {})

            def js(expr):
                return cdp("Runtime.evaluate", expression=expr, returnByValue=True)["result"].get("value")

            def until(expr, seconds=60):
                end = time.time() + seconds
                while not js(expr):
                    assert time.time() < end, f"timed out waiting for {expr}"
                    time.sleep(0.1)

            until("document.getElementById('model-a').options.length > 0")
            js("document.getElementById('max-tokens').value = '40'; document.getElementById('temperature').value = '0'")
            js("document.getElementById('prompt').focus()")
            cdp("Input.insertText", text="Tell me a story")
            js("document.getElementById('send').click()")
            until("document.getElementById('answer-a').dataset.done === '1'")
            assert js("document.getElementById('answer-a').textContent") == want
            assert "tok/s" in js("document.getElementById('stats-a').textContent")
    finally:
        browser.kill()
        browser.wait()


def test_load_32_streaming_clients_for_20_seconds(tiny_dir):
    """The CI version of benchmarks/serve_load.py: every stream completes or is refused with 429,
    no server error, and the server is alive at the end."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import serve_load

    out = serve_load.main(["--model", str(tiny_dir("llama")), "--clients", "32", "--seconds", "20",
                           "--max-queue", "4", "--kv-memory", "32MB", "--max-words", "20", "--max-new", "64",
                           "--no-save"])   # the tiny model's context is 256 tokens
    assert out["errors"] == 0 and out["server_alive"], out
    assert out["complete"] > 32 and out["refused"] > 0      # a full queue answered 429, cleanly
