"""Derive argparse options from config dataclasses, so the CLI and the Python API share one schema.

A field `window: int | None` of a config registered under prefix "ppl" becomes `--ppl-window N`;
its help is the field's metadata["help"]; bools become `--x / --no-x`; lists take commas.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(underlying type, optional?) for annotations like `int | None`."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


def _none_or(conv):
    def parse(text: str):
        return None if text.lower() in ("none", "null", "") else conv(text)
    parse.__name__ = getattr(conv, "__name__", "value")
    return parse


def _list_of_str(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


_list_of_str.__name__ = "comma-separated list"


def add_config_args(parser: argparse.ArgumentParser, config_cls: type, prefix: str,
                    title: str | None = None, aliases: dict[str, str] | None = None) -> None:
    """Add one option per field of `config_cls`; `aliases` maps a field to an extra flag."""
    group = parser.add_argument_group(title or f"{prefix} options")
    hints = typing.get_type_hints(config_cls)
    defaults = config_cls()
    for f in dataclasses.fields(config_cls):
        tp, optional = _base_type(hints[f.name])
        flags = [f"--{prefix}-{f.name.replace('_', '-')}"]
        if aliases and f.name in aliases:
            flags.append(aliases[f.name])
        default = getattr(defaults, f.name)
        help_text = f.metadata.get("help", "") + f" (default: {default})"
        dest = f"{prefix}__{f.name}"
        if tp is bool:
            group.add_argument(*flags, dest=dest, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=help_text)
            continue
        if typing.get_origin(tp) is list:
            conv = _list_of_str
        elif tp in (int, float, str):
            conv = tp
        else:
            raise TypeError(f"{config_cls.__name__}.{f.name}: unsupported CLI type {tp}")
        group.add_argument(*flags, dest=dest, type=_none_or(conv) if optional else conv,
                           default=argparse.SUPPRESS, metavar=f.name.upper(), help=help_text)


def config_from_args(ns: argparse.Namespace, config_cls: type, prefix: str, **extra: Any):
    """Build `config_cls` from the options given on the command line (others keep defaults)."""
    given = {k.split("__", 1)[1]: v for k, v in vars(ns).items() if k.startswith(prefix + "__")}
    return config_cls(**{**extra, **given})
