"""The score table: per dictionary, method and scorer, the distribution of scores next to baselines.

A method is marked as beating the baselines (`beats`) only where its mean exceeds both baselines'
means for the same dictionary and scorer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError


@dataclass
class ScoreRow:
    hook: str
    method: str
    scorer: str
    metric: str
    n: int
    mean: float
    median: float
    q25: float
    q75: float
    beats: bool | None = None
    """mean above both baselines (None for baselines or when no baseline was scored)"""


@dataclass
class ScoreReport:
    rows: list[ScoreRow] = field(default_factory=list)
    values: dict = field(default_factory=dict)
    """(hook, method, scorer) -> list of values (for the plot)"""

    @property
    def text(self) -> str:
        head = f"{'dictionary':<24} {'method':<18} {'scorer':<10} {'metric':<18} {'n':>5} {'mean':>6} {'median':>6} {'q25-q75':>11}  beats baselines"
        lines = [head, "-" * len(head)]
        for r in self.rows:
            b = "" if r.beats is None else ("yes" if r.beats else "NO")
            lines.append(f"{r.hook:<24} {r.method:<18} {r.scorer:<10} {r.metric:<18} {r.n:>5} {r.mean:>6.3f} "
                         f"{r.median:>6.3f} {r.q25:>5.2f}-{r.q75:<5.2f}  {b}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"rows": [r.__dict__ for r in self.rows]}


def score_report(atlas: str | Path) -> ScoreReport:
    import numpy as np

    from ..atlas.db import AtlasDB
    from ..atlas.layout import AtlasLayout

    path = AtlasLayout(atlas).db_path
    if not path.is_file():
        raise UserError(f"{atlas} has no atlas.db; run `lmscope atlas build {atlas}` then `lmscope explain {atlas}`")
    db = AtlasDB(path, readonly=True)
    try:
        q = db._q("SELECT d.hook, e.method, s.scorer, s.metric, s.value FROM scores s JOIN explanations e ON "
                  "e.id = s.explanation_id JOIN dictionaries d ON d.id = e.dictionary ORDER BY d.id, e.method, s.scorer")
    finally:
        db.close()
    vals: dict = {}
    metric: dict = {}
    for h, m, s, met, v in q:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        vals.setdefault((h, m, s), []).append(v)
        metric[(h, m, s)] = met
    rep = ScoreReport(values=vals)
    for (h, m, s), v in vals.items():
        a = np.asarray(v)
        rep.rows.append(ScoreRow(h, m, s, metric[(h, m, s)], len(a), float(a.mean()), float(np.median(a)),
                                 float(np.quantile(a, 0.25)), float(np.quantile(a, 0.75))))
    means = {(r.hook, r.method, r.scorer): r.mean for r in rep.rows}
    for r in rep.rows:
        if r.method.startswith("baseline-"):
            continue
        b = [means.get((r.hook, bm, r.scorer)) for bm in ("baseline-random", "baseline-toptoken")]
        b = [x for x in b if x is not None]
        r.beats = all(r.mean > x for x in b) if b else None
    return rep


def plot_report(rep: ScoreReport, path: str | Path) -> Path:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("the score plot needs matplotlib: pip install 'lmscope[plot]'") from None
    keys = sorted(rep.values)
    scorers = sorted({k[2] for k in keys})
    fig, axes = plt.subplots(1, max(1, len(scorers)), figsize=(5 * max(1, len(scorers)), 4 + 0.25 * len(keys)),
                             squeeze=False)
    for ax, s in zip(axes[0], scorers):
        ks = [k for k in keys if k[2] == s]
        try:
            ax.boxplot([rep.values[k] for k in ks], orientation="horizontal")
        except TypeError:  # matplotlib < 3.10
            ax.boxplot([rep.values[k] for k in ks], vert=False)
        ax.set_yticks(range(1, len(ks) + 1), [f"{k[0]}\n{k[1]}" for k in ks], fontsize=7)
        ax.axvline(0.5, color="grey", ls=":", lw=1)
        ax.set_title(s)
        ax.set_xlim(0, 1)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path
