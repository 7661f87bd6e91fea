"""Progress bars for long work (rich), quiet when output is not a terminal."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator


@contextlib.contextmanager
def progress_bar(description: str, total: float, unit: str = "tok") -> Iterator[Callable[[float], None]]:
    """`with progress_bar("ppl", n) as advance: advance(k)`; shows rate and time left on a TTY.
    `advance(k, "new description")` also replaces the description (e.g. a running loss)."""
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    console = Console(stderr=True)
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn(f"{unit} ·"), TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=True,
                  disable=not console.is_terminal) as prog:
        task = prog.add_task(description, total=total)
        def advance(n: float, description: str | None = None) -> None:
            if description is None:
                prog.advance(task, n)
            else:
                prog.update(task, advance=n, description=description)

        yield advance
