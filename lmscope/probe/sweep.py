"""Per-layer probe training: fit on train entities, choose on validation, score test once.

One forward pass per batch reads every layer at once; then per layer and
probe kind: fit on the train split of the chosen sets (pooled; pooling e.g.
cities with neg_cities is what makes truth probes generalize, Marks & Tegmark
2023) and score the validation split (accuracy and AUROC). The (layer, kind)
with the best validation accuracy is chosen (ties: higher validation AUROC,
then the earlier layer), and only that probe is scored on the test split,
with bootstrap intervals over test entities (`metrics.py`). Reporting the
best test score over 30 layers x 3 kinds as "held-out accuracy" would be a
maximum over 90 noisy test scores, not a held-out result (docs/measuring.md: choose on validation).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch

from ..config import flag
from ..models.registry import DEFAULT_MODEL
from .activations import last_token_acts
from .datasets import Dataset, split_entities
from .metrics import Score, accuracy, accuracy_score, auroc, auroc_score
from .probes import Probe, layer_of
from .registry import fit

if TYPE_CHECKING:
    from ..models import LanguageModel


@dataclass
class SplitActs:
    """Activations of one split of several sets: x [n, d] per hook, contrasts, labels, set,
    entity."""

    x: dict[str, torch.Tensor]
    contrast: dict[str, torch.Tensor]
    y: torch.Tensor  # [n]
    source: list[str]
    entity: list[tuple[str, str]]
    """(domain, entity) per statement: the bootstrap's resampling unit."""


def read_split(
    lm: LanguageModel,
    datasets: list[Dataset],
    split: str,
    hooks: list[str],
    *,
    contrast: bool,
    batch_size: int = 32,
    progress: bool = False,
) -> SplitActs:
    st = [(d, s) for d in datasets for s in d.split(split)]
    texts = [s.text for _, s in st]
    if contrast:
        texts = texts + [s.contrast for _, s in st]
    acts = last_token_acts(lm, texts, hooks, batch_size=batch_size, progress=progress)
    n = len(st)
    return SplitActs(
        x={h: a[:n] for h, a in acts.items()},
        contrast={h: a[n:] for h, a in acts.items()} if contrast else {},
        y=torch.tensor([s.label for _, s in st]),
        source=[d.name for d, _ in st],
        entity=[(d.domain, s.entity) for d, s in st],
    )


@dataclass
class LayerResult:
    """One (hook, kind): fitted on train, scored on validation (the test split is not looked at)."""

    hook: str
    kind: str
    train_acc: float
    val_acc: float
    val_auroc: float
    val_acc_by_set: dict[str, float]
    probe: Probe = field(repr=False)


@dataclass
class TestResult:
    """The chosen probe on the test split, scored once."""

    acc: Score
    auroc: Score
    acc_by_set: dict[str, Score]


@dataclass
class SweepResult:
    results: list[LayerResult]
    chosen: LayerResult
    test: TestResult
    split: dict
    """Entities per split and domain, and how the choice was made (recorded in the probe
    artifact)."""


def choose(results: list[LayerResult]) -> LayerResult:
    """The (layer, kind) with the best validation accuracy; ties: validation AUROC, then earlier
    layer."""
    return max(results, key=lambda r: (r.val_acc, _nan0(r.val_auroc), -layer_of(r.hook)))


def _nan0(v: float) -> float:
    return v if v == v else 0.0


def score_test(probe: Probe, te: SplitActs, *, seed: int = 0) -> TestResult:
    x = te.x[probe.hook]
    logits = probe.logits(x)
    by_set = {}
    for name in dict.fromkeys(te.source):
        m = torch.tensor([s == name for s in te.source])
        ents = [e for e, k in zip(te.entity, m.tolist()) if k]
        by_set[name] = accuracy_score(logits[m], te.y[m], ents, seed=seed)
    return TestResult(
        acc=accuracy_score(logits, te.y, te.entity, seed=seed),
        auroc=auroc_score(logits, te.y, te.entity, seed=seed),
        acc_by_set=by_set,
    )


def split_record(datasets: list[Dataset]) -> dict:
    """{domain: {split: sorted entities}} of the sets used: what a reader needs to check for
    leaks."""
    out: dict[str, dict[str, list[str]]] = {}
    for d in datasets:
        if d.domain in out:
            continue
        ents = sorted({s.entity for s in d.all})
        out[d.domain] = {k: sorted(v) for k, v in split_entities(d.domain, ents).items()}
    return out


@dataclass(frozen=True)
class SweepConfig:
    """`lmscope probe train`: fit probes at each layer on train entities, choose on validation,
    report test once, save the chosen probe."""

    model: str = DEFAULT_MODEL
    """alias, Hugging Face id, local folder or .gguf file"""
    model_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """dtype of the model weights (bfloat16 is ~2x faster on CPUs with AVX-512 bf16)"""
    device: str = "cpu"
    """torch device, e.g. cpu, cuda, cuda:1"""
    dataset: str = "cities,neg_cities,larger_than,smaller_than"
    """comma-separated sets pooled for training, or 'all'"""
    layers: str = "all"
    """'all' (every resid_post), layer numbers '8,12' or hook names"""
    kinds: str = "logistic,massmean,ccs"
    """probe types to fit: logistic, massmean, massmean_iid, ccs"""
    save_kind: str = "auto"
    """probe type to save: 'auto' chooses layer and type on validation, or one type whose best
    layer on validation is saved"""
    out: str = "truth_probe"
    """probe folder to write"""
    png: str | None = None
    """accuracy-per-layer curve (default: OUT/accuracy.png; 'none' to skip)"""
    batch_size: int = 32
    """statements per forward pass"""
    force: bool = flag(False, action="store_true")
    """overwrite an existing --out"""


def sweep(
    lm: LanguageModel,
    datasets: list[Dataset],
    hooks: list[str],
    kinds: list[str],
    *,
    batch_size: int = 32,
    progress: bool = True,
    seed: int = 0,
    choose_kinds: list[str] | None = None,
) -> SweepResult:
    """Fit every kind at every hook on the pooled train splits, score validation, choose, test once.

    choose_kinds: the kinds the choice may pick (default: all of `kinds`)."""
    need_contrast = "ccs" in kinds
    tr = read_split(
        lm,
        datasets,
        "train",
        hooks,
        contrast=need_contrast,
        batch_size=batch_size,
        progress=progress,
    )
    va = read_split(
        lm, datasets, "val", hooks, contrast=False, batch_size=batch_size, progress=progress
    )
    out = []
    for h in hooks:
        for kind in kinds:
            probe = fit(kind, h, tr.x[h], tr.y, tr.contrast.get(h), seed=seed)
            lv = probe.logits(va.x[h])
            by_set = {}
            for d in datasets:
                m = torch.tensor([s == d.name for s in va.source])
                by_set[d.name] = accuracy(lv[m], va.y[m])
            out.append(
                LayerResult(
                    hook=h,
                    kind=kind,
                    train_acc=probe.accuracy(tr.x[h], tr.y),
                    val_acc=accuracy(lv, va.y),
                    val_auroc=auroc(lv, va.y),
                    val_acc_by_set=by_set,
                    probe=probe,
                )
            )
    pool = [r for r in out if r.kind in (choose_kinds or kinds)]
    best = choose(pool)
    # The test split is read only now, for the one chosen probe.
    te = read_split(
        lm, datasets, "test", [best.hook], contrast=False, batch_size=batch_size, progress=progress
    )
    split = {
        "entities": split_record(datasets),
        "fit_on": "train",
        "chosen_on": "val",
        "chosen_among": {"hooks": hooks, "kinds": sorted({r.kind for r in pool})},
        "criterion": "validation accuracy (ties: validation AUROC, then the earlier layer)",
        "n_statements": {"train": len(tr.y), "val": len(va.y), "test": len(te.y)},
    }
    return SweepResult(
        results=out, chosen=best, test=score_test(best.probe, te, seed=seed), split=split
    )


def plot_curve(results: list[LayerResult], path: str, title: str) -> None:
    """Validation accuracy per layer, one line per probe type (PNG; needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        from ..errors import UserError

        raise UserError(
            "the accuracy curve needs matplotlib; install the plot extra: "
            "pip install 'lmscope[plot]' (or drop --png)"
        ) from None
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for kind in dict.fromkeys(r.kind for r in results):
        rs = [r for r in results if r.kind == kind]
        ax.plot(
            [layer_of(r.hook) for r in rs], [r.val_acc for r in rs], marker="o", ms=3, label=kind
        )
    ax.axhline(0.5, color="gray", lw=0.8, ls="--")
    ax.set_xlabel("layer (resid_post)")
    ax.set_ylabel("validation accuracy")
    ax.set_ylim(0.3, 1.02)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
