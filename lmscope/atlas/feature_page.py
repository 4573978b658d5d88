"""What is known about one feature: the one JSON structure of `lmscope feature --json`, the
viewer's /api/feature and its feature page (lmscope/viewer/static/pages/20-feature.js).

`from_db` fills it from the atlas DB; the viewer (lmscope.read.profiles) adds what only the
loaded model and dictionaries give when the DB has no answer yet (logit effects computed from
the decoder, density from SAELens' sparsity file). tests/test_viewer.py checks that the
viewer's page reads every field written here.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from ..dictionaries.feature_id import format_feature_id
from .db import AtlasDB, Example, Explanation, LogitEffect
from .histogram import Histogram


@dataclass
class FeatureStats:
    """The atlas build's profile of a feature (present once `lmscope atlas build` has run)."""

    fires: int | None
    """tokens it fired on"""
    max_act: float | None
    mean_act: float | None
    """mean over all tokens"""
    mean_firing: float | None
    """mean over the tokens it fired on"""
    histogram: Histogram | None
    """its nonzero activations on log2 bins"""
    top: list[Example]
    quantiles: list[Example]
    """samples per activation octave (bucket b: [2^(BUCKET_LO+b), 2^(BUCKET_LO+b+1)))"""
    negatives: list[Example]


@dataclass
class LogitEffects:
    """Decoder row times unembedding (the direct path, as SAEDashboard's "logit effects")."""

    promoted: list[LogitEffect]
    suppressed: list[LogitEffect]
    histogram: Histogram | None = None
    """over the whole vocabulary (only when computed from the loaded model)"""


@dataclass
class FeaturePage:
    hook: str
    feature: int
    label: str | None
    density: float | None
    """fraction of tokens it fires on: the atlas build's, else the dictionary's sparsity file"""
    profile: FeatureStats | None
    explanations: list[Explanation] = field(default_factory=list)
    logits: LogitEffects = field(default_factory=lambda: LogitEffects([], []))

    @property
    def id(self) -> str:
        return format_feature_id(self.hook, self.feature)

    def to_dict(self) -> dict:
        """JSON-ready: Histograms as {counts, edges, log_scale}, non-finite numbers as null, and
        each quantile sample with its bucket's activation `range` [lo, hi] (hi null: unbounded)."""
        d = {"id": self.id, **_plain(dataclasses.asdict(self))}
        if self.profile is not None:
            for ex, q in zip(self.profile.quantiles, d["profile"]["quantiles"]):
                q["range"] = _bucket_range(ex.bucket)
        return d


def _bucket_range(bucket: int | None) -> list | None:
    from .profile import bucket_range

    if bucket is None:
        return None
    lo, hi = bucket_range(bucket)
    return [lo if math.isfinite(lo) else 0.0, hi if math.isfinite(hi) else None]


def _plain(x):
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):  # asdict turns a Histogram into exactly Histogram.to_dict()
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_plain(v) for v in x]
    return x


def from_db(db: AtlasDB, hook: str, feature: int) -> FeaturePage:
    """The page from the atlas DB alone (UserError for a dictionary it lacks or an index out of
    range). `profile` is None while the feature has no profile row (atlas build not run)."""
    p = db.feature(hook, feature)
    stats = None
    if p.density is not None:
        stats = FeatureStats(
            p.fires,
            p.max_act,
            p.mean_act,
            p.mean_firing,
            p.histogram,
            p.top,
            p.quantiles,
            p.negatives,
        )
    return FeaturePage(
        hook,
        feature,
        p.label,
        p.density,
        stats,
        p.explanations,
        LogitEffects(p.promoted, p.suppressed),
    )


__all__ = ["FeaturePage", "FeatureStats", "LogitEffects", "from_db"]
