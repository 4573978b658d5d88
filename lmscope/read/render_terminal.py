"""The scan in a terminal: per token the top features, and the brain map as a unicode heatmap.

ANSI colors only when the output is a TTY (and NO_COLOR is unset); otherwise plain blocks, so
logs and pipes stay clean.
"""

from __future__ import annotations

import os
import sys

from .compare import CompareResult
from .scan import ScanResult

BLOCKS = " ░▒▓█"
# 256-color ramp from dark blue to yellow (viridis-like).
RAMP = (17, 18, 24, 30, 36, 72, 108, 149, 190, 226)


def use_color(stream=None) -> bool:
    stream = stream or sys.stdout
    return hasattr(stream, "isatty") and stream.isatty() and not os.environ.get("NO_COLOR")


def _cell(v: float, color: bool) -> str:
    v = min(max(v, 0.0), 1.0)
    ch = BLOCKS[min(int(v * len(BLOCKS)), len(BLOCKS) - 1)]
    if not color:
        return ch * 2
    # Color mode paints the background, so a weak cell is still a visible dark square.
    c = RAMP[min(int(v * len(RAMP)), len(RAMP) - 1)]
    return f"\x1b[48;5;{c}m  \x1b[0m"


def _short(tok: str, width: int = 12) -> str:
    t = tok.replace("\n", "\\n").replace("\t", "\\t")
    t = "".join(ch if ch.isprintable() else "?" for ch in t)
    return t if len(t) <= width else t[: width - 1] + "…"


def brain_map(res: ScanResult, *, color: bool = False) -> str:
    """Rows = dictionaries (model order), columns = tokens, 2 characters per cell."""
    name_w = max(len(h) for h in res.hooks)
    lines = ["brain map (feature activity per token, normalized per dictionary)"]
    for hook, row in zip(res.hooks, res.brain):
        lines.append(f"{hook:>{name_w}} " + "".join(_cell(v, color) for v in row))
    # Column legend: token index every 5 columns, then the index -> token table below.
    axis = "".join(f"{i:<2d}" if i % 5 == 0 else "  " for i in range(len(res.tokens)))
    lines.append(" " * (name_w + 1) + axis)
    lines.append("tokens: " + "  ".join(f"{i}:{_short(t)!s}" for i, t in enumerate(res.tokens)))
    return "\n".join(lines)


def token_table(res: ScanResult, *, per_token: int = 3) -> str:
    lines = []
    for p, tok in enumerate(res.tokens):
        if p == 0 and res.has_bos:
            continue
        lines.append(f"[{p}] {_short(tok, 30)!r}")
        for hook in res.hooks:
            hits = res.top[hook][p][:per_token]
            if not hits:
                continue
            feats = "; ".join(f"{h.feature} {h.act:.2f} {_label(h.label)}" for h in hits)
            lines.append(f"    {hook}: {feats}")
    return "\n".join(lines)


def _label(label: str | None) -> str:
    return f"«{_short(label, 40)}»" if label else "(unlabeled)"


def render_scan(res: ScanResult, *, color: bool | None = None, per_token: int = 3) -> str:
    color = use_color() if color is None else color
    head = (
        f"scan of {res.prompt!r} on {res.model} ({len(res.tokens)} tokens, {len(res.hooks)} "
        "dictionaries)"
    )
    return "\n\n".join([head, token_table(res, per_token=per_token), brain_map(res, color=color)])


def render_compare(cmp: CompareResult) -> str:
    lines = [
        f"features that differ most: A={cmp.prompt_a!r}  B={cmp.prompt_b!r}",
        f"{'feature':<34} {'A':>8} {'B':>8} {'A-B':>8}  label",
    ]
    for d in cmp.diffs:
        lines.append(f"{d.id:<34} {d.act_a:8.2f} {d.act_b:8.2f} {d.diff:+8.2f}  {_label(d.label)}")
    if not cmp.diffs:
        lines.append("(no feature differs)")
    return "\n".join(lines)
