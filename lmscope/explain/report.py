"""The score table: per dictionary, method and scorer, the method's scores next to its own
baselines,
compared PAIRED per feature with a bootstrap interval (docs/measuring.md: small samples).

For each feature scored by both a method and one of its baselines (the baselines stored `for` that
method, never another method's), d = method score - baseline score. The row shows the mean of d and
a 95% percentile bootstrap interval over features (features resampled with replacement, `B`
resamples, seeded). It says "beats" only when the whole interval is above 0, "does not beat"
otherwise, per scorer: a higher mean alone is not a claim.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError

B = 2000
"""bootstrap resamples"""
COMPACT = 3
"""above this many dictionaries the text shows "all" in full plus one line per dictionary"""
BASELINES = ("baseline-random", "baseline-toptoken")


@dataclass
class Paired:
    """The paired comparison of a method with one baseline on one scorer."""

    baseline: str
    n: int
    """features scored by both"""
    mean_diff: float
    lo: float
    hi: float
    """95% bootstrap interval of the mean difference"""

    @property
    def beats(self) -> bool:
        return self.n > 0 and self.lo > 0

    @property
    def verdict(self) -> str:
        return "beats" if self.beats else "does not beat"


def paired_bootstrap(diffs, b: int = B, seed: int = 0) -> tuple[float, float, float]:
    """(mean, 2.5% and 97.5% percentiles of the resampled means) of per-feature differences."""
    import numpy as np

    d = np.asarray(diffs, dtype=float)
    if d.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    step = max(1, 2_000_000 // d.size)  # resamples per chunk: bounded memory for 100k+ features
    means = np.concatenate(
        [
            d[rng.integers(0, d.size, size=(min(step, b - i), d.size))].mean(1)
            for i in range(0, b, step)
        ]
    )  # [b]
    lo, hi = np.quantile(means, [0.025, 0.975])
    return float(d.mean()), float(lo), float(hi)


@dataclass
class ScoreRow:
    hook: str
    """a dictionary's hook, or "all" (every dictionary's features together)"""
    method: str
    """the method, or "baseline-random (for stats)" for a baseline's own distribution"""
    scorer: str
    metric: str
    n: int
    mean: float
    median: float
    q25: float
    q75: float
    paired: list[Paired] = field(default_factory=list)
    """the method minus each of its baselines, per feature (empty for baseline rows)"""

    @property
    def beats(self) -> bool | None:
        """beats every baseline (paired interval above 0); None for baselines / nothing to pair"""
        return all(p.beats for p in self.paired) if self.paired else None


@dataclass
class ScoreReport:
    rows: list[ScoreRow] = field(default_factory=list)
    values: dict = field(default_factory=dict)
    """(hook, method, scorer) -> list of values (for the plot)"""

    @property
    def hooks(self) -> list[str]:
        """the dictionaries in the report, in layer order (not counting "all")"""
        return sorted({r.hook for r in self.rows} - {"all"}, key=hook_order)

    @property
    def text(self) -> str:
        """The full table; with more than COMPACT dictionaries, the "all" rows in full and one line
        per dictionary (layer) instead of a page each."""
        if len(self.hooks) > COMPACT:
            return self.text_full(["all"]) + "\n\n" + self.text_by_layer()
        return self.text_full()

    def text_by_layer(self) -> str:
        """Per dictionary, each scorer's method mean and its paired difference to the equal-budget
        top-token baseline with the 95% interval; "+" where the interval is above 0 ("beats")."""
        rows = [r for r in self.rows if r.hook != "all" and r.paired]
        scorers = sorted({r.scorer for r in rows})
        methods = sorted({r.method for r in rows})
        lines = []
        for m in methods:
            head = (
                f"{'dictionary':<22} {'n':>6}  "
                + "  ".join(f"{s + ' (vs top-token)':<33}" for s in scorers).rstrip()
            )
            lines += [
                f"method {m}, per dictionary: mean, paired difference to the top-token baseline "
                "[95% interval], + = beats",
                head,
                "-" * len(head),
            ]
            by = {(r.hook, r.scorer): r for r in rows if r.method == m}
            for h in self.hooks:
                cells, n = [], 0
                for s in scorers:
                    r = by.get((h, s))
                    p = (
                        next((p for p in r.paired if p.baseline == BASELINES[1]), None)
                        if r
                        else None
                    )
                    if r is None or p is None:
                        cells.append(f"{'-':<33}")
                        continue
                    n = max(n, r.n)
                    cells.append(
                        f"{r.mean:>6.3f} {p.mean_diff:>+6.3f} [{p.lo:+.3f}, {p.hi:+.3f}] "
                        f"{'+' if p.beats else ' '}"
                    )
                lines.append((f"{h:<22} {n:>6}  " + "  ".join(cells)).rstrip())
        return "\n".join(lines)

    def text_full(self, hooks: list[str] | None = None) -> str:
        head = (
            f"{'dictionary':<22} {'method':<30} {'scorer':<10} {'metric':<17} {'n':>5} {'mean':>6} "
            f"{'median':>6}  paired difference to the baseline [95% bootstrap interval over "
            "features]"
        )
        lines = [head, "-" * len(head)]
        for r in self.rows:
            if hooks is not None and r.hook not in hooks:
                continue
            lines.append(
                f"{r.hook:<22} {r.method:<30} {r.scorer:<10} {r.metric:<17} {r.n:>5} "
                f"{r.mean:>6.3f} "
                f"{r.median:>6.3f}"
            )
            for p in r.paired:
                lines.append(
                    f"{'':<22}   vs {p.baseline:<25} {'':<28} {p.n:>5} {p.mean_diff:>+6.3f} "
                    f"[{p.lo:+.3f}, {p.hi:+.3f}]  {p.verdict}"
                )
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "rows": [
                {
                    **{k: v for k, v in r.__dict__.items() if k != "paired"},
                    "beats": r.beats,
                    "paired": [
                        {**p.__dict__, "beats": p.beats, "verdict": p.verdict} for p in r.paired
                    ],
                }
                for r in self.rows
            ]
        }


def hook_order(hook: str) -> tuple:
    """Natural order of hook names: blocks.2.x before blocks.10.x."""
    import re

    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", hook))


def _rows(hook: str, per: dict, metric: dict, values: dict) -> list[ScoreRow]:
    """per: (method, for_method, scorer) -> {feature: value}; for_method is None for methods.
    Fills values[(hook, row method, scorer)] with the scores (for the plot)."""
    import numpy as np

    out = []
    for (m, for_m, s), vals in sorted(
        per.items(), key=lambda kv: (kv[0][1] or kv[0][0], kv[0][1] is not None, kv[0][0], kv[0][2])
    ):
        a = np.asarray(list(vals.values()), dtype=float)
        name = m if for_m is None else f"{m} (for {for_m})"
        row = ScoreRow(
            hook,
            name,
            s,
            metric[s],
            len(a),
            float(a.mean()),
            float(np.median(a)),
            float(np.quantile(a, 0.25)),
            float(np.quantile(a, 0.75)),
        )
        values[(hook, name, s)] = a.tolist()
        if for_m is None:
            for bm in BASELINES:
                base = per.get((bm, m, s))
                if base is None:
                    continue
                feats = sorted(set(vals) & set(base))
                mean, lo, hi = paired_bootstrap([vals[f] - base[f] for f in feats])
                row.paired.append(Paired(bm, len(feats), mean, lo, hi))
        out.append(row)
    return out


def score_report(atlas: str | Path) -> ScoreReport:
    from ..atlas.db import AtlasDB
    from ..layout import AtlasLayout

    path = AtlasLayout(atlas).db_path
    if not path.is_file():
        raise UserError(
            f"{atlas} has no atlas.db; run `lmscope atlas build {atlas}` then `lmscope explain "
            f"{atlas}`"
        )
    db = AtlasDB(path, readonly=True)
    try:
        q = db._q(
            "SELECT d.hook, e.idx, e.method, e.details, s.scorer, s.metric, s.value FROM scores s "
            "JOIN explanations e ON e.id = s.explanation_id JOIN dictionaries d ON d.id = "
            "e.dictionary "
            "ORDER BY d.id, e.id"
        )
    finally:
        db.close()
    per: dict = {}
    """hook -> (method, for_method, scorer) -> {feature: value} (the latest explanation wins)"""
    metric: dict = {}
    hooks: list[str] = []
    for h, idx, m, details, s, met, v in q:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        for_m = None
        if m in BASELINES:
            for_m = (json.loads(details) if details else {}).get("for") or "?"
        if h not in per:
            hooks.append(h)
        per.setdefault(h, {}).setdefault((m, for_m, s), {})[idx] = v
        metric[s] = met
    rep = ScoreReport()
    for h in hooks:
        rep.rows += _rows(h, per[h], metric, rep.values)
    if len(hooks) > 1:  # every dictionary's features together (a feature = (hook, idx))
        allp: dict = {}
        for h in hooks:
            for k, vals in per[h].items():
                allp.setdefault(k, {}).update({(h, i): v for i, v in vals.items()})
        rep.rows += _rows("all", allp, metric, rep.values)
    return rep


def plot_report(rep: ScoreReport, path: str | Path) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("the score plot needs matplotlib: pip install 'lmscope[plot]'") from None
    keys = sorted(rep.values)
    # 30 dictionaries x 3 rows each would be 90 boxes per scorer: then only every feature together
    many = len(rep.hooks) > COMPACT
    keys = [k for k in keys if (k[0] == "all") == many]
    scorers = sorted({k[2] for k in keys})
    fig, axes = plt.subplots(
        1,
        max(1, len(scorers)),
        figsize=(5 * max(1, len(scorers)), 4 + 0.25 * len(keys)),
        squeeze=False,
    )
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
