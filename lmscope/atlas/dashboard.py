"""`lmscope feature`: one feature's profile as a terminal dashboard (its JSON: feature_page.py).

Layout: header (id, label, density, max / mean activation), a unicode histogram of nonzero
activations (log2 bins), the top activating contexts with the active tokens highlighted
(ANSI background shades when stdout is a terminal; otherwise `[token 1.23]` brackets), samples
from lower activation buckets, and the tokens the decoder direction promotes and suppresses.
"""

from __future__ import annotations

from .db import Example, FeatureProfile

_BARS = " ▁▂▃▄▅▆▇█"
_SHADES = (52, 88, 124, 160, 196)  # ANSI 256-color reds, dark to bright


def _spark(counts: list[int]) -> str:
    top = max(counts, default=0)
    if not top:
        return ""
    return "".join(
        _BARS[0 if c == 0 else max(1, round(c / top * (len(_BARS) - 1)))] for c in counts
    )


def render_example(ex: Example, max_act: float, color: bool) -> str:
    out = []
    for i, (tok, a) in enumerate(zip(ex.tokens, ex.acts)):
        t = tok.replace("\n", "\\n")
        if a > 0:
            if color:
                shade = _SHADES[min(len(_SHADES) - 1, int(a / max(max_act, 1e-9) * len(_SHADES)))]
                bold = "\x1b[1m" if i == ex.position else ""
                out.append(f"\x1b[48;5;{shade}m{bold}{t}\x1b[0m")
            else:
                out.append(f"[{t} {a:.2f}]")
        else:
            out.append(t)
    return "".join(out) if color else " ".join(out)


def render(p: FeatureProfile, *, color: bool = False, n_top: int = 10, n_lower: int = 6) -> str:
    lines = [f"{p.hook}/{p.feature}" + (f'  "{p.label}"' if p.label else "  (unlabeled)")]
    if p.density is None:
        lines.append("  no profile yet: run `lmscope atlas build` on this atlas")
    else:
        lines.append(
            f"  density {p.density:.3%} ({p.fires} tokens)   max {p.max_act:.3f}   "
            f"mean {p.mean_act:.4f}   mean when firing {p.mean_firing:.3f}"
        )
        h = p.histogram
        if h is not None:
            lines.append(
                f"  activations {h.edges[0]:.3g} {_spark(h.counts)} {h.edges[-1]:.3g}  (log scale)"
            )
    for e in p.explanations:
        best = max(e.scores, key=lambda s: s.value, default=None)
        sc = f"  [{best.scorer} {best.metric} {best.value:.2f}]" if best else ""
        lines.append(f"  explanation ({e.method} v{e.version}): {e.text}{sc}")
    max_act = p.max_act or 1.0
    if p.top:
        lines.append("")
        lines.append("top activating contexts")
        for ex in p.top[:n_top]:
            lines.append(f"  {ex.score:7.3f}  {render_example(ex, max_act, color)}")
    lower = [e for e in p.quantiles if p.top and e.score < p.top[-1].score] or p.quantiles[
        len(p.quantiles) // 2 :
    ]
    if lower:
        lines.append("")
        lines.append("lower activations (samples per octave bucket)")
        step = max(1, len(lower) // n_lower)
        for ex in lower[::step][:n_lower]:
            lines.append(f"  {ex.score:7.3f}  {render_example(ex, max_act, color)}")
    if p.promoted or p.suppressed:
        lines.append("")
        fmt = lambda xs: "  ".join(f"{x.token!r} {x.value:+.2f}" for x in xs)  # noqa: E731
        lines.append(f"promotes:   {fmt(p.promoted)}")
        lines.append(f"suppresses: {fmt(p.suppressed)}")
    return "\n".join(lines)
