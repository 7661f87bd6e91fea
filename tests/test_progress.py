"""Progress on plain (non-terminal) output: lines with the count, elapsed time and time left."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from slmkit.progress import INTERVAL_ENV, progress_bar


def test_plain_output_gets_start_status_and_end_lines(capsys, monkeypatch):
    monkeypatch.setenv(INTERVAL_ENV, "0")
    with progress_bar("calibrating", 40, unit="seq") as advance:
        advance(10)
        advance(10, "calibrating layer 2")
        advance(20)
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].endswith("calibrating: started")
    assert re.search(r"calibrating: 10/40 seq \(25%\), 0:00 elapsed, ~0:00 left$", lines[1])
    assert "calibrating layer 2: 20/40 seq (50%)" in lines[2]
    assert re.search(r"calibrating layer 2: done: 40/40 seq in 0:00$", lines[-1])
    assert len(lines) == 4                      # no status line once everything is done


def test_status_lines_are_rate_limited(capsys, monkeypatch):
    monkeypatch.setenv(INTERVAL_ENV, "3600")
    with progress_bar("ppl", 100) as advance:
        for _ in range(100):
            advance(1)
    lines = capsys.readouterr().err.strip().splitlines()
    assert [line.split("] ", 1)[1] for line in lines] == ["ppl: started", "ppl: done: 100/100 tok in 0:00"]


def test_a_command_writing_to_a_pipe_reports_progress(tmp_path):
    code = ("from slmkit.progress import progress_bar\n"
            "import time\n"
            "with progress_bar('work', 3, unit='step') as advance:\n"
            "    for _ in range(3):\n"
            "        time.sleep(0.05); advance(1)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, INTERVAL_ENV: "0.01"})
    assert run.returncode == 0, run.stderr
    assert "work: 1/3 step (33%)" in run.stderr and "left" in run.stderr
    assert "work: done: 3/3 step in 0:00" in run.stderr
