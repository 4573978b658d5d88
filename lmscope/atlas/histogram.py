"""The one histogram type, and the one decoder of the atlas DB's stored activation histograms.

The atlas build counts each feature's nonzero activations on fixed log2 bins (profile.py:
HIST_PER_OCTAVE bins per octave from 2^LOG2_LO) and stores only the nonempty bins:
{"log2_lo", "per_octave", "bins": [bin index...], "counts": [count...]}. `decode_histogram`
turns that into a dense `Histogram` from the first to the last nonempty bin; the terminal
dashboard, the exports and the viewer all read it from there. `linear_histogram` makes the
same type for values the viewer bins itself (logit effects, densities, scores).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch only where a histogram is counted: the DB reads it without torch
    import torch


@dataclass(frozen=True)
class Histogram:
    counts: list[int]
    """[N] counts per bin"""
    edges: list[float]
    """[N + 1] bin edges in value units (activations, logits...): bin i is [edges[i], edges[i+1])"""
    log_scale: bool = False
    """True when the bins are equal in log2 (the activation histograms)"""

    def to_dict(self) -> dict:
        return {"counts": list(self.counts), "edges": list(self.edges), "log_scale": self.log_scale}


def encode_histogram(counts: torch.Tensor, log2_lo: int, per_octave: int) -> dict:
    """counts [N_HIST] on the fixed log2 bins -> the stored sparse form (nonempty bins only)."""
    nz = counts.nonzero(as_tuple=True)[0]
    return {
        "log2_lo": log2_lo,
        "per_octave": per_octave,
        "bins": nz.tolist(),
        "counts": counts[nz].tolist(),
    }


def decode_histogram(stored: dict | None) -> Histogram | None:
    """The stored sparse form -> a dense Histogram from the first to the last nonempty bin
    (None when nothing fired or nothing is stored)."""
    if not stored or not stored.get("bins"):
        return None
    lo, per = stored["log2_lo"], stored["per_octave"]
    by_bin = dict(zip(stored["bins"], stored["counts"]))
    first, last = min(by_bin), max(by_bin)
    return Histogram(
        counts=[int(by_bin.get(b, 0)) for b in range(first, last + 1)],
        edges=[2.0 ** (lo + b / per) for b in range(first, last + 2)],
        log_scale=True,
    )


def linear_histogram(x: torch.Tensor, bins: int) -> Histogram:
    """`bins` equal-width bins over [min, max] of x (a constant x gets a 1e-6 wide range)."""
    import torch

    lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        hi = lo + 1e-6
    counts = torch.histc(x.float(), bins=bins, min=lo, max=hi)
    step = (hi - lo) / bins
    return Histogram(
        counts=[int(c) for c in counts.tolist()], edges=[lo + i * step for i in range(bins)] + [hi]
    )


__all__ = ["Histogram", "decode_histogram", "encode_histogram", "linear_histogram"]
