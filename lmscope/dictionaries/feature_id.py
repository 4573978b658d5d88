"""A feature's id, HOOK/INDEX (e.g. blocks.15.resid_post/1234): the one format and the one parser.

The hook is the dictionary's name in the atlas (it may itself hold '/', so the index is what
follows the last one); the index is a non-negative decimal integer. Every command, the viewer's
URLs and every JSON output use these two functions.
"""

from __future__ import annotations

import re

from ..errors import UserError

_INDEX = re.compile(
    r"[0-9]+"
)  # ASCII digits only: str.isdigit() also accepts '²', which int() refuses


def format_feature_id(hook: str, feature: int) -> str:
    return f"{hook}/{feature}"


def parse_feature_id(text: str) -> tuple[str, int]:
    """'blocks.15.resid_post/1234' -> ('blocks.15.resid_post', 1234); one UserError line otherwise
    (no '/', an empty hook, a negative or non-numeric index)."""
    hook, sep, idx = text.strip().rpartition("/")
    if not sep or not hook or not _INDEX.fullmatch(idx):
        raise UserError(
            f"feature id {text!r} should look like HOOK/INDEX with a non-negative INDEX, "
            "e.g. blocks.15.resid_post/1234"
        )
    return hook, int(idx)


__all__ = ["format_feature_id", "parse_feature_id"]
