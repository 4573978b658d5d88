"""The scan in a terminal: per token the top features, and the brain map as a unicode heatmap.

ANSI colors only when the output is a TTY (and NO_COLOR is unset); otherwise plain blocks, so
logs and pipes stay clean.
"""

from __future__ import annotations

import os
import shutil
import sys

from .compare import CompareResult, DiffMap
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


def _fit(v: float | None) -> str:
    """The row's explained fraction as a column ('93%', '-12%', '<-999%', '-'); the JSON has
    the exact value."""
    if v is None:
        return "-"
    return "<-999%" if v < -9.99 else f"{v * 100:.0f}%"


def _grid(
    names: list[str],
    rows: list[list[float]],
    tokens: list[str],
    *,
    color: bool,
    side: list[str] | None = None,
    width: int | None = None,
) -> list[str]:
    """Rows x tokens heatmap, 2 characters per cell, wrapped into column chunks that fit `width`
    (default: the terminal's width, 100 when unknown); each chunk has its own position axis."""
    name_w = max(len(h) for h in names)
    side_w = (max(len(t) for t in side) + 1) if side else 0
    width = width or shutil.get_terminal_size((100, 24)).columns
    per = max(5, (width - name_w - side_w - 1) // 2)
    n = len(tokens)
    lines = []
    for lo in range(0, max(n, 1), per):
        hi = min(n, lo + per)
        if n > per:
            lines.append(f"positions {lo}-{hi - 1} of {n}")
        for r, (name, row) in enumerate(zip(names, rows)):
            left = f"{name:>{name_w}} " + (f"{side[r]:>{side_w - 1}} " if side else "")
            lines.append(left + "".join(_cell(v, color) for v in row[lo:hi]))
        axis = "".join(f"{i:<2d}" if i % 5 == 0 else "  " for i in range(lo, hi))
        # An index >= 100 takes 3 characters: the axis then shifts by one; still readable.
        lines.append(" " * (name_w + 1 + side_w) + axis)
    return lines


def brain_map(res: ScanResult, *, color: bool = False, width: int | None = None) -> str:
    """Rows = dictionaries (model order), columns = tokens, 2 characters per cell; the layer's
    fit (1 - FVU on this prompt) before each row."""
    if res.brain_norm == "corpus_mean":
        head = (
            "brain map: feature activity per token vs the layer's mean over the atlas corpus "
            "(log scale: blank <= 1/4x, ▒ ~ 1x, █ >= 4x);"
        )
    else:
        head = "brain map: feature activity per token, normalized per dictionary (row max = █);"
    lines = [head, "fit = 1 - FVU of the dictionary's output on this prompt (BOS excluded)"]
    lines.append(" " * (max(len(h) for h in res.hooks) + 1) + "  fit")
    lines += _grid(
        res.hooks,
        res.brain,
        res.tokens,
        color=color,
        side=[_fit(v) for v in res.explained] if res.explained else None,
        width=width,
    )
    lines.append("tokens: " + "  ".join(f"{i}:{_short(t)!s}" for i, t in enumerate(res.tokens)))
    return "\n".join(lines)


def diff_map_text(m: DiffMap, *, color: bool = False, width: int | None = None) -> str:
    """The diff map: layers x aligned positions, cell = share of the features that changed."""
    lines = [
        "diff map: how much each layer's features change at each position, A vs B "
        "(blank = same features, █ = none in common); mean = mean change over positions (BOS "
        "excluded)"
    ]
    lines.append(" " * (max(len(h) for h in m.hooks) + 1) + " mean")
    tokens = [a if a == b else f"{a}/{b}" for a, b in zip(m.tokens_a, m.tokens_b)]
    lines += _grid(
        m.hooks,
        m.change,
        tokens,
        color=color,
        side=[f"{v * 100:3.0f}%" for v in m.layer_change()],
        width=width,
    )
    lines.append("positions: " + "  ".join(f"{i}:{_short(t, 16)!s}" for i, t in enumerate(tokens)))
    if m.first_diff is not None:
        lines.append(f"first differing token at position {m.first_diff}")
    if m.note:
        lines.append(m.note)
    return "\n".join(lines)


MANY_DICTIONARIES = 8
"""Above this many dictionaries (a whole-model atlas), the token table lists each token's
strongest features over all layers instead of every layer's (30 layers x 3 = 90 lines a token)."""


def token_table(res: ScanResult, *, per_token: int = 3) -> str:
    lines = []
    refs = dict(zip(res.hooks, res.layer_ref or [None] * len(res.hooks)))
    many = len(res.hooks) > MANY_DICTIONARIES
    if many:
        lines.append(
            f"(top {per_token} features per token over all {len(res.hooks)} layers, ranked by "
            "activation / the layer's corpus mean activity; --json has every layer's)"
        )
    for p, tok in enumerate(res.tokens):
        if p == 0 and res.has_bos:
            continue
        lines.append(f"[{p}] {_short(tok, 30)!r}")
        if many:
            hits = [h for hook in res.hooks for h in res.top[hook][p]]
            hits.sort(key=lambda h: -h.act / (refs.get(h.hook) or 1.0))
            for h in hits[:per_token]:
                lines.append(f"    {h.id} {h.act:.2f} {_label(h.label)}")
            continue
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


def render_diff(cmp: CompareResult, *, color: bool | None = None) -> str:
    """The features that differ most, then the diff map."""
    color = use_color() if color is None else color
    out = render_compare(cmp)
    if cmp.map is not None:
        out += "\n\n" + diff_map_text(cmp.map, color=color)
    return out


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
