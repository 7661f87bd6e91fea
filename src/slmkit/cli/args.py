"""Derive argparse options from config dataclasses, so the CLI and the Python API share one schema.

A field `window: int | None` of a config registered under prefix "ppl" becomes `--ppl-window N`;
its help is the field's metadata["help"]; bools become `--x / --no-x`; lists take commas; a
dict field `overrides` becomes a repeatable `--override KEY:name=value,name=value`.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any

from slmkit.errors import SlmkitError


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are slmkit's: one line naming the option and where the
    usage is, exit status 1 (not a usage dump and status 2). Options are never abbreviated.
    Subparsers take the class of their parent, so every command's parser is one of these."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        raise SlmkitError(f"{message} (see `{self.prog} --help`)")


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


def _scalar(text: str):
    low = text.lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def _dict_item(text: str) -> tuple[str, dict]:
    """'down:bits=8,group_size=none' -> ('down', {'bits': 8, 'group_size': None})."""
    key, sep, rest = text.partition(":")
    pairs = [p.partition("=") for p in rest.split(",") if p.strip()]
    if not sep or not key.strip() or not pairs or any(not eq or not k.strip() for k, eq, _ in pairs):
        raise argparse.ArgumentTypeError(f"expected KEY:name=value[,name=value...], got {text!r}")
    return key.strip(), {k.strip().replace("-", "_"): _scalar(v.strip()) for k, _, v in pairs}


_dict_item.__name__ = "KEY:name=value,..."
_scalar.__name__ = "number or text"


def add_config_args(parser: argparse.ArgumentParser, config_cls: type, prefix: str,
                    title: str | None = None, aliases: dict[str, str] | None = None, *,
                    prefixed_flags: bool = True, skip: set[str] | frozenset = frozenset(),
                    group: argparse._ArgumentGroup | None = None) -> set[str]:
    """Add one option per field of `config_cls` (except `skip`); `aliases` maps a field to an
    extra flag; `prefixed_flags=False` gives `--field` instead of `--prefix-field`. Returns the
    names of the fields added."""
    group = group or parser.add_argument_group(title or f"{prefix} options")
    hints = typing.get_type_hints(config_cls)
    defaults = config_cls()
    added = set()
    for f in dataclasses.fields(config_cls):
        if f.name in skip:
            continue
        added.add(f.name)
        tp, optional = _base_type(hints[f.name])
        stem = f.name.replace("_", "-")
        flags = [f"--{prefix}-{stem}" if prefixed_flags else f"--{stem}"]
        if aliases and f.name in aliases:
            flags.append(aliases[f.name])
        default = getattr(defaults, f.name)
        doc = f.metadata.get("help", "").replace("%", "%%")  # argparse %-formats help strings
        help_text = doc + f" (default: {default})".replace("%", "%%")
        dest = f"{prefix}__{f.name}"
        if tp is bool:
            group.add_argument(*flags, dest=dest, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=help_text)
            continue
        if typing.get_origin(tp) is dict or tp is dict:
            flag = flags[0][:-1] if flags[0].endswith("s") else flags[0]  # --override, repeatable
            group.add_argument(flag, dest=dest, type=_dict_item, action="append",
                               default=argparse.SUPPRESS, metavar="KEY:name=value,...",
                               help=doc + " (repeatable)")
            continue
        if typing.get_origin(tp) is typing.Literal:
            group.add_argument(*flags, dest=dest, choices=list(typing.get_args(tp)),
                               default=argparse.SUPPRESS, help=help_text)
            continue
        if typing.get_origin(tp) in (typing.Union, types.UnionType):  # e.g. str | float
            conv = _scalar
        elif typing.get_origin(tp) is list:
            conv = _list_of_str
        elif tp in (int, float, str):
            conv = tp
        else:
            raise TypeError(f"{config_cls.__name__}.{f.name}: unsupported CLI type {tp}")
        group.add_argument(*flags, dest=dest, type=_none_or(conv) if optional else conv,
                           default=argparse.SUPPRESS, metavar=f.name.upper(), help=help_text)
    return added


def given_options(ns: argparse.Namespace, prefix: str) -> dict[str, Any]:
    """Field -> value for the options of `prefix` given on the command line."""
    given = {k.split("__", 1)[1]: v for k, v in vars(ns).items() if k.startswith(prefix + "__")}
    return {k: dict(v) if isinstance(v, list) and v and isinstance(v[0], tuple) else v
            for k, v in given.items()}


def config_from_args(ns: argparse.Namespace, config_cls: type, prefix: str, **extra: Any):
    """Build `config_cls` from the options given on the command line (others keep defaults)."""
    return config_cls(**{**extra, **given_options(ns, prefix)})
