"""Frozen-dataclass configs and the CLI generated from them.

Every stage's settings are a frozen dataclass with a docstring under each
field (docs/STYLE.md #2). `add_arguments` turns one into argparse flags
whose help text *is* that docstring, and `from_args` builds the dataclass back
from the parsed namespace, so the CLI and the Python API cannot drift apart.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import re
import textwrap
import types
import typing
from functools import cache
from typing import Any, Literal, get_args, get_origin

from .errors import UserError

_COUNT = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kKmMbBgG]?)\s*$")
_MULT = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9}


def parse_count(text: str | int) -> int:
    """'200000', '200k', '2M', '1.5M' -> int. Raises UserError on garbage."""
    if isinstance(text, int):
        return text
    m = _COUNT.match(str(text))
    if not m:
        raise UserError(f"not a count: {text!r} (use a number like 200000, 200k or 2M)")
    return int(round(float(m.group(1)) * _MULT[m.group(2).lower()]))


@cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each dataclass field, read from the class source."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for a, b in zip(body, body[1:]):
            if (
                isinstance(a, ast.AnnAssign)
                and isinstance(a.target, ast.Name)
                and isinstance(b, ast.Expr)
                and isinstance(b.value, ast.Constant)
                and isinstance(b.value.value, str)
            ):
                docs[a.target.id] = " ".join(b.value.value.split())
    return docs


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _converter(name: str, tp: Any):
    base, _ = _unwrap_optional(tp)
    origin = get_origin(base)
    if base is bool:
        return None
    if base is int:
        return parse_count
    if base is float:

        def to_float(s: str) -> float:
            try:
                return float(s)
            except ValueError:
                raise argparse.ArgumentTypeError(f"--{name} needs a number, got {s!r}") from None

        return to_float
    if origin is tuple or base is tuple:
        inner = get_args(base)[0] if get_args(base) else str
        conv = _converter(name, inner) or str
        return lambda s: tuple(conv(p.strip()) for p in s.split(",") if p.strip())
    if origin is Literal:
        return str
    return str


def flag(default: Any = dataclasses.MISSING, **argparse_kw: Any) -> Any:
    """A dataclass field whose flag needs more than its type says: `action="store_true"` (a bool
    switch without a --no- twin), `action="append"` (a repeatable flag filling a tuple),
    `nargs`, `metavar`. Everything else (help, default, type, choices) still comes from the
    field."""
    bad = set(argparse_kw) - {"action", "nargs", "metavar"}
    if bad or argparse_kw.get("action") not in (None, "store_true", "append"):
        raise TypeError(
            f"flag() takes action (store_true/append), nargs, metavar, not {argparse_kw}"
        )
    return dataclasses.field(default=default, metadata={"argparse": argparse_kw})


def add_arguments(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    positional: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
    rename: dict[str, str] | None = None,
) -> None:
    """Add one flag per field of dataclass `cls`; help text = the field's docstring.

    A field without a default is a required flag (or a required positional)."""
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    rename = rename or {}
    for f in dataclasses.fields(cls):
        if f.name in exclude or not f.init:
            continue
        tp = hints[f.name]
        base, _ = _unwrap_optional(tp)
        help_text = docs.get(f.name, "")
        extra = dict(f.metadata.get("argparse", {}))
        no_factory = f.default_factory is dataclasses.MISSING  # type: ignore[misc]
        required = f.default is dataclasses.MISSING and no_factory
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        conv = _converter(f.name, tp)
        if "nargs" in extra or extra.get("action") == "append":  # argparse collects the items
            inner = get_args(base)[0] if get_args(base) else str
            conv = _converter(f.name, inner) or str
            if extra.get("action") == "append":
                default = list(default or ())  # argparse appends to (a copy of) the default
        flag = "--" + rename.get(f.name, f.name).replace("_", "-")
        kw: dict[str, Any] = {"dest": f.name, "help": help_text}
        if f.name in positional:
            parser.add_argument(
                f.name,
                type=conv,
                help=help_text,
                **extra,
                **({"nargs": "?", "default": default} if default is not None else {}),
            )
            continue
        if required:
            kw["required"] = True
        if base is bool:
            if extra.get("action") == "store_true":
                parser.add_argument(flag, default=default, **extra, **kw)
            else:
                parser.add_argument(
                    flag, action=argparse.BooleanOptionalAction, default=default, **kw
                )
            continue
        if get_origin(base) is Literal:
            kw["choices"] = list(get_args(base))
        shown = ",".join(map(str, default)) if isinstance(default, (tuple, list)) else default
        if shown is not None and shown != "":
            kw["help"] = f"{help_text} (default: {shown})"
        parser.add_argument(flag, type=conv, default=default, **extra, **kw)


def from_args(cls: type, ns: argparse.Namespace, **overrides: Any):
    """Build dataclass `cls` from parsed args; `__post_init__` errors become UserError."""
    values = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.name in overrides:
            values[f.name] = overrides[f.name]
        elif hasattr(ns, f.name):
            v = getattr(ns, f.name)
            values[f.name] = tuple(v) if isinstance(v, list) else v  # append/nargs give lists
    try:
        return cls(**values)
    except (ValueError, TypeError) as e:
        raise UserError(str(e)) from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-safe dict of a (nested) dataclass."""
    d = dataclasses.asdict(cfg)
    return json.loads(json.dumps(d, default=str))
