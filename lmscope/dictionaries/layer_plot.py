"""The metrics of `lmscope eval` by layer, one PNG: FVU, L0 / k, dead %, added nats, KL.

Drawn from an EvalReport (what eval.json holds), one point per dictionary at its block index,
with the 95% bootstrap intervals as error bars where eval has them (FVU, added nats, KL).
Needs matplotlib (the 'plot' extra), imported only when a plot is drawn.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UserError

if TYPE_CHECKING:
    from .evaluate import EvalReport

LAYER_PLOT = "eval_by_layer.png"
"""File name of the plot in ATLAS/plots/."""


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend; one line saying how to get it if absent."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError(
            "plots need matplotlib: pip install 'lmscope[plot]' (or pass --no-plots)"
        ) from None
    return plt


def _bars(vals: list[float], cis: list[tuple[float, float]]) -> list[list[float]]:
    """matplotlib's yerr: distances below and above each value (0 where the interval is NaN)."""
    lo = [max(0.0, v - c[0]) if c[0] == c[0] else 0.0 for v, c in zip(vals, cis)]
    hi = [max(0.0, c[1] - v) if c[1] == c[1] else 0.0 for v, c in zip(vals, cis)]
    return [lo, hi]


def layer_plot(report: EvalReport, path: Path) -> Path:
    """Five panels against the block index; returns the written path (atomic)."""
    plt = pyplot()
    ds = sorted((e for e in report.dictionaries if e.layer is not None), key=lambda e: e.layer)
    x = [e.layer for e in ds]
    fig, axes = plt.subplots(5, 1, figsize=(7, 11), sharex=True)
    ax = axes[0]
    fvu = [e.fvu for e in ds]
    ax.errorbar(x, fvu, yerr=_bars(fvu, [e.fvu_ci for e in ds]), fmt="o-", ms=3, label="all")
    inl = [e.fvu_inliers for e in ds]
    ax.errorbar(
        x, inl, yerr=_bars(inl, [e.fvu_inliers_ci for e in ds]), fmt="s--", ms=3,
        label="without norm outliers",
    )  # fmt: skip
    ax.set_ylabel("FVU (held-out)")
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.plot(x, [e.l0 for e in ds], "o-", ms=3, label="L0")
    if any(e.k is not None for e in ds):
        ax.plot(x, [e.k if e.k is not None else float("nan") for e in ds], "k:", label="k")
        ax.legend(fontsize=8)
    ax.set_ylim(bottom=0)  # L0 sits at k for TopK: a zoomed axis would magnify 0.1 latents
    ax.set_ylabel("active latents / token")
    ax = axes[2]
    ax.plot(x, [100 * e.dead_frac for e in ds], "o-", ms=3, color="#c00000")
    ax.set_ylabel("dead latents (%)")
    ax = axes[3]
    add = [e.ce_added for e in ds]
    ax.errorbar(x, add, yerr=_bars(add, [e.ce_added_ci for e in ds]), fmt="o-", ms=3)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_ylabel("added loss (nats/token)")
    ax = axes[4]
    kl = [e.kl for e in ds]
    ax.errorbar(x, kl, yerr=_bars(kl, [e.kl_ci for e in ds]), fmt="o-", ms=3, color="#7030a0")
    ax.set_ylabel("KL(clean||spliced)")
    ax.set_xlabel("layer")
    n_ctx = ds[0].contexts if ds else 0
    fig.suptitle(
        f"{report.model}: {len(ds)} dictionaries, {report.tokens:,} held-out tokens "
        f"({n_ctx} contexts, 95% bootstrap intervals)",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path


__all__ = ["LAYER_PLOT", "layer_plot"]
