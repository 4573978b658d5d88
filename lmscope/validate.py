"""Reading files made by strangers: size-checked JSON and small hand-written schemas.

Users download atlases, dictionaries, probes and graphs made by others, so every JSON file
lmscope loads is read through `read_json`: its size is checked with stat() *before* a byte is
read (a 2 GB "examples" field is refused without allocating it), it must be UTF-8 JSON, and
then `check` validates it against a schema written as a plain dict:

    CFG = {"d_in": Int(1, MAX_DIM), "d_sae": Int(1, MAX_LATENTS), "k": Int(1, MAX_LATENTS,
    required=False)}
    raw = read_json(path / "cfg.json", max_bytes=1 << 20, what="dictionary config")
    check(raw, CFG, where=str(path / "cfg.json"))

Every failure is a `UserError` (one line naming the file and the field, exit code 2 in the
CLI). Nothing here runs code from the file: JSON has no object hooks, and the only binary
formats lmscope reads are safetensors and `torch.load(weights_only=True)`.

This module sits at the bottom of the package (it imports only `errors`) so that every stage,
from capture to the viewer, can use it without importing a higher stage.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UserError

MAX_DIM = 1 << 20
"""Largest model width we accept from a file (the widest open models are ~2^14)."""
MAX_LATENTS = 1 << 26
"""Largest dictionary size we accept from a file (Gemma Scope's widest is 2^20)."""
MAX_CONFIG_BYTES = 4 << 20
"""Largest small JSON (cfg.json, manifests, state files) read from disk."""


def read_json(path: str | Path, *, max_bytes: int = MAX_CONFIG_BYTES, what: str = "file") -> Any:
    """The JSON value in `path`, refused (UserError) when missing, too large, not UTF-8 or not
    JSON."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror or e}") from None
    if size > max_bytes:
        raise UserError(
            f"{what} {path} is {_mib(size)}, larger than the {_mib(max_bytes)} allowed; "
            "it is not a file lmscope wrote (re-download or rebuild it)"
        )
    try:
        with open(path, "rb") as f:
            raw = f.read(max_bytes + 1)  # the file may have grown since stat()
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror or e}") from None
    if len(raw) > max_bytes:
        raise UserError(f"{what} {path} is larger than the {_mib(max_bytes)} allowed")
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise UserError(
            f"{what} {path} is not UTF-8 text (a binary or damaged file); re-download or rebuild it"
        ) from None
    except (json.JSONDecodeError, ValueError, RecursionError) as e:
        msg = e.msg if isinstance(e, json.JSONDecodeError) else str(e)
        raise UserError(
            f"{what} {path} is not valid JSON ({msg}); re-download or rebuild it"
        ) from None


def _no_constant(name: str):
    raise ValueError(f"{name} is not allowed")


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n} bytes"


# --- schemas ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Int:
    lo: int = 0
    hi: int = 2**62
    required: bool = True
    nullable: bool = False


@dataclass(frozen=True)
class Num:
    lo: float = -math.inf
    hi: float = math.inf
    required: bool = True
    nullable: bool = False


@dataclass(frozen=True)
class Str:
    max_chars: int = 10_000
    choices: tuple[str, ...] | None = None
    required: bool = True
    nullable: bool = False


@dataclass(frozen=True)
class Bool:
    required: bool = True
    nullable: bool = False


@dataclass(frozen=True)
class List:
    item: Any = None
    """Schema of each item (None: any JSON value)."""
    max_items: int = 1_000_000
    required: bool = True
    nullable: bool = False


@dataclass(frozen=True)
class Obj:
    fields: dict | None = None
    """Schema of known fields (unknown fields are allowed: files from newer or other tools)."""
    max_items: int = 100_000
    required: bool = True
    nullable: bool = False


Schema = Int | Num | Str | Bool | List | Obj | dict


def check(value: Any, schema: Schema, *, where: str) -> Any:
    """`value` if it matches `schema`, else UserError naming `where` and the offending field."""
    _check(value, Obj(schema) if isinstance(schema, dict) else schema, where, "")
    return value


def _check(v: Any, s: Schema, where: str, at: str) -> None:
    if isinstance(s, dict):
        s = Obj(s)
    name = at or "the top level"

    def bad(msg: str) -> UserError:
        return UserError(f"{where}: {name} {msg}; the file is damaged or not one lmscope can read")

    if v is None:
        if s.nullable:
            return
        raise bad("is null")
    if isinstance(s, Bool):
        if not isinstance(v, bool):
            raise bad(f"must be true or false, got {_kind(v)}")
    elif isinstance(s, Int):
        if isinstance(v, bool) or not isinstance(v, int):
            raise bad(f"must be an integer, got {_kind(v)}")
        if not s.lo <= v <= s.hi:
            raise bad(f"must be between {s.lo} and {s.hi}, got {v}")
    elif isinstance(s, Num):
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise bad(f"must be a number, got {_kind(v)}")
        if not (s.lo <= v <= s.hi):  # also refuses NaN
            raise bad(f"must be between {s.lo:g} and {s.hi:g}, got {v}")
    elif isinstance(s, Str):
        if not isinstance(v, str):
            raise bad(f"must be a string, got {_kind(v)}")
        if len(v) > s.max_chars:
            raise bad(f"is {len(v)} characters long, at most {s.max_chars}")
        if s.choices is not None and v not in s.choices:
            raise bad(f"must be one of {', '.join(s.choices)}, got {v[:50]!r}")
    elif isinstance(s, List):
        if not isinstance(v, list):
            raise bad(f"must be a list, got {_kind(v)}")
        if len(v) > s.max_items:
            raise bad(f"has {len(v)} items, at most {s.max_items}")
        if s.item is not None:
            for i, x in enumerate(v):
                _check(x, s.item, where, f"{at}[{i}]")
    elif isinstance(s, Obj):
        if not isinstance(v, dict):
            raise bad(f"must be an object, got {_kind(v)}")
        if len(v) > s.max_items:
            raise bad(f"has {len(v)} fields, at most {s.max_items}")
        for key, sub in (s.fields or {}).items():
            sub_s = Obj(sub) if isinstance(sub, dict) else sub
            path = f"{at}.{key}" if at else f"field {key!r}"
            if key not in v:
                if sub_s.required:
                    raise UserError(
                        f"{where}: {path} is missing; the file is damaged or not one "
                        "lmscope can read"
                    )
                continue
            _check(v[key], sub_s, where, path)
    else:  # pragma: no cover - a schema bug, not bad input
        raise TypeError(f"unknown schema {s!r}")


def _kind(v: Any) -> str:
    return {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
    }.get(type(v), type(v).__name__)


def opt(s: Schema) -> Schema:
    """The same schema, not required."""
    if isinstance(s, dict):
        return Obj(s, required=False)
    return type(s)(**{**s.__dict__, "required": False})


__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_DIM",
    "MAX_LATENTS",
    "Bool",
    "Int",
    "List",
    "Num",
    "Obj",
    "Str",
    "check",
    "opt",
    "read_json",
]
