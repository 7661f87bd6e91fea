"""`slmkit generate / proxy / route` end to end on tiny model folders."""

import json

from slmkit.cli.main import main


def last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def test_generate_with_a_draft_equals_plain_greedy(tiny_dir, capsys):
    model = str(tiny_dir("llama"))
    assert main(["generate", model, "--greedy", "--prompt", "The cat", "--max-new-tokens", "12", "--dtype", "float32"]) == 0
    plain = capsys.readouterr().out
    assert main(["generate", model, "--greedy", "--prompt", "The cat", "--max-new-tokens", "12", "--dtype", "float32",
                 "--draft", model]) == 0
    spec = capsys.readouterr().out
    assert spec.splitlines()[:-1] == plain.splitlines()[:-1]            # same text
    stats = last_json(spec)
    assert stats["acceptance_rate"] == 1.0 and stats["new_tokens"] == 12  # draft == target
    assert main(["generate", model, "--greedy", "--prompt", "The cat", "--max-new-tokens", "12", "--dtype", "float32",
                 "--draft", model, "--draft-confidence", "1"]) == 0       # never confident: 1 per round
    sure = capsys.readouterr().out
    assert sure.splitlines()[:-1] == plain.splitlines()[:-1]
    assert last_json(sure)["proposed"] == last_json(sure)["rounds"] < stats["proposed"]
    assert main(["generate", model, "--greedy", "--prompt", "a b a b a b", "--prompt-lookup", "--max-new-tokens", "6",
                 "--dtype", "float32"]) == 0


def test_proxy_with_identical_experts_is_the_base(tiny_dir, capsys):
    base, other = str(tiny_dir("llama")), str(tiny_dir("qwen2"))
    assert main(["generate", base, "--greedy", "--prompt", "Hello", "--max-new-tokens", "8", "--dtype", "float32"]) == 0
    plain = capsys.readouterr().out.splitlines()[:-1]
    assert main(["proxy", "--base", base, "--expert", other, "--anti-expert", other, "--prompt", "Hello",
                 "--max-new-tokens", "8", "--dtype", "float32"]) == 0
    assert capsys.readouterr().out.splitlines()[:-1] == plain
    assert main(["proxy", "--base", base, "--expert", other, "--anti-expert", other, "--prompt", "Hello",
                 "--prompt", "A longer second prompt", "--max-new-tokens", "8", "--dtype", "float32"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert last_json(out[-1])["prompts"] == 2 and out[: len(plain)] == plain


def test_route_scores_the_cascade_and_writes_the_curve(tiny_dir, tmp_path, capsys):
    data = tmp_path / "items.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i} + 1?", "answer": f"#### {i + 1}"}) + "\n"
                            for i in range(4)))
    out = tmp_path / "route"
    assert main(["route", "--small", str(tiny_dir("llama")), "--large", str(tiny_dir("qwen2")),
                 "--data", str(data), "--threshold", "-5", "--max-new-tokens", "4", "--out", str(out),
                 "--dtype", "float32"]) == 0
    summary = last_json(capsys.readouterr().out.splitlines()[-2])
    assert summary["queries"] == 4 and 0 <= summary["fraction_to_large"] <= 1
    assert "accuracy_cascade" in summary
    saved = json.loads((out / "route.json").read_text())
    assert len(saved["answers"]) == 4 and len(saved["summary"]["curve"]) >= 2
    assert (out / "route_curve.png").exists()
