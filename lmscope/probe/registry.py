"""Probe kind -> fitting function: the one place that knows every probe type.

probes.py defines the `Probe` every type ends in and never imports the types; each type's
file (logistic.py, massmean.py, ccs.py) imports probes.py.
"""

from __future__ import annotations

import torch

from .ccs import fit_ccs
from .logistic import fit_logistic
from .massmean import fit_massmean
from .probes import Probe

KINDS = ("logistic", "massmean", "massmean_iid", "ccs")


def fit(
    kind: str,
    hook: str,
    x: torch.Tensor,
    y: torch.Tensor,
    contrast: torch.Tensor | None = None,
    *,
    seed: int = 0,
) -> Probe:
    """Fit a probe of `kind` on activations x [n, d_model], labels y [n] (contrasts for CCS)."""
    if kind == "logistic":
        return fit_logistic(hook, x, y)
    if kind in ("massmean", "massmean_iid"):
        return fit_massmean(hook, x, y, iid=kind == "massmean_iid")
    if kind == "ccs":
        if contrast is None:
            raise ValueError("CCS needs contrast activations")
        return fit_ccs(hook, x, contrast, y, seed=seed)
    raise ValueError(f"unknown probe kind {kind!r}; choose from {', '.join(KINDS)}")


__all__ = ["KINDS", "fit"]
