"""Which atlas features point along the truth direction: cosine of the probe direction with decoder rows.

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
    """Top `top` features by |cosine| with the probe direction, from the atlas dictionary at the probe's hook."""
    from ..layout import AtlasLayout

    layout = AtlasLayout(atlas)
    if not layout.root.is_dir():
        raise UserError(f"atlas folder {atlas} does not exist")
    dicts = layout.dictionaries()
    if probe.hook not in dicts:
        have = ", ".join(sorted(dicts)) or "none"
        raise UserError(f"the atlas has no dictionary at {probe.hook} (it has: {have}); "
                        f"train a probe at one of those layers or a dictionary at {probe.hook}")
    from ..dictionaries import load_dictionary

    sae = load_dictionary(layout.root / dicts[probe.hook]["path"])
    w_dec = sae.W_dec.detach().float().cpu()  # [d_sae, d_in]
    if w_dec.shape[1] != probe.direction.numel():
        raise UserError(f"the dictionary at {probe.hook} has width {w_dec.shape[1]}, "
                        f"the probe {probe.direction.numel()}")
    d = probe.direction.float() / probe.direction.norm().clamp_min(1e-12)
    cos = (w_dec @ d) / w_dec.norm(dim=1).clamp_min(1e-12)  # [d_sae]
    idx = cos.abs().topk(min(top, len(cos))).indices
    labels = _labels(layout)
    return [AlignedFeature(probe.hook, int(i), float(cos[i]), labels(probe.hook, int(i)) if labels else None)
            for i in idx]


def _labels(layout):
    try:
        from ..read.profiles import open_db
    except ImportError:
        return None
    db = open_db(layout)
    return db.label if db is not None else None


@dataclass(frozen=True)
class AlignConfig:
    """`lmscope probe explain`: the atlas features most aligned with a probe's truth direction."""

    probe: str
    """probe folder"""
    atlas: str
    """atlas folder"""
    top: int = 10
    """how many features"""
