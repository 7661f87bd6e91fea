"""`slmkit serve` end to end: GGUFs on llama.cpp, the command as users start it, fuzzing with
schemathesis, the chat page in headless Chromium, the 20-second load test."""

from __future__ import annotations

import concurrent.futures
import importlib.util
import socket
import time
from pathlib import Path

import httpx
import pytest

from serve_fixtures import client, serving  # skips the module without the serve extra
from slmkit.models import tiny
from slmkit.serve import load_served

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


@needs_llamacpp
def test_gguf_kv_memory_sets_how_many_sequences_run_and_each_ones_length(gguf):
    """On llama.cpp every running sequence owns a KV stream of --max-model-len tokens: more memory
    runs more sequences at once, and a request longer than a stream is a 400, not a failed step."""
    import openai

    per_token = load_served([f"g={gguf}"], kv_memory=64 << 20, max_seqs=1)["g"].model.kv_bytes_per_token()
    small = load_served([f"g={gguf}"], kv_memory=2 * 128 * per_token, max_seqs=16, max_model_len=128)["g"]
    big = load_served([f"g={gguf}"], kv_memory=6 * 128 * per_token, max_seqs=16, max_model_len=128)["g"]
    assert (small.worker.max_seqs, big.worker.max_seqs) == (2, 6)
    assert small.model.seq_ctx >= 128 and small.context == small.model.seq_ctx
    with serving({"g": small}) as url:
        c = client(url)
        with concurrent.futures.ThreadPoolExecutor(4) as pool:      # 4 requests, 2 streams: two wait
            texts = list(pool.map(lambda p: c.completions.create(model="g", prompt=p, max_tokens=8,
                                                                  temperature=0).choices[0].text,
                                  ["one", "two", "three", "four"]))
        assert len(texts) == 4
        with pytest.raises(openai.BadRequestError) as e:
            c.completions.create(model="g", prompt="word " * 100, max_tokens=small.context)
        assert e.value.code == "context_length_exceeded"
    assert sorted(small.model._free) == [0, 1]


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
    err = capsys.readouterr().err
    import importlib.util

    expected = "serves .gguf files" if importlib.util.find_spec("llama_cpp") else "llama-cpp-python is not installed"
    assert expected in err, err


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
