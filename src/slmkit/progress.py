"""Progress of long work: a rich bar on a terminal; on any other output (a log file, a pipe, CI)
plain lines with the count, the elapsed time and the time left, at most one every
`$SLMKIT_PROGRESS_SECONDS` seconds (default 30), plus one when the work starts and one when it ends."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Callable, Iterator

INTERVAL_ENV = "SLMKIT_PROGRESS_SECONDS"


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class _Lines:
    """The plain-text progress of one task on stderr."""

    def __init__(self, description: str, total: float, unit: str, interval: float):
        self.description, self.total, self.unit, self.interval = description, total, unit, interval
        self.done, self.start = 0.0, time.monotonic()
        self.last = self.start
        self._print("started")

    def advance(self, n: float, description: str | None = None) -> None:
        self.done += n
        if description is not None:
            self.description = description
        now = time.monotonic()
        if now - self.last >= self.interval and self.done < self.total:
            self.last = now
            self._print(self._status(now))

    def close(self) -> None:
        self._print(f"done: {self._count()} in {_clock(time.monotonic() - self.start)}")

    def _count(self) -> str:
        return f"{self.done:,.0f}/{self.total:,.0f} {self.unit}"

    def _status(self, now: float) -> str:
        elapsed = now - self.start
        left = elapsed * (self.total - self.done) / self.done if self.done > 0 else None
        eta = _clock(left) if left is not None else "?"
        return f"{self._count()} ({100 * self.done / max(self.total, 1e-9):.0f}%), {_clock(elapsed)} elapsed, ~{eta} left"

    def _print(self, status: str) -> None:
        note(f"{self.description}: {status}")


def note(message: str) -> None:
    """One line on stderr about work that is about to start (what it costs, where it goes)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get(INTERVAL_ENV, "30")))
    except ValueError:
        return 30.0


@contextlib.contextmanager
def progress_bar(description: str, total: float, unit: str = "tok") -> Iterator[Callable[[float], None]]:
    """`with progress_bar("ppl", n) as advance: advance(k)`; shows the rate and the time left.
    `advance(k, "new description")` also replaces the description (e.g. a running loss)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    if not console.is_terminal:
        lines = _Lines(description, total, unit, _interval())
        yield lines.advance
        lines.close()
        return
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn(f"{unit} ·"), TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=True) as prog:
        task = prog.add_task(description, total=total)

        def advance(n: float, description: str | None = None) -> None:
            if description is None:
                prog.advance(task, n)
            else:
                prog.update(task, advance=n, description=description)

        yield advance
