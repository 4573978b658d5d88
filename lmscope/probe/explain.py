"""Which atlas features point along the truth direction: cosine of the probe direction with decoder
rows.

A dictionary at the probe's hook decodes feature i as W_dec[i] [d_in]; a
feature whose decoder row is aligned (cos > 0) with the truth direction
pushes the residual stream towards "true", anti-aligned towards "false".
Labels come from the atlas DB when one exists; otherwise feature ids are
listed and labels appear after `lmscope explain`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import UserError
from .probes import Probe


@dataclass
class AlignedFeature:
    hook: str
    feature: int
    cosine: float
    label: str | None

    def to_dict(self) -> dict:
        return asdict(self)


def aligned_features(probe: Probe, atlas: str, *, top: int = 10) -> list[AlignedFeature]:
    """Top `top` features by |cosine| with the probe direction, from the atlas dictionary at the
    probe's hook."""
    from ..dictionaries.folder import DictionaryFolder

    folder = DictionaryFolder.open(atlas)
    try:
        (hook,) = folder.select(probe.hook)  # a hook name is a glob without wildcards: itself
    except UserError as e:
        raise UserError(
            f"{e}; train a probe at one of those layers or a dictionary at {probe.hook}"
        ) from None
    sae = folder.load([hook])[hook]  # no model here: the width is checked against the probe
    w_dec = sae.W_dec.detach().float().cpu()  # [d_sae, d_in]
    if w_dec.shape[1] != probe.direction.numel():
        raise UserError(
            f"the dictionary at {probe.hook} has width {w_dec.shape[1]}, "
            f"the probe {probe.direction.numel()}"
        )
    d = probe.direction.float() / probe.direction.norm().clamp_min(1e-12)
    cos = (w_dec @ d) / w_dec.norm(dim=1).clamp_min(1e-12)  # [d_sae]
    idx = cos.abs().topk(min(top, len(cos))).indices
    from ..atlas.db import open_atlas_db

    db = open_atlas_db(folder.layout)
    if db is None:
        return [AlignedFeature(probe.hook, int(i), float(cos[i]), None) for i in idx]
    with db:
        return [
            AlignedFeature(probe.hook, int(i), float(cos[i]), _label(db, probe.hook, int(i)))
            for i in idx
        ]


def _label(db, hook: str, feature: int) -> str | None:
    try:
        return db.label(hook, feature) or None
    except UserError:  # a dictionary the DB has not profiled yet
        return None


@dataclass(frozen=True)
class AlignConfig:
    """`lmscope probe explain`: the atlas features most aligned with a probe's truth direction."""

    probe: str
    """probe folder"""
    atlas: str
    """atlas folder"""
    top: int = 10
    """how many features"""
