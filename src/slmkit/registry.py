"""One tiny explicit registry: name -> (config class, function).

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
    name: str
    config: type[C]
    fn: Callable[..., Any]
    help: str = ""


class Registry:
    """An ordered mapping of method names to `Entry(config, fn)`."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def add(self, name: str, config: type, fn: Callable[..., Any], help: str = "") -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = Entry(name, config, fn, help)

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
