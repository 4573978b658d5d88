"""The brain map as a PNG heatmap (matplotlib, the `plot` extra)."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .scan import ScanResult


def render_png(res: ScanResult, path: str | Path) -> Path:
    """Write a dictionaries x tokens heatmap of the brain map to `path` (atomic)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("--png needs matplotlib: pip install 'lmscope[plot]'") from None
    import numpy as np

    path = Path(path)
    data = np.asarray(res.brain, dtype=float)  # [n_hooks, pos]
    w = max(4.0, 0.45 * len(res.tokens) + 2.5)
    h = max(2.0, 0.35 * len(res.hooks) + 1.6)
    fig, ax = plt.subplots(figsize=(w, h), dpi=110)
    try:
        im = ax.imshow(data, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks(range(len(res.tokens)))
        # Mathtext would interpret '$' in tokens: escape it.
        ax.set_xticklabels(
            [t.replace("$", r"\$") for t in res.tokens], rotation=60, ha="right", fontsize=8
        )
        ax.set_yticks(range(len(res.hooks)))
        ax.set_yticklabels(res.hooks, fontsize=8)
        ax.set_title(f"feature activity: {res.prompt[:80]!r}".replace("$", r"\$"), fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.03, pad=0.01, label="activity (per dictionary)")
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp.png")
        fig.savefig(tmp)
        tmp.replace(path)
    finally:
        plt.close(fig)
    return path
