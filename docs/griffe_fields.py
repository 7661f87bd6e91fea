"""A griffe extension for the API pages: a dataclass field without a docstring gets its
`field(metadata={"help": ...})` text (the same text the CLI prints), else its trailing `# comment`,
as its docstring, and `field(default=X, ...)` is shown as `= X`. A field made by a helper that
returns such a call (`calib_dtype: CalibDtype = calib_dtype_field()`) gets the helper's text and
default. The config dataclasses document their fields that way, once, for the CLI, the recipes and
these pages alike."""

from __future__ import annotations

import ast
import io
import textwrap
import tokenize

import griffe


def field_call(value: ast.AST | None) -> ast.Call | None:
    """`value` if it is a `field(...)` / `dataclasses.field(...)` call."""
    if isinstance(value, ast.Call):
        name = getattr(value.func, "id", None) or getattr(value.func, "attr", None)
        if name == "field":
            return value
    return None


def field_default(call: ast.Call) -> str | None:
    """`X` for `field(default=X, ...)`, `F()` for `field(default_factory=F, ...)`."""
    for kw in call.keywords:
        if kw.arg == "default":
            return ast.unparse(kw.value)
        if kw.arg == "default_factory":
            f = kw.value
            return ast.unparse(f.body) if isinstance(f, ast.Lambda) else f"{ast.unparse(f)}()"
    return None


def metadata_help(call: ast.Call) -> str | None:
    """The literal `help` string of `field(..., metadata={"help": ...})`, if there is one."""
    for kw in call.keywords:
        if kw.arg == "metadata" and isinstance(kw.value, ast.Dict):
            for key, text in zip(kw.value.keys, kw.value.values):
                if isinstance(key, ast.Constant) and key.value == "help":
                    try:
                        return str(ast.literal_eval(text))
                    except ValueError:  # not a literal (built at run time)
                        return None
    return None


def trailing_comment(source: str) -> str | None:
    """The comment ending the attribute's source line(s), without `#` and `noqa` notes."""
    try:
        comments = [t.string for t in tokenize.generate_tokens(io.StringIO(source).readline)
                    if t.type == tokenize.COMMENT]
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return None
    text = " ".join(c.lstrip("#").strip() for c in comments if "noqa" not in c and "type:" not in c)
    return text or None


def helper_field(attr: griffe.Attribute, name: str) -> ast.Call | None:
    """The `field(...)` call that the function `name`, as seen from `attr`'s module, returns."""
    try:
        fn = attr.module[name]
        tree = ast.parse(textwrap.dedent(fn.source))
    except (griffe.AliasResolutionError, griffe.CyclicAliasError, KeyError, OSError, SyntaxError):
        return None
    returns = [n.value for n in ast.walk(tree) if isinstance(n, ast.Return)]
    return next((c for c in map(field_call, returns) if c is not None), None)


def classes(obj: griffe.Object):
    """Every class defined in `obj` and below it (aliases skipped)."""
    for member in obj.members.values():
        if member.is_alias:
            continue
        if member.is_class:
            yield member
        if member.is_module or member.is_class:
            yield from classes(member)


class FieldHelp(griffe.Extension):
    """Loaded by mkdocs.yml (`extensions: [docs/griffe_fields.py:FieldHelp]`)."""

    def __init__(self) -> None:
        self.pending: list[tuple[griffe.Attribute, str]] = []  # fields made by a helper call

    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        defaults = {}
        for attr, name in self.pending:
            call = helper_field(attr, name)
            if call is None:
                continue
            if field_default(call) is not None:
                attr.value = defaults[f"{name}()"] = field_default(call)
            if attr.docstring is None and metadata_help(call):
                attr.docstring = griffe.Docstring(metadata_help(call), parent=attr)
        self.pending.clear()
        for cls in classes(pkg):  # the dataclass signatures, made before this hook runs
            init = cls.members.get("__init__")
            if init is not None and not init.is_alias and init.is_function:
                for param in init.parameters:
                    if str(param.default) in defaults:
                        param.default = defaults[str(param.default)]

    def on_attribute_instance(self, *, node, attr, agent, **kwargs) -> None:
        if not isinstance(node, (ast.AnnAssign, ast.Assign)) or not (attr.parent and attr.parent.is_class):
            return
        value = getattr(node, "value", None)
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and not (value.args or value.keywords):
            self.pending.append((attr, value.func.id))
        call = field_call(value)
        if call is not None and field_default(call) is not None:
            attr.value = field_default(call)
        if attr.docstring is not None:
            return
        text = metadata_help(call) if call is not None else None
        if text is None:
            try:
                text = trailing_comment(attr.source)
            except (OSError, ValueError, KeyError):
                text = None
        if text:
            attr.docstring = griffe.Docstring(text, parent=attr)
