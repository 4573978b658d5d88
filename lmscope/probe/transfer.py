"""Transfer: does a truth probe read truth on a kind of statement it was never trained on?

Leave one domain out (cities, numbers, arithmetic, animals, spanish): for each
domain D, fit the probe on the train split of every *other* domain, choose the
layer on their validation split, and score every statement of D (no entity,
template or topic of D was seen). Reported per held-out domain, with 95%
bootstrap intervals over D's entities:

- accuracy at the probe's stored threshold (logit 0): does the offset transfer?
- AUROC of the probe's logit: does the ranking transfer?
- the baseline every probe must beat: the statement's mean token
  log-probability under the model (no probe; true statements tend to be likely
  ones), its AUROC on the same statements, and the paired difference
  probe - baseline over the same resamples ("beats" = interval above 0);
- few-shot recalibration: with k labelled entities of D, move the threshold
  to the midpoint of their true and false mean scores and score the other
  entities of D; the same rule for the log-probability, so both get the same
  labels. Mean accuracy over `repeats` random draws and the 2.5-97.5% range
  of the draws. Accuracy near 0.5 at the stored threshold with a good AUROC
  means the offset is off, and this says how many labels fix it.

    lmscope probe transfer                                     # every built-in set, every layer
    report = leave_one_domain_out(lm, TransferConfig(layers="8,12,16,20"))
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch

from ..models.registry import DEFAULT_MODEL
from .activations import last_token_acts, tokenize
from .answers import token_logprobs
from .datasets import Dataset, load_dataset
from .metrics import Score, accuracy, auroc, auroc_score, bootstrap, paired_difference
from .probes import layer_of
from .registry import KINDS, fit

if TYPE_CHECKING:
    from ..models import LanguageModel


@dataclass(frozen=True)
class TransferConfig:
    """Leave-one-domain-out transfer of a truth probe, next to the statement log-probability
    baseline."""

    model: str = DEFAULT_MODEL
    """Model alias, Hugging Face id, local folder or .gguf file."""
    datasets: str = "all"
    """Built-in sets pooled, comma-separated or 'all'; each of their domains is held out in turn."""
    layers: str = "all"
    """Candidate layers ('all', '8,12' or hook names); the layer is chosen on the training domains'
    validation split."""
    kind: str = "logistic"
    """Probe type: logistic, massmean or massmean_iid (CCS needs contrasts; see `probe train`)."""
    shots: tuple[int, ...] = (1, 2, 4, 8)
    """Labelled entities of the held-out domain used to recalibrate the threshold."""
    repeats: int = 50
    """Random draws of the labelled entities per shot count."""
    batch_size: int = 32
    """Statements per forward pass."""
    model_dtype: str = "float32"
    """dtype of the model weights."""
    device: str = "cpu"
    """torch device."""
    seed: int = 0
    """Seed of the bootstrap and of the few-shot draws."""
    n_boot: int = 1000
    """Bootstrap resamples (over the held-out domain's entities) behind each interval."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS or self.kind == "ccs":
            raise ValueError(f"--kind {self.kind!r}: choose logistic, massmean or massmean_iid")
        if self.repeats < 1 or self.n_boot < 1 or any(k < 1 for k in self.shots):
            raise ValueError("--repeats, --n-boot and every --shots value must be at least 1")


@dataclass
class Shots:
    """Accuracy on the rest of the domain after recalibrating on k labelled entities."""

    k: int
    probe_mean: float
    probe_range: list[float]
    logprob_mean: float
    logprob_range: list[float]


@dataclass
class DomainTransfer:
    domain: str
    sets: list[str]
    n: int
    n_entities: int
    hook: str
    """Layer chosen on the training domains' validation split."""
    val_acc_training_domains: float
    acc_at_threshold: Score
    probe_auroc: Score
    logprob_auroc: Score
    probe_minus_logprob_auroc: Score
    by_set: dict
    """set -> {n, acc_at_threshold, probe_auroc, logprob_auroc} (values only)."""
    shots: list[Shots]

    @property
    def beats_logprob(self) -> bool:
        return self.probe_minus_logprob_auroc.lo > 0

    @property
    def ranking_transfers(self) -> bool:
        return self.probe_auroc.lo > 0.5

    @property
    def threshold_transfers(self) -> bool:
        return self.acc_at_threshold.lo > 0.5

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(
            beats_logprob=self.beats_logprob,
            ranking_transfers=self.ranking_transfers,
            threshold_transfers=self.threshold_transfers,
        )
        return d


@dataclass
class Statements:
    """Every statement of the pooled sets, its activations per hook and its mean token
    log-probability."""

    x: dict[str, torch.Tensor]  # hook -> [n, d_model]
    logprob: torch.Tensor  # [n]
    y: torch.Tensor  # [n]
    domain: list[str]
    source: list[str]
    split: list[str]
    entity: list[str]


def statement_logprobs(
    lm: LanguageModel, texts: list[str], *, batch_size: int = 32
) -> torch.Tensor:
    """[n] mean log p(token | the tokens before it) over each statement's tokens after BOS."""
    rows = tokenize(lm, texts)
    # Position 0 (BOS, or the first token of a model without one) has no prediction: score from 1
    # on.
    lps = token_logprobs(lm, rows, [(1, len(r)) for r in rows], batch_size=batch_size)
    return torch.stack([lp.double().mean() for lp in lps]).float()


def read_statements(
    lm: LanguageModel,
    datasets: list[Dataset],
    hooks: list[str],
    *,
    batch_size: int = 32,
    progress: bool = False,
) -> Statements:
    rows = [
        (d, split, s)
        for d in datasets
        for split in ("train", "val", "test")
        for s in d.split(split)
    ]
    texts = [s.text for _, _, s in rows]
    x = last_token_acts(lm, texts, hooks, batch_size=batch_size, progress=progress)
    return Statements(
        x=x,
        logprob=statement_logprobs(lm, texts, batch_size=batch_size),
        y=torch.tensor([s.label for _, _, s in rows]),
        domain=[d.domain for d, _, _ in rows],
        source=[d.name for d, _, _ in rows],
        split=[sp for _, sp, _ in rows],
        entity=[s.entity for _, _, s in rows],
    )


def midpoint_accuracy(
    score: torch.Tensor,
    y: torch.Tensor,
    ents: list[str],
    k: int,
    repeats: int,
    gen: torch.Generator,
) -> tuple[float, list[float]]:
    """Threshold at the midpoint of the true and false mean scores of k random labelled entities;
    accuracy on the other entities. (mean, [2.5%, 97.5%]) over the draws."""
    units = sorted(set(ents))
    if k >= len(units):
        return float("nan"), [float("nan"), float("nan")]
    accs = []
    for _ in range(repeats):
        pick = {units[int(i)] for i in torch.randperm(len(units), generator=gen)[:k]}
        cal = torch.tensor([e in pick for e in ents])
        t, f = score[cal & (y == 1)], score[cal & (y == 0)]
        mid = (t.mean() + f.mean()) / 2
        accs.append(accuracy(score[~cal] - mid, y[~cal]))
    v = torch.tensor(accs, dtype=torch.float64)
    q = torch.quantile(v, torch.tensor([0.025, 0.975], dtype=torch.float64))
    return float(v.mean()), [float(q[0]), float(q[1])]


def leave_one_domain_out(
    lm: LanguageModel, cfg: TransferConfig, hooks: list[str], *, progress: bool = False
) -> list[DomainTransfer]:
    from .datasets import parse_names

    datasets = [load_dataset(n) for n in parse_names(cfg.datasets)]
    domains = list(dict.fromkeys(d.domain for d in datasets))
    if len(domains) < 2:
        from ..errors import UserError

        raise UserError(
            "transfer needs sets from at least two domains (e.g. --datasets cities,larger_than)"
        )
    st = read_statements(lm, datasets, hooks, batch_size=cfg.batch_size, progress=progress)
    gen = torch.Generator().manual_seed(cfg.seed)
    out = []
    for held in domains:
        other = torch.tensor([d != held for d in st.domain])
        tr = other & torch.tensor([s == "train" for s in st.split])
        va = other & torch.tensor([s == "val" for s in st.split])
        te = ~other
        best = None
        for h in hooks:  # choose the layer on the training domains' validation split
            probe = fit(cfg.kind, h, st.x[h][tr], st.y[tr], seed=cfg.seed)
            acc = accuracy(probe.logits(st.x[h][va]), st.y[va])
            if (
                best is None
                or acc > best[0]
                or (acc == best[0] and layer_of(h) < layer_of(best[1].hook))
            ):
                best = (acc, probe)
        val_acc, probe = best
        logit, lp, y = probe.logits(st.x[probe.hook][te]), st.logprob[te].double(), st.y[te]
        ents = [e for e, m in zip(st.entity, te.tolist()) if m]
        srcs = [s for s, m in zip(st.source, te.tolist()) if m]
        boot = {"seed": cfg.seed, "n_boot": cfg.n_boot}
        by_set = {}
        for name in dict.fromkeys(srcs):
            m = torch.tensor([s == name for s in srcs])
            by_set[name] = {
                "n": int(m.sum()),
                "acc_at_threshold": accuracy(logit[m], y[m]),
                "probe_auroc": auroc(logit[m], y[m]),
                "logprob_auroc": auroc(lp[m], y[m]),
            }
        shots = []
        for k in cfg.shots:
            pm, pr = midpoint_accuracy(logit.double(), y, ents, k, cfg.repeats, gen)
            lm_, lr = midpoint_accuracy(lp, y, ents, k, cfg.repeats, gen)
            shots.append(
                Shots(k=k, probe_mean=pm, probe_range=pr, logprob_mean=lm_, logprob_range=lr)
            )
        out.append(
            DomainTransfer(
                domain=held,
                sets=list(dict.fromkeys(srcs)),
                n=len(y),
                n_entities=len(set(ents)),
                hook=probe.hook,
                val_acc_training_domains=val_acc,
                acc_at_threshold=bootstrap(
                    lambda i, a=logit, b=y: accuracy(a[i], b[i]), ents, **boot
                ),
                probe_auroc=auroc_score(logit, y, ents, **boot),
                logprob_auroc=auroc_score(lp, y, ents, **boot),
                probe_minus_logprob_auroc=paired_difference(
                    lambda i, a=logit, b=y: auroc(a[i], b[i]),
                    lambda i, a=lp, b=y: auroc(a[i], b[i]),
                    ents,
                    **boot,
                ),
                by_set=by_set,
                shots=shots,
            )
        )
    return out


__all__ = [
    "DomainTransfer",
    "Shots",
    "TransferConfig",
    "leave_one_domain_out",
    "midpoint_accuracy",
    "statement_logprobs",
]
