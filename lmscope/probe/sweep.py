"""Per-layer probe training: fit each probe type at each hook, test on held-out entities.

One forward pass per batch reads every layer at once; then per layer and
probe type: fit on the train split of the chosen sets (pooled), score the
test split of each set. Pooling e.g. cities with neg_cities is what makes
truth probes generalize (Marks & Tegmark 2023).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .activations import last_token_acts
from .datasets import Dataset
from .probes import Probe, fit


@dataclass
class SplitActs:
    """Activations of one split of several sets: x [n, d] per hook, contrasts, labels, which set."""

    x: dict[str, torch.Tensor]
    contrast: dict[str, torch.Tensor]
    y: torch.Tensor  # [n]
    source: list[str]


def read_split(lm, datasets: list[Dataset], split: str, hooks: list[str], *, contrast: bool,
               batch_size: int = 32, progress: bool = False) -> SplitActs:
    st = [(d.name, s) for d in datasets for s in getattr(d, split)]
    texts = [s.text for _, s in st]
    if contrast:
        texts = texts + [s.contrast for _, s in st]
    acts = last_token_acts(lm, texts, hooks, batch_size=batch_size, progress=progress)
    n = len(st)
    return SplitActs(x={h: a[:n] for h, a in acts.items()},
                     contrast={h: a[n:] for h, a in acts.items()} if contrast else {},
                     y=torch.tensor([s.label for _, s in st]), source=[name for name, _ in st])


@dataclass
class LayerResult:
    hook: str
    kind: str
    train_acc: float
    test_acc: float
    test_acc_by_set: dict[str, float]
    probe: Probe = field(repr=False)


def sweep(lm, datasets: list[Dataset], hooks: list[str], kinds: list[str], *, batch_size: int = 32,
          progress: bool = True, seed: int = 0) -> list[LayerResult]:
    """Fit every kind at every hook on the pooled train splits; accuracy on the test splits."""
    need_contrast = "ccs" in kinds
    tr = read_split(lm, datasets, "train", hooks, contrast=need_contrast, batch_size=batch_size, progress=progress)
    te = read_split(lm, datasets, "test", hooks, contrast=False, batch_size=batch_size, progress=progress)
    out = []
    for h in hooks:
        for kind in kinds:
            probe = fit(kind, h, tr.x[h], tr.y, tr.contrast.get(h), seed=seed)
            by_set = {}
            for d in datasets:
                m = torch.tensor([s == d.name for s in te.source])
                by_set[d.name] = probe.accuracy(te.x[h][m], te.y[m])
            out.append(LayerResult(hook=h, kind=kind, train_acc=probe.accuracy(tr.x[h], tr.y),
                                   test_acc=probe.accuracy(te.x[h], te.y), test_acc_by_set=by_set, probe=probe))
    return out


def plot_curve(results: list[LayerResult], path: str, title: str) -> None:
    """Test accuracy per layer, one line per probe type (PNG; needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        from ..errors import UserError

        raise UserError("the accuracy curve needs matplotlib; install the plot extra: "
                        "pip install 'lmscope[plot]' (or drop --png)") from None
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for kind in dict.fromkeys(r.kind for r in results):
        rs = [r for r in results if r.kind == kind]
        ax.plot([layer_of(r.hook) for r in rs], [r.test_acc for r in rs], marker="o", ms=3, label=kind)
    ax.axhline(0.5, color="gray", lw=0.8, ls="--")
    ax.set_xlabel("layer (resid_post)")
    ax.set_ylabel("held-out accuracy")
    ax.set_ylim(0.3, 1.02)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def layer_of(hook: str) -> int:
    parts = hook.split(".")
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else -1
