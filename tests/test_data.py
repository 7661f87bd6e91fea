"""Text sources (embedded default, files, jsonl, HF datasets), chunking and calibration sets."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from slmkit.data import (
    TextData, calibration_set, chunk, embedded_text, jsonl_field, load_text, read_jsonl,
    text_files, token_stream,
)
from slmkit.errors import SlmkitError


# ---- embedded default --------------------------------------------------------------------------
def _headings(text: str) -> set[str]:
    """Topic headings of pydoc text: a line underlined by a line of '*' of the same length."""
    lines = text.splitlines()
    return {a.strip() for a, b in zip(lines, lines[1:])
            if a.strip() and b.strip() and set(b.strip()) == {"*"} and len(b.strip()) == len(a.strip())}


def test_embedded_parts_are_nonempty_and_eval_has_10_docs():
    ev, cal = embedded_text("eval"), embedded_text("calib")
    assert len(ev.docs) == 10
    assert all(d.strip() for d in ev.docs)
    assert len(cal.docs) > 0 and all(d.strip() for d in cal.docs)
    assert ev.n_chars > 0 and cal.n_chars > 0
    assert ev.name != cal.name


def test_embedded_parts_together_cover_every_topic():
    from pydoc_data import topics

    ev, cal = embedded_text("eval"), embedded_text("calib")
    calib_set = set(cal.docs)
    for key, text in topics.topics.items():
        assert text in calib_set or any(text in d for d in ev.docs), f"topic {key!r} was lost"


def test_embedded_parts_share_no_topic_text():
    ev, cal = embedded_text("eval"), embedded_text("calib")
    # substring check, both directions
    leaked = [c.splitlines()[0] for c in cal.docs if any(c.strip() in e for e in ev.docs)]
    assert not leaked, f"calibration topics inside eval documents: {leaked}"
    assert not [e for e in ev.docs if any(e.strip() in c for c in cal.docs)]
    # topic headings
    eval_heads = set().union(*(_headings(e) for e in ev.docs))
    calib_heads = set().union(*(_headings(c) for c in cal.docs))
    assert eval_heads and calib_heads
    assert not eval_heads & calib_heads, f"shared topic headings: {eval_heads & calib_heads}"


def test_embedded_split_is_deterministic_and_parts_differ():
    assert embedded_text("eval").sha256 == embedded_text("eval").sha256
    assert embedded_text("calib").sha256 == embedded_text("calib").sha256
    assert embedded_text("eval").sha256 != embedded_text("calib").sha256


def test_embedded_unknown_part_is_an_error():
    with pytest.raises(SlmkitError, match="bogus"):
        embedded_text("bogus")


# ---- TextData --------------------------------------------------------------------------------
def test_sha256_depends_on_document_boundaries():
    a, b = TextData("x", ["ab", "c"]), TextData("x", ["a", "bc"])
    assert "".join(a.docs) == "".join(b.docs)
    assert a.sha256 != b.sha256
    assert a.sha256 == TextData("other name", ["ab", "c"]).sha256  # content hash, not name
    assert a.describe()["sha256"] == a.sha256 and a.describe()["docs"] == 2


# ---- text files ------------------------------------------------------------------------------
def test_text_files_single_file(tmp_path):
    p = tmp_path / "one.txt"
    p.write_text("hello world\nsecond line\n", encoding="utf-8")
    data = text_files(p)
    assert data.docs == ["hello world\nsecond line\n"]
    assert str(p) in data.name


def test_text_files_folder_is_sorted_and_filters_suffixes(tmp_path):
    (tmp_path / "sub").mkdir()
    files = {"b.txt": "bee", "a.md": "ay", "sub/c.txt": "sea", "sub/0.md": "zero"}
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    (tmp_path / "ignored.json").write_text('{"text": "no"}', encoding="utf-8")
    (tmp_path / "ignored.py").write_text("print('no')", encoding="utf-8")
    (tmp_path / "ignored.csv").write_text("no,no", encoding="utf-8")
    data = text_files(tmp_path)
    expected = [files[n] for n in sorted(files, key=lambda n: tmp_path / n)]
    assert data.docs == expected  # ignored.* files are not read


def test_text_files_missing_path(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(SlmkitError, match="does not exist") as e:
        text_files(missing)
    assert str(missing) in str(e.value)


def test_text_files_whitespace_only_file(tmp_path):
    p = tmp_path / "blank.txt"
    p.write_text("  \n\t\n \n", encoding="utf-8")
    with pytest.raises(SlmkitError, match="no text") as e:
        text_files(p)
    assert str(p) in str(e.value)


def test_text_files_folder_without_text_files(tmp_path):
    (tmp_path / "data.json").write_text("{}", encoding="utf-8")
    (tmp_path / "notes.TXT.bak").write_text("x", encoding="utf-8")
    with pytest.raises(SlmkitError, match="has no") as e:
        text_files(tmp_path)
    assert str(tmp_path) in str(e.value)


def test_text_files_non_utf8_names_the_file(tmp_path):
    (tmp_path / "good.txt").write_text("fine", encoding="utf-8")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    for target in (bad, tmp_path):  # directly and found inside a folder
        with pytest.raises(SlmkitError, match="UTF-8") as e:
            text_files(target)
        assert str(bad) in str(e.value)


# ---- jsonl -----------------------------------------------------------------------------------
def _write_jsonl(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_jsonl_field_reads_the_field(tmp_path):
    p = _write_jsonl(tmp_path / "d.jsonl", [json.dumps({"text": "first", "id": 1}), "",
                                            json.dumps({"text": "second", "id": 2})])
    assert jsonl_field(p).docs == ["first", "second"]
    assert jsonl_field(p, "id").docs == ["1", "2"]
    assert [r["id"] for r in read_jsonl(p)] == [1, 2]


def test_jsonl_missing_field_lists_keys(tmp_path):
    p = _write_jsonl(tmp_path / "d.jsonl", [json.dumps({"body": "x", "title": "y"})])
    with pytest.raises(SlmkitError) as e:
        jsonl_field(p, "text")
    msg = str(e.value)
    assert "'text'" in msg and "body" in msg and "title" in msg and str(p) in msg


def test_jsonl_invalid_json_names_line(tmp_path):
    p = _write_jsonl(tmp_path / "d.jsonl", [json.dumps({"text": "ok"}), json.dumps({"text": "ok"}),
                                            '{"text": "broken'])
    with pytest.raises(SlmkitError, match="not valid JSON") as e:
        jsonl_field(p)
    assert f"{p}:3" in str(e.value)


def test_jsonl_non_object_line(tmp_path):
    p = _write_jsonl(tmp_path / "d.jsonl", [json.dumps({"text": "ok"}), json.dumps(["a", "list"])])
    with pytest.raises(SlmkitError, match="expected a JSON object") as e:
        jsonl_field(p)
    assert f"{p}:2" in str(e.value) and "list" in str(e.value)


def test_jsonl_empty_file(tmp_path):
    p = tmp_path / "empty.jsonl"
    p.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(SlmkitError, match="no records") as e:
        jsonl_field(p)
    assert str(p) in str(e.value)


def test_jsonl_null_field_does_not_become_text_none(tmp_path):
    p = _write_jsonl(tmp_path / "d.jsonl", [json.dumps({"text": "real text"}),
                                            json.dumps({"text": None})])
    try:
        docs = jsonl_field(p).docs
    except SlmkitError:
        return  # refusing the record is fine too
    assert "None" not in docs


# ---- load_text dispatch ----------------------------------------------------------------------
def test_load_text_default_specs():
    assert load_text("default").sha256 == embedded_text("eval").sha256
    assert load_text("default:eval").sha256 == embedded_text("eval").sha256
    assert load_text("default:calib").sha256 == embedded_text("calib").sha256


def test_load_text_paths(tmp_path):
    j = _write_jsonl(tmp_path / "d.jsonl", [json.dumps({"body": "from jsonl"})])
    assert load_text(str(j), field="body").docs == ["from jsonl"]
    t = tmp_path / "d.txt"
    t.write_text("from txt", encoding="utf-8")
    assert load_text(str(t)).docs == ["from txt"]
    # a .jsonl is read as records, not as one raw text document
    assert load_text(str(j), field="body").docs != [j.read_text(encoding="utf-8")]
    with pytest.raises(SlmkitError, match="does not exist"):
        load_text(str(tmp_path / "missing.txt"))


def test_load_text_hf_offline_is_a_clear_error():
    import importlib.util

    with pytest.raises(SlmkitError) as e:
        load_text("hf:slmkit-test-nonexistent/dataset-xyz")
    if importlib.util.find_spec("datasets") is None:
        assert "pip install" in str(e.value)
    else:
        assert "slmkit-test-nonexistent/dataset-xyz" in str(e.value)


def test_load_text_hf_without_datasets_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(SlmkitError, match="pip install"):
        load_text("hf:wikitext:wikitext-2-raw-v1")


# ---- chunk -----------------------------------------------------------------------------------
def test_chunk_shapes_and_contents():
    ids = torch.arange(23)
    rows = chunk(ids, 5)
    assert rows.shape == (4, 5)
    assert torch.equal(rows.flatten(), ids[:20])  # drop_last drops the 3-token tail
    assert torch.equal(chunk(torch.arange(20), 5, drop_last=False), torch.arange(20).view(4, 5))
    assert chunk(ids, 23).shape == (1, 23)
    assert chunk(ids, 1).shape == (23, 1)


def test_chunk_without_drop_last_needs_even_division():
    with pytest.raises(SlmkitError, match="divides evenly"):
        chunk(torch.arange(23), 5, drop_last=False)


@pytest.mark.parametrize("length", [0, -3])
def test_chunk_rejects_length_below_one(length):
    with pytest.raises(SlmkitError, match=">= 1"):
        chunk(torch.arange(10), length)


def test_chunk_rejects_too_short_stream():
    with pytest.raises(SlmkitError, match="fewer than one sequence"):
        chunk(torch.arange(4), 5)
    with pytest.raises(SlmkitError):
        chunk(torch.arange(0), 5, drop_last=False)


# ---- token_stream / calibration_set ------------------------------------------------------------
def test_token_stream_of_empty_text_is_an_error(tiny_tok):
    with pytest.raises(SlmkitError, match="no tokens"):
        token_stream(tiny_tok, TextData("empty", [""]))


def test_calibration_set_shape_seed_and_contiguity(tiny_tok):
    data = embedded_text("calib")
    stream = token_stream(tiny_tok, data)
    n, length = 8, 32
    a = calibration_set(tiny_tok, data, n=n, length=length, seed=0)
    assert a.shape == (n, length) and a.dtype == torch.long
    assert torch.equal(a, calibration_set(tiny_tok, data, n=n, length=length, seed=0))
    assert not torch.equal(a, calibration_set(tiny_tok, data, n=n, length=length, seed=1))
    windows = stream.unfold(0, length, 1)  # every contiguous slice of `length` tokens
    for row in a:
        assert (windows == row).all(dim=1).any(), "row is not a contiguous slice of the stream"


def test_calibration_set_text_shorter_than_length(tiny_tok):
    data = TextData("short", ["just a few words"])
    with pytest.raises(SlmkitError, match="fewer than one calibration sequence") as e:
        calibration_set(tiny_tok, data, n=2, length=512)
    assert "short" in str(e.value)


@pytest.mark.parametrize("n,length", [(0, 16), (4, 1)])
def test_calibration_set_rejects_bad_sizes(tiny_tok, n, length):
    with pytest.raises(SlmkitError):
        calibration_set(tiny_tok, embedded_text("calib"), n=n, length=length)


def test_hf_dataset_real_code_path_on_a_local_dataset(tmp_path):
    """`hf:PATH` goes through `datasets.load_dataset`, which reads a local folder offline."""
    pytest.importorskip("datasets")
    folder = tmp_path / "ds"
    folder.mkdir()
    rows = [{"text": f"document number {i}", "label": i} for i in range(5)]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = load_text(f"hf:{folder}", split="train")
    assert data.docs == [r["text"] for r in rows]
    with pytest.raises(SlmkitError, match="no column 'body'"):
        load_text(f"hf:{folder}", split="train", field="body")
    with pytest.raises(SlmkitError, match="split"):
        load_text(f"hf:{folder}", split="validation")
