"""The viewer's API registry: a page's server side is a function registered for a path.

    from lmscope.viewer.routes import route, Request

    @route("POST", "/api/trace")
    def trace(req: Request) -> dict:           # returns JSON; raise ApiError(400, "...") on bad
    input
        prompt = req.text("prompt")
        ...

Every module in `lmscope/viewer/api/` is imported at server start, so a later page (trace,
graph, steering, probe) adds its API by adding one file there and its front end by adding
`static/pages/<name>.js` (which calls `lmscope.registerPage`). Nothing else to edit.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs

ROUTES: dict[tuple[str, str], Callable] = {}
MODEL_RUNS: dict[tuple[str, str], Callable[[Request], bool]] = {}
"""Routes that run the model, with a predicate on the request: the server admits these through a
bounded queue (503 when full) because each one holds the model for up to seconds."""


class ApiError(Exception):
    """An HTTP error with a one-line message sent as {"error": message}."""

    def __init__(self, status: int, message: str, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def route(method: str, path: str, *, runs_model: bool | Callable[[Request], bool] = False):
    """Register `fn` for method + path; runs_model (or a predicate on the request) marks a model
    run."""

    def deco(fn):
        ROUTES[(method.upper(), path)] = fn
        if runs_model:
            MODEL_RUNS[(method.upper(), path)] = (
                runs_model if callable(runs_model) else (lambda req: True)
            )
        return fn

    return deco


@dataclass
class Request:
    """A parsed API request: query parameters, JSON body (POST), the shared Reader, limits."""

    reader: object
    query: dict[str, list[str]]
    body: dict = field(default_factory=dict)
    limits: object = None

    @classmethod
    def parse_query(cls, qs: str) -> dict[str, list[str]]:
        return parse_qs(qs, keep_blank_values=True)

    def get(self, name: str, default=None):
        if name in self.body:
            return self.body[name]
        vals = self.query.get(name)
        return vals[0] if vals else default

    def text(self, name: str, *, required: bool = True, max_chars: int | None = None) -> str | None:
        val = self.get(name)
        if val is None:
            if required:
                raise ApiError(400, f"missing field {name!r}")
            return None
        if not isinstance(val, str):
            raise ApiError(400, f"field {name!r} must be a string")
        limit = max_chars or getattr(self.limits, "max_text_chars", 20000)
        if len(val) > limit:
            raise ApiError(
                413, f"field {name!r} is too long ({len(val)} characters, at most {limit})"
            )
        return val

    def int(self, name: str, default: int, lo: int, hi: int) -> int:
        val = self.get(name, default)
        try:
            val = int(val)
        except (TypeError, ValueError):
            raise ApiError(400, f"field {name!r} must be an integer") from None
        if not lo <= val <= hi:
            raise ApiError(400, f"field {name!r} must be between {lo} and {hi}, got {val}")
        return val

    def float(self, name: str, default: float, lo: float, hi: float) -> float:
        val = self.get(name, default)
        if isinstance(val, bool):
            raise ApiError(400, f"field {name!r} must be a number")
        try:
            val = float(val)
        except (TypeError, ValueError):
            raise ApiError(400, f"field {name!r} must be a number") from None
        if not lo <= val <= hi:  # also refuses NaN
            raise ApiError(400, f"field {name!r} must be between {lo:g} and {hi:g}, got {val:g}")
        return val

    def strings(self, name: str, *, max_items: int, max_chars: int = 500) -> list[str]:
        """A JSON list of strings (missing = empty); 400 on anything else or beyond the limits."""
        val = self.get(name, [])
        if val is None:
            return []
        if not isinstance(val, list) or not all(isinstance(v, str) for v in val):
            raise ApiError(400, f"field {name!r} must be a list of strings")
        if len(val) > max_items:
            raise ApiError(400, f"field {name!r} has {len(val)} items, at most {max_items}")
        for v in val:
            if len(v) > max_chars:
                raise ApiError(
                    400,
                    f"an item of {name!r} is too long ({len(v)} characters, at most {max_chars})",
                )
        return val


def model_lock(reader):
    """The lock that serializes model runs: hooks live on shared modules, so a steer or graph
    run must not overlap a scan. The Reader holds it while it runs; reuse it."""
    return reader._lock


def load_api_modules() -> None:
    """Import every module of lmscope.viewer.api (each registers its routes)."""
    from . import api

    for mod in pkgutil.iter_modules(api.__path__):
        importlib.import_module(f"{api.__name__}.{mod.name}")
