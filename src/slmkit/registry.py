"""One tiny explicit registry: name -> (config class, function, and the facts callers need).

No package walking and no import-time magic: every entry is written down where its registry is
defined, e.g. `slmkit.eval.tasks.TASKS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

from slmkit.errors import SlmkitError

C = TypeVar("C")


@dataclass(frozen=True)
class Entry(Generic[C]):
    """A method: its config class, the function that applies it, a one-line help, whether it
    needs calibration data (a bool, or a function of the config), and an optional `preflight`
    check of (model, config) that runs before any heavy work."""

    name: str
    config: type[C]
    fn: Callable[..., Any]
    help: str = ""
    calibrates: bool | Callable[[Any], bool] = True
    preflight: Callable[[Any, Any], None] | None = None

    def needs_calibration(self, config: C) -> bool:
        return self.calibrates(config) if callable(self.calibrates) else self.calibrates


class Registry:
    """An ordered mapping of method names to `Entry(config, fn)`."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def add(self, name: str, config: type, fn: Callable[..., Any], help: str = "", *,
            calibrates: bool | Callable[[Any], bool] = True,
            preflight: Callable[[Any, Any], None] | None = None) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = Entry(name, config, fn, help, calibrates, preflight)

    def get(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise SlmkitError(
                f"unknown {self.kind} {name!r}; choose from: {', '.join(self._entries)}"
            ) from None

    def for_config(self, config: object) -> Entry:
        """The entry whose config class is exactly `type(config)`."""
        for entry in self._entries.values():
            if type(config) is entry.config:
                return entry
        raise SlmkitError(f"no {self.kind} takes {type(config).__name__}; "
                          f"choose from: {', '.join(self._entries)}")

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries
