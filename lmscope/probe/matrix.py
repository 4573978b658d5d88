"""Generalization matrix: probes (rows) scored on the test split of statement sets (columns).

    rows = [("cities", fit_on_set(lm, "cities", hook, "logistic")), ...]   # or saved probes
    m = accuracy_matrix(lm, rows, ["cities", "neg_cities", "arithmetic"])
    res = generalization_matrix(MatrixConfig(probe="truth_probe"))   # = `lmscope probe eval`

A row probe fitted here sees only the train split of its set; every cell is
scored on the test split of the column's set (entities never used for
fitting), with accuracy at the probe's own zero logit, AUROC, and 95%
bootstrap intervals over the column's entities. A cell whose set shares a
domain with the row's training set (cities / neg_cities) is still out of
sample: the domains split their entities alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..errors import UserError
from ..models.registry import DEFAULT_MODEL
from .activations import last_token_acts
from .datasets import load_dataset, parse_names
from .metrics import Score, accuracy_score, auroc_score
from .probes import Probe
from .registry import fit

if TYPE_CHECKING:
    from ..models import LanguageModel


@dataclass(frozen=True)
class Cell:
    acc: Score
    auroc: Score


def fit_on_set(
    lm: LanguageModel, name: str, hook: str, kind: str, *, batch_size: int = 32, seed: int = 0
) -> Probe:
    """A probe of `kind` at `hook` fitted on the train split of one built-in set."""
    ds = load_dataset(name)
    texts = [s.text for s in ds.train] + ([s.contrast for s in ds.train] if kind == "ccs" else [])
    x = last_token_acts(lm, texts, [hook], batch_size=batch_size)[hook]  # [n (+ n), d_model]
    m = len(ds.train)
    y = torch.tensor([s.label for s in ds.train])
    return fit(kind, hook, x[:m], y, x[m:] if kind == "ccs" else None, seed=seed)


def accuracy_matrix(
    lm: LanguageModel,
    rows: list[tuple[str, Probe]],
    tests: list[str],
    *,
    batch_size: int = 32,
    seed: int = 0,
) -> dict[str, dict[str, Cell]]:
    """{row label: {test set: Cell}} on the test split of each test set."""
    out: dict[str, dict[str, Cell]] = {label: {} for label, _ in rows}
    for n in tests:
        ds = load_dataset(n)
        hooks = sorted({p.hook for _, p in rows})
        x = last_token_acts(lm, [s.text for s in ds.test], hooks, batch_size=batch_size)
        y = torch.tensor([s.label for s in ds.test])
        ents = [s.entity for s in ds.test]
        for label, probe in rows:
            logits = probe.logits(x[probe.hook])
            out[label][n] = Cell(
                acc=accuracy_score(logits, y, ents, seed=seed),
                auroc=auroc_score(logits, y, ents, seed=seed),
            )
    return out


@dataclass(frozen=True)
class MatrixConfig:
    """A train x test accuracy matrix: saved probes (--probe) or one probe fitted per set
    (--train)."""

    probe: str | None = None
    """probe folder(s), comma-separated (rows of the matrix)"""
    train: str | None = None
    """instead of --probe: fit one probe per set here (rows)"""
    layer: str | None = None
    """with --train: the layer number or hook to probe"""
    kind: str = "logistic"
    """with --train: probe type"""
    dataset: str = "all"
    """test sets (columns), comma-separated or 'all'"""
    model: str | None = None
    """model (default: the probe's own)"""
    device: str = "cpu"
    """torch device"""


@dataclass(frozen=True)
class GeneralizationMatrix:
    """Rows (probes) x columns (test sets) of test-split scores, and what they came from."""

    model: str
    hook: str
    """The hook of the first row's probe (every --train row reads the same one)."""
    tests: list[str]
    cells: dict[str, dict[str, Cell]]

    def to_dict(self) -> dict:
        cells = self.cells
        return {
            "model": self.model,
            "split": "test",
            "matrix": {r: {n: c.acc.value for n, c in v.items()} for r, v in cells.items()},
            "cells": {
                r: {n: {"acc": c.acc.to_dict(), "auroc": c.auroc.to_dict()} for n, c in v.items()}
                for r, v in cells.items()
            },
        }


def generalization_matrix(cfg: MatrixConfig) -> GeneralizationMatrix:
    """Rows from saved probes (all of one model) or fitted here per set (on `cfg.model`, by default
    the default model), each scored on the test split of every set in `cfg.dataset`."""
    from ..models.load import load_model
    from .artifact import open_probe
    from .specs import parse_kinds, resolve_layers

    tests = parse_names(cfg.dataset)
    rows: list[tuple[str, Probe]] = []
    if cfg.probe and cfg.train:
        raise UserError("pass either --probe (saved probes) or --train (fit per set), not both")
    if cfg.probe:
        lm = None
        for path in [s for s in cfg.probe.split(",") if s]:
            probe, meta, lm2 = open_probe(path, cfg.model, cfg.device)
            if lm is not None and lm2.name != lm.name:
                raise UserError("all --probe folders must belong to the same model")
            lm = lm2
            rows.append((f"{path} ({','.join(meta['datasets'])})", probe))
    elif cfg.train:
        if cfg.layer is None:
            raise UserError("--train needs --layer (a layer number or hook name)")
        lm = load_model(cfg.model or DEFAULT_MODEL, device=cfg.device)
        hook = resolve_layers(lm, cfg.layer)
        if len(hook) != 1:
            raise UserError("--layer takes one layer")
        kind = parse_kinds(cfg.kind)[0]
        rows = [(n, fit_on_set(lm, n, hook[0], kind)) for n in parse_names(cfg.train)]
    else:
        raise UserError("pass --probe P (a trained probe) or --train SETS --layer L")
    cells = accuracy_matrix(lm, rows, tests)
    return GeneralizationMatrix(model=lm.name, hook=rows[0][1].hook, tests=tests, cells=cells)


__all__ = [
    "Cell",
    "GeneralizationMatrix",
    "MatrixConfig",
    "accuracy_matrix",
    "fit_on_set",
    "generalization_matrix",
]
