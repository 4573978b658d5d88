"""The --layers and --kinds specs of the probe commands, turned into hook names and probe kinds.

resolve_layers(lm, "all")      -> every blocks.L.resid_post
resolve_layers(lm, "8,12")     -> ["blocks.8.resid_post", "blocks.12.resid_post"]
parse_kinds("logistic,ccs")    -> ["logistic", "ccs"]  (UserError with a suggestion on a typo)
"""

from __future__ import annotations

from ..errors import UserError, close_matches
from .registry import KINDS


def resolve_layers(lm, spec: str) -> list[str]:
    """'all' (every resid_post), layer numbers '8,12' or hook names/globs -> hook names."""
    spec = spec.strip()
    if spec == "all":
        return lm.hooks.resolve("blocks.*.resid_post")
    out = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        if item.lstrip("-").isdigit():
            L = int(item)
            if not 0 <= L < lm.n_layers:
                raise UserError(
                    f"layer {L} is out of range; {lm.name} has layers 0..{lm.n_layers - 1}"
                )
            out.append(f"blocks.{L}.resid_post")
        else:
            out.extend(lm.hooks.resolve(item))
    if not out:
        raise UserError("no layers given; pass --layers all, '8,12' or hook names")
    return out


def parse_kinds(spec: str) -> list[str]:
    """Comma-separated probe kinds, each checked against the registered ones."""
    out = [k.strip() for k in spec.split(",") if k.strip()]
    for k in out:
        if k not in KINDS:
            raise UserError(
                f"unknown probe type {k!r}{close_matches(k, KINDS)}; choose from {', '.join(KINDS)}"
            )
    return out


__all__ = ["parse_kinds", "resolve_layers"]
