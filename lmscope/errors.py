"""User-facing errors.

A `UserError` is a mistake the user can fix (bad flag, unknown model, empty
corpus, ...). The CLI prints its message as one line and exits with code 2;
it never shows a traceback for one. Everything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A mistake in the user's input: one line saying what is wrong and how to fix it."""

    exit_code = 2


def close_matches(word: str, candidates: Iterable[str], n: int = 5) -> str:
    """A ' (did you mean: a, b?)' suffix for error messages, or '' if nothing is close."""
    found = difflib.get_close_matches(word, list(candidates), n=n, cutoff=0.5)
    return f" (did you mean: {', '.join(found)}?)" if found else ""
