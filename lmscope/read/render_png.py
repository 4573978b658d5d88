"""The brain map (and the --vs diff map) as a PNG heatmap (matplotlib, the `plot` extra)."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .compare import CompareResult
from .scan import ScanResult


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("--png needs matplotlib: pip install 'lmscope[plot]'") from None
    return plt


def _esc(text: str) -> str:
    """Mathtext would interpret '$' in tokens: escape it."""
    return text.replace("$", r"\$")


def _fit_label(hook: str, fit: float | None) -> str:
    return f"{hook}  fit {fit:.0%}" if fit is not None else f"{hook}  fit -"


def _heat(ax, fig, data, xlabels, ylabels, title, cbar_label, cmap="viridis"):
    im = ax.imshow(data, aspect="auto", cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks(range(len(xlabels)))
    ax.set_xticklabels([_esc(t) for t in xlabels], rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(ylabels)))
    ax.set_yticklabels(ylabels, fontsize=7 if len(ylabels) > 12 else 8)
    ax.set_title(_esc(title), fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.01, label=cbar_label)


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    tmp.replace(path)


def _scale_label(res: ScanResult) -> str:
    if res.brain_norm == "corpus_mean":
        return "activity vs layer's corpus mean (0.5 = mean, +-0.25 = x2)"
    return "activity / row max on this prompt"


def render_png(res: ScanResult, path: str | Path, cmp: CompareResult | None = None) -> Path:
    """Write the dictionaries x tokens brain map to `path` (atomic), each row labelled with the
    layer's fit (1 - FVU on this prompt); with `cmp` (a --vs comparison), the diff map below."""
    import numpy as np

    plt = _plt()
    path = Path(path)
    n_rows = len(res.hooks)
    panels = 2 if cmp is not None and cmp.map is not None else 1
    w = max(5.0, 0.4 * len(res.tokens) + 4.0)
    h = max(2.2, 0.22 * n_rows + 1.8)
    fig, axes = plt.subplots(panels, 1, figsize=(w, h * panels), dpi=110, squeeze=False)
    try:
        fits = res.explained or [None] * n_rows
        _heat(
            axes[0][0],
            fig,
            np.asarray(res.brain, dtype=float),  # [n_hooks, pos]
            res.tokens,
            [_fit_label(hk, f) for hk, f in zip(res.hooks, fits)],
            f"brain map: {res.prompt[:80]!r}",
            _scale_label(res),
        )
        if panels == 2:
            _diff_heat(
                axes[1][0], fig, cmp, f"diff map vs {cmp.prompt_b[:60]!r} (row: mean change)"
            )
        _save(fig, path)
    finally:
        plt.close(fig)
    return path


def _diff_heat(ax, fig, cmp: CompareResult, title: str) -> None:
    """The --vs diff map (layers x aligned positions; row label: the layer's mean change)."""
    import numpy as np

    m = cmp.map
    _heat(
        ax,
        fig,
        np.asarray(m.change, dtype=float),  # [n_hooks, n_aligned]
        [a if a == b else f"{a} / {b}" for a, b in zip(m.tokens_a, m.tokens_b)],
        [f"{hk}  {v:.0%}" for hk, v in zip(m.hooks, m.layer_change())],
        title,
        "share of features changed",
        cmap="magma",
    )


def render_diff_png(cmp: CompareResult, path: str | Path) -> Path:
    """Write only the --vs diff map (layers x aligned positions) to `path` (atomic)."""

    if cmp.map is None:
        raise ValueError("this comparison has no diff map")
    plt = _plt()
    path = Path(path)
    m = cmp.map
    w = max(5.0, 0.4 * m.n_aligned + 4.0)
    h = max(2.2, 0.22 * len(m.hooks) + 1.8)
    fig, ax = plt.subplots(figsize=(w, h), dpi=110)
    try:
        _diff_heat(ax, fig, cmp, f"diff map: {cmp.prompt_a[:50]!r} vs {cmp.prompt_b[:50]!r}")
        _save(fig, path)
    finally:
        plt.close(fig)
    return path
