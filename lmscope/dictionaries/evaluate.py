"""Honest evaluation of trained dictionaries: reconstruction, sparsity, and the spliced LM loss.

For each dictionary of an atlas, on held-out corpus text (documents training never saw; the
dictionary's recorded training documents are checked, see below). Two passes over the
held-out contexts: pass 1 captures the clean activations at the output hook to get their mean
vector and median norm; pass 2 runs the model clean and with each splice.

- Reconstruction: MSE (per token, summed over d) and FVU = sum ||x - x_hat||^2 / sum ||x -
  mean(x)||^2, pooled over all evaluated tokens (a ratio of sums, not a mean of per-batch
  ratios). A few text tokens carry massive norms (Sun et al. 2024, "Massive activations in
  large language models"): in SmolLM2-135M at blocks.15.resid_post, ~0.05% of text tokens
  (the first text token after BOS, for some words) have norms up to ~16,000 against a median
  of ~170, and hold about half of the sum of squares, so the pooled FVU mostly says how well
  those few vectors are rebuilt. We therefore also report `fvu_inliers`: the same FVU on the
  tokens whose norm is at most OUTLIER_FACTOR x the median norm of the evaluated tokens (mean
  taken over those tokens), with the count of outlier tokens and their share of the variance.
- L0 (active latents per token), the dead fraction (never fired on these tokens) and the
  dense fraction (fires on > 10% of tokens).
- The language-model loss with the reconstruction spliced in (the activation at the hook
  replaced by the dictionary's output; lmscope.models.runtime edits). Headline: the added loss
  CE(spliced) - CE(clean) in nats per token and KL(clean || spliced) per token, each with a 95%
  bootstrap interval over contexts (Gao et al. 2024 Sec. 4.1 argue for these over fractions).
  Secondary, with the reference named: the fraction of loss recovered against zero-ablation
  (zero - spliced) / (zero - clean), which flatters (zeroing a residual stream destroys the
  model), and against mean-ablation (the activation replaced by its mean over the evaluated
  text tokens, from pass 1). A transcoder reads its input hook from the clean run and replaces
  its *output* hook (mlp_out) with its prediction.
- As a check of the machinery, the splice of reconstruction + error (x_hat + (x - x_hat),
  done in float64 so it is bitwise x) must give back the clean loss exactly.
- Optionally (`train_tokens`), the reconstruction numbers again on the first tokens of the
  corpus's *training* split, measured the same way: the in-sample reference for the held-out
  FVU. (`lmscope train` prints a different quantity: the mean over the last 10% of steps of
  per-batch FVUs, each batch centred on its own mean, which weighs a batch without an outlier
  token as much as one with it; see docs/measuring.md.)

BOS and other special-token positions keep their clean activation in every splice and are
left out of every number: the dictionaries are trained without them (models/tokens.py), and the
attention sinks' norms (~25,000 in SmolLM2's middle layer) would make the ablated loss
meaningless. CE is averaged over next-token targets that are text tokens.

Held-out documents: a dictionary records the documents it was trained on
(lmscope.capture.documents; streaming or from a store). Eval records the documents of its
contexts and refuses (UserError) when the two share a document, unless `allow_overlap`.
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import UserError
from ..layout import hook_dirname, write_json_atomic
from ..models.tokens import token_mask
from .folder import DictionaryFolder

if TYPE_CHECKING:
    from ..models import LanguageModel
    from .base import SparseDictionary

HELDOUT_SPLIT = "test"
DENSE_THRESHOLD = 0.1
OUTLIER_FACTOR = 5.0
"""A token is a norm outlier when ||x|| > OUTLIER_FACTOR x the median norm of the evaluated tokens.
On SmolLM2-135M (blocks.15.resid_post) text-token norms have p99.9 at 1.43x the median and the
massive tokens start above 2x, so any factor from 2 to 5 picks the same tokens."""
BOOTSTRAP_SAMPLES = 1000
EVAL_SCHEMA_VERSION = 2


@dataclass(frozen=True)
class EvalConfig:
    """Evaluate the dictionaries of an atlas on held-out text."""

    atlas: str = "atlas"
    """Atlas folder written by `lmscope train`."""
    tokens: int = 100_000
    """Held-out tokens to evaluate on (BOS excluded); accepts 100k."""
    corpus: str = "default"
    """Text to evaluate on (its held-out split): 'default', a file or folder, or a HF dataset."""
    ctx_len: int = 128
    """Tokens per context (BOS included)."""
    batch: int = 8
    """Contexts per model forward pass."""
    hooks: str = ""
    """Evaluate only these dictionaries (comma-separated names or globs); empty: all."""
    train_tokens: int = 0
    """Also measure FVU on this many tokens of the corpus's training split, the same way (the
    in-sample reference for the held-out FVU); 0: skip."""
    allow_overlap: bool = False
    """Evaluate even when held-out documents were in a dictionary's training data (the numbers
    are then partly in-sample; eval.json records the overlap)."""
    model: str = ""
    """Model to load (empty: the atlas's model)."""
    model_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """dtype of the model weights."""
    device: str = "cpu"
    """torch device."""
    plots: bool = True
    """Write a feature-density histogram per dictionary to ATLAS/plots/ (needs matplotlib)."""

    def __post_init__(self) -> None:
        if self.tokens < 1:
            raise ValueError(f"--tokens must be >= 1, got {self.tokens}")
        if self.train_tokens < 0:
            raise ValueError(f"--train-tokens must be >= 0, got {self.train_tokens}")
        if self.ctx_len < 2:
            raise ValueError(f"--ctx-len must be >= 2, got {self.ctx_len}")
        if self.batch < 1:
            raise ValueError(f"--batch must be >= 1, got {self.batch}")


@dataclass
class Reconstruction:
    """Reconstruction numbers of one dictionary on one set of tokens."""

    tokens: int
    mse: float
    fvu: float
    """Pooled FVU over every evaluated token."""
    fvu_ci: tuple[float, float]
    """95% bootstrap interval of fvu over contexts."""
    fvu_inliers: float
    """Pooled FVU over the tokens with norm <= outlier_threshold (centred on their own mean)."""
    fvu_inliers_ci: tuple[float, float]
    outlier_threshold: float
    """OUTLIER_FACTOR x the median norm of the target activation on the held-out tokens."""
    outlier_tokens: int
    outlier_var_share: float
    """Share of sum ||x - mean(x)||^2 carried by the outlier tokens."""
    outlier_err_share: float
    """Share of sum ||x - x_hat||^2 carried by the outlier tokens."""


@dataclass
class DictionaryEval:
    """Numbers for one dictionary (held-out unless said otherwise)."""

    hook: str
    out_hook: str | None
    arch: str
    d_sae: int
    tokens: int
    contexts: int
    mse: float
    fvu: float
    fvu_ci: tuple[float, float]
    fvu_inliers: float
    fvu_inliers_ci: tuple[float, float]
    outlier_threshold: float
    outlier_tokens: int
    outlier_var_share: float
    outlier_err_share: float
    l0: float
    dead_frac: float
    dense_frac: float
    ce_clean: float
    ce_spliced: float
    ce_added: float
    """CE(spliced) - CE(clean), nats per text target: the headline loss number."""
    ce_added_ci: tuple[float, float]
    """95% bootstrap interval of ce_added over contexts."""
    kl: float
    """Mean KL(clean || spliced) per text target, in nats."""
    kl_ci: tuple[float, float]
    ce_zero: float
    """CE with the activation zeroed at the hook (text positions)."""
    ce_mean: float
    """CE with the activation replaced by its mean over the evaluated text tokens."""
    loss_recovered: float
    """(ce_zero - ce_spliced) / (ce_zero - ce_clean): against zero-ablation (flatters)."""
    loss_recovered_mean: float
    """(ce_mean - ce_spliced) / (ce_mean - ce_clean): against mean-ablation."""
    ce_recon_plus_error: float
    """CE with reconstruction + error spliced in on the first batch (must equal ce_clean_first)."""
    ce_clean_first: float
    eval_documents: int = 0
    """Documents with tokens in the evaluated contexts."""
    train_documents: int | None = None
    """Documents the dictionary's record says it was trained on (None: no record)."""
    overlap_documents: int | None = None
    """Evaluated documents that are also training documents (None: not checkable)."""
    train_fvu_reported: float | None = None
    """What `lmscope train` reported: mean per-batch FVU over the last 10% of steps."""
    insample: Reconstruction | None = None
    """The same reconstruction numbers on tokens of the training split (train_tokens)."""
    plot: str | None = None


@dataclass
class EvalReport:
    atlas: str
    model: str
    tokens: int
    outlier_factor: float = OUTLIER_FACTOR
    dictionaries: list[DictionaryEval] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


# --- reconstruction sums -----------------------------------------------------------------
class _ReconSums:
    """Per-context float64 sums for pooled FVU, the norm-outlier tokens also summed apart.

    Kept per context (not only in total) so the FVU gets a bootstrap interval over contexts.
    """

    FIELDS = ("n", "n_out", "err", "err_out", "sq", "sq_out")

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.rows: dict[str, list[Tensor]] = {k: [] for k in (*self.FIELDS, "sum_x", "sum_x_out")}

    def add(self, target: Tensor, recon: Tensor, row: Tensor, n_rows: int) -> None:
        """target, recon: [tokens, d_out]; row: [tokens] index of each token's context in this
        batch."""
        t = target.double().cpu()
        err = (recon.double().cpu() - t).pow(2).sum(-1)  # [tokens]
        sq = t.pow(2).sum(-1)  # [tokens]
        out = sq.sqrt() > self.threshold  # [tokens]
        row = row.cpu()
        per_token = {
            "n": torch.ones_like(sq),
            "n_out": out.double(),
            "err": err,
            "err_out": err * out,
            "sq": sq,
            "sq_out": sq * out,
        }
        for k, v in per_token.items():
            self.rows[k].append(torch.zeros(n_rows, dtype=torch.float64).index_add_(0, row, v))
        for k, v in (("sum_x", t), ("sum_x_out", t * out[:, None])):
            self.rows[k].append(
                torch.zeros(n_rows, t.shape[1], dtype=torch.float64).index_add_(0, row, v)
            )

    @staticmethod
    def _fvus(a: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(FVU, FVU without outliers) from totals; arrays of any leading shape."""
        var = a["sq"] - (a["sum_x"] ** 2).sum(-1) / np.maximum(a["n"], 1)  # sum ||x - mean||^2
        n_in = a["n"] - a["n_out"]
        sum_in = a["sum_x"] - a["sum_x_out"]
        var_in = (a["sq"] - a["sq_out"]) - (sum_in**2).sum(-1) / np.maximum(n_in, 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            return a["err"] / var, np.where(n_in > 0, (a["err"] - a["err_out"]) / var_in, np.nan)

    def result(self, *, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> Reconstruction:
        rows = {
            k: torch.cat(v).numpy() for k, v in self.rows.items()
        }  # [contexts] or [contexts, d]
        tot = {k: v.sum(0) for k, v in rows.items()}
        fvu, fvu_in = (float(v) for v in self._fvus(tot))
        n = max(1.0, tot["n"])
        mean = tot["sum_x"] / n
        var = tot["sq"] - float(tot["sum_x"] @ tot["sum_x"]) / n
        # The outliers' part of sum ||x - mean||^2, about the same global mean.
        var_out = (
            tot["sq_out"] - 2 * float(mean @ tot["sum_x_out"]) + tot["n_out"] * float(mean @ mean)
        )
        ci, ci_in = (math.nan, math.nan), (math.nan, math.nan)
        c = rows["n"].shape[0]
        if c >= 2:
            idx = np.random.default_rng(seed).integers(0, c, size=(samples, c))
            w = np.zeros((samples, c))
            np.add.at(
                w, (np.arange(samples)[:, None], idx), 1.0
            )  # [samples, contexts] resample counts
            b_fvu, b_in = self._fvus({k: w @ v for k, v in rows.items()})
            ci = (float(np.nanpercentile(b_fvu, 2.5)), float(np.nanpercentile(b_fvu, 97.5)))
            ci_in = (float(np.nanpercentile(b_in, 2.5)), float(np.nanpercentile(b_in, 97.5)))
        return Reconstruction(
            tokens=int(tot["n"]),
            mse=tot["err"] / n,
            fvu=fvu,
            fvu_ci=ci,
            fvu_inliers=fvu_in,
            fvu_inliers_ci=ci_in,
            outlier_threshold=self.threshold,
            outlier_tokens=int(tot["n_out"]),
            outlier_var_share=var_out / max(var, 1e-12),
            outlier_err_share=tot["err_out"] / max(tot["err"], 1e-12),
        )


def _reconstruct(d: SparseDictionary, x: Tensor) -> tuple[Tensor, Tensor]:
    """(latent activations [tokens, d_sae], reconstruction [tokens, d_out]) of inputs x [tokens,
    d_in]."""
    acts = d.encode(x)
    return acts, (d.decode(acts, x) if d.W_skip is not None else d.decode(acts))


def _needed(dicts: dict[str, SparseDictionary]) -> list[str]:
    out: list[str] = []
    for h, d in dicts.items():
        for x in (h, d.cfg.out_hook_name):
            if x and x not in out:
                out.append(x)
    return out


@dataclass
class _CleanStats:
    mean: Tensor
    """[d] float64 mean of the activation over the text tokens."""
    median_norm: float


@torch.no_grad()
def clean_stats(
    lm: LanguageModel, hooks: list[str], chunks: list[Tensor]
) -> dict[str, _CleanStats]:
    """Pass 1: per hook, the mean activation and the median norm over the text tokens of `chunks`.

    chunks: token batches [b, ctx_len]. The forward stops after the deepest hook (no LM head).
    """
    from ..models.runtime import run

    sums: dict[str, Tensor] = {}
    norms: dict[str, list[Tensor]] = {h: [] for h in hooks}
    n = 0
    for tokens in chunks:
        tokens = tokens.to(lm.device)
        keep = token_mask(lm, tokens)
        res = run(lm, tokens, capture=hooks)
        for h in hooks:
            a = res.acts[h].float()[keep]  # [tokens, d]
            sums[h] = sums.get(h, 0) + a.double().sum(0).cpu()
            norms[h].append(a.norm(dim=-1).cpu())
        n += int(keep.sum())
    return {h: _CleanStats(sums[h] / max(1, n), float(torch.cat(norms[h]).median())) for h in hooks}


@torch.no_grad()
def reconstruction(
    lm: LanguageModel,
    dicts: dict[str, SparseDictionary],
    contexts: list[Tensor],
    *,
    batch: int = 8,
    thresholds: dict[str, float] | None = None,
) -> dict[str, Reconstruction]:
    """Reconstruction numbers only (no splicing) of every dictionary on `contexts` [ctx_len] each.

    thresholds: hook -> outlier norm threshold (e.g. the held-out one, so both sets use the
    same); None: OUTLIER_FACTOR x the median norm of these tokens (one more pass).
    """
    from ..models.runtime import run

    chunks = [
        torch.stack(contexts[i : i + batch]) for i in range(0, len(contexts), batch)
    ]  # [b, ctx_len]
    needed = _needed(dicts)
    if thresholds is None:
        stats = clean_stats(lm, needed, chunks)
        thresholds = {
            h: OUTLIER_FACTOR * stats[d.cfg.out_hook_name or h].median_norm
            for h, d in dicts.items()
        }
    sums = {h: _ReconSums(thresholds[h]) for h in dicts}
    for tokens in chunks:
        tokens = tokens.to(lm.device)
        keep = token_mask(lm, tokens)
        row = keep.nonzero()[:, 0]  # [tokens] context of each kept token
        res = run(lm, tokens, capture=needed)
        for h, d in dicts.items():
            xs = res.acts[h].float()[keep]
            ts = res.acts[d.cfg.out_hook_name or h].float()[keep]
            sums[h].add(ts, _reconstruct(d, xs)[1], row, tokens.shape[0])
    return {h: s.result() for h, s in sums.items()}


# --- the spliced loss ------------------------------------------------------------------------
def _ce_rows(logits: Tensor, tokens: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Per context: summed next-token CE over targets where mask[:, 1:], and their count. [batch]
    each."""
    lp = F.log_softmax(logits[:, :-1].float(), dim=-1)  # [batch, pos-1, vocab]
    nll = -lp.gather(-1, tokens[:, 1:, None]).squeeze(-1)  # [batch, pos-1]
    m = mask[:, 1:]
    return (nll * m).double().sum(1).cpu(), m.sum(1).cpu()


def _kl_rows(clean: Tensor, other: Tensor, mask: Tensor) -> Tensor:
    """Per context: summed KL(clean || other) over targets where mask[:, 1:]. [batch]"""
    lp = F.log_softmax(clean[:, :-1].float(), dim=-1)
    lq = F.log_softmax(other[:, :-1].float(), dim=-1)
    kl = (lp.exp() * (lp - lq)).sum(-1)  # [batch, pos-1]
    return (kl * mask[:, 1:]).double().sum(1).cpu()


def _splice(value: Tensor, keep: Tensor):
    """An edit replacing the activation by `value` [batch, pos, d] where keep [batch, pos]."""

    def f(x: Tensor) -> Tensor:
        return torch.where(keep[..., None], value.to(x.dtype), x)

    return f


def bootstrap_ratio(
    num: Tensor, den: Tensor, *, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0
) -> tuple[float, float]:
    """95% percentile-bootstrap interval of sum(num) / sum(den), resampling the rows (contexts)."""
    n = num.shape[0]
    if n < 2:
        return (math.nan, math.nan)
    idx = np.random.default_rng(seed).integers(0, n, size=(samples, n))  # [samples, n]
    a, b = num.numpy()[idx].sum(1), den.numpy().astype(np.float64)[idx].sum(1)
    r = a / np.maximum(b, 1)
    return (float(np.percentile(r, 2.5)), float(np.percentile(r, 97.5)))


class _LossSums:
    """Per-context CE sums of each run and KL of the splice, for means and bootstrap intervals."""

    def __init__(self) -> None:
        self.rows: dict[str, list[Tensor]] = {
            k: [] for k in ("clean", "spliced", "zero", "mean", "kl", "n")
        }

    def add(self, **parts: Tensor) -> None:
        for k, v in parts.items():
            self.rows[k].append(v)

    def cat(self) -> dict[str, Tensor]:
        return {k: torch.cat(v) for k, v in self.rows.items()}


def _recovered(ce: dict[str, float], ref: str) -> float:
    """(ce[ref] - spliced) / (ce[ref] - clean): the fraction of the ablation's damage the splice
    avoids."""
    denom = ce[ref] - ce["clean"]
    return (ce[ref] - ce["spliced"]) / denom if abs(denom) > 1e-12 else math.nan


@torch.no_grad()
def evaluate_dictionaries(
    lm: LanguageModel,
    dicts: dict[str, SparseDictionary],
    contexts: list[Tensor],
    *,
    batch: int = 8,
    progress: bool = True,
) -> list[DictionaryEval]:
    """Evaluate `dicts` (hook -> SparseDictionary) on token contexts [ctx_len] each."""
    from ..models.runtime import run

    needed = _needed(dicts)
    chunks = [
        torch.stack(contexts[i : i + batch]) for i in range(0, len(contexts), batch)
    ]  # [b, ctx_len]
    stats = clean_stats(lm, sorted({d.cfg.out_hook_name or h for h, d in dicts.items()}), chunks)
    recon = {
        h: _ReconSums(OUTLIER_FACTOR * stats[d.cfg.out_hook_name or h].median_norm)
        for h, d in dicts.items()
    }
    loss = {h: _LossSums() for h in dicts}
    active = {h: 0.0 for h in dicts}
    fires = {h: torch.zeros(d.d_sae, dtype=torch.float64) for h, d in dicts.items()}
    check: dict[str, tuple[float, float]] = {}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(chunks), desc="eval", unit="batch", dynamic_ncols=True)
    for ci, tokens in enumerate(chunks):
        tokens = tokens.to(lm.device)  # [b, ctx_len]
        keep = token_mask(lm, tokens)
        row = keep.nonzero()[:, 0]  # [tokens] context of each kept token
        clean = run(lm, tokens, capture=needed, logits=True)
        ce_clean, n = _ce_rows(clean.logits, tokens, keep)
        for h, d in dicts.items():
            out_h = d.cfg.out_hook_name or h
            x = clean.acts[h].float()  # [b, pos, d_in]
            t = clean.acts[out_h].float()  # [b, pos, d_out]
            acts, rec = _reconstruct(d, x[keep])  # [tokens, d_sae], [tokens, d_out]
            recon[h].add(t[keep], rec, row, tokens.shape[0])
            fired = acts > 0
            active[h] += float(fired.sum())
            fires[h] += fired.sum(0).double().cpu()
            full = t.clone()
            full[keep] = rec.to(full.dtype)  # [b, pos, d_out]
            spliced = run(lm, tokens, edits={out_h: _splice(full, keep)}, logits=True).logits
            zero = run(
                lm, tokens, edits={out_h: _splice(torch.zeros_like(t), keep)}, logits=True
            ).logits
            mean = stats[out_h].mean.to(t.device, t.dtype).expand_as(t)  # [b, pos, d_out]
            mean_abl = run(lm, tokens, edits={out_h: _splice(mean, keep)}, logits=True).logits
            loss[h].add(
                clean=ce_clean,
                spliced=_ce_rows(spliced, tokens, keep)[0],
                zero=_ce_rows(zero, tokens, keep)[0],
                mean=_ce_rows(mean_abl, tokens, keep)[0],
                kl=_kl_rows(clean.logits, spliced, keep),
                n=n,
            )
            if ci == 0:
                # recon + error in float64 is bitwise the clean activation: the loss must not move.
                r64 = full.double()
                back = (r64 + (t.double() - r64)).to(t.dtype)
                ones = torch.ones_like(keep)
                ck = run(lm, tokens, edits={out_h: _splice(back, ones)}, logits=True).logits
                nn = max(1, int(n.sum()))
                check[h] = (
                    float(_ce_rows(ck, tokens, keep)[0].sum()) / nn,
                    float(ce_clean.sum()) / nn,
                )
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    out = []
    for h, d in dicts.items():
        r = recon[h].result()
        rows = loss[h].cat()
        n_ce = max(1, int(rows["n"].sum()))
        ce = {k: float(rows[k].sum()) / n_ce for k in ("clean", "spliced", "zero", "mean")}
        freq = fires[h] / max(1, r.tokens)

        out.append(
            DictionaryEval(
                hook=h,
                out_hook=d.cfg.out_hook_name,
                arch=d.cfg.arch,
                d_sae=d.d_sae,
                tokens=r.tokens,
                contexts=len(contexts),
                mse=r.mse,
                fvu=r.fvu,
                fvu_ci=r.fvu_ci,
                fvu_inliers=r.fvu_inliers,
                fvu_inliers_ci=r.fvu_inliers_ci,
                outlier_threshold=r.outlier_threshold,
                outlier_tokens=r.outlier_tokens,
                outlier_var_share=r.outlier_var_share,
                outlier_err_share=r.outlier_err_share,
                l0=active[h] / max(1, r.tokens),
                dead_frac=float((fires[h] == 0).double().mean()),
                dense_frac=float((freq > DENSE_THRESHOLD).double().mean()),
                ce_clean=ce["clean"],
                ce_spliced=ce["spliced"],
                ce_added=ce["spliced"] - ce["clean"],
                ce_added_ci=bootstrap_ratio(rows["spliced"] - rows["clean"], rows["n"]),
                kl=float(rows["kl"].sum()) / n_ce,
                kl_ci=bootstrap_ratio(rows["kl"], rows["n"]),
                ce_zero=ce["zero"],
                ce_mean=ce["mean"],
                loss_recovered=_recovered(ce, "zero"),
                loss_recovered_mean=_recovered(ce, "mean"),
                ce_recon_plus_error=check[h][0] if h in check else math.nan,
                ce_clean_first=check[h][1] if h in check else math.nan,
            )
        )
        out[-1]._freq = freq  # type: ignore[attr-defined]  # for the plot
    return out


def density_plot(ev: DictionaryEval, freq: Tensor, path: Path) -> Path:
    """Histogram of log10 firing frequency per latent (dead latents counted in the title)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError(
            "plots need matplotlib: pip install 'lmscope[plot]' (or pass --no-plots)"
        ) from None
    alive = freq[freq > 0]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if alive.numel():
        ax.hist(torch.log10(alive).numpy(), bins=60, color="#4472c4")
    ax.axvline(math.log10(DENSE_THRESHOLD), color="#c00000", lw=1, ls="--", label="dense (10%)")
    ax.set_xlabel("log10 firing frequency")
    ax.set_ylabel("latents")
    n_dead = int((freq == 0).sum())
    ax.set_title(f"{ev.hook}: {ev.d_sae} latents, {n_dead} dead, L0 {ev.l0:.1f}", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path


def heldout_contexts(
    lm: LanguageModel,
    corpus: str,
    *,
    tokens: int,
    ctx_len: int,
    split: str = HELDOUT_SPLIT,
    seen: set[int] | None = None,
) -> list[Tensor]:
    """Enough contexts of a split for `tokens` non-BOS tokens; `seen` gets their documents' keys."""
    from .sources import iter_contexts

    out, have = [], 0
    for ctx in iter_contexts(lm, corpus, ctx_len=ctx_len, split=split, seen=seen):
        out.append(ctx)
        have += int(token_mask(lm, ctx[None])[0].sum())
        if have >= tokens:
            break
    what = "held-out" if split == HELDOUT_SPLIT else split
    if not out:
        raise UserError(f"the {what} split of corpus {corpus!r} is empty; use a larger --corpus")
    if have < tokens:
        print(
            f"lmscope: the {what} split of {corpus!r} has only {have:,} tokens; "
            "evaluating on those",
            file=sys.stderr,
        )
    return out


def _check_documents(
    folder: DictionaryFolder, entries: dict, eval_keys: np.ndarray, corpus: str, allow: bool
) -> dict[str, tuple[int | None, int | None]]:
    """Per hook: (training documents recorded, evaluated documents among them). Refuses overlap."""
    from ..capture.documents import overlap, read_keys

    out: dict[str, tuple[int | None, int | None]] = {}
    for h, e in entries.items():
        rec = e.get("train_data")
        if not rec or not rec.get("file"):
            out[h] = (None, None)
            print(
                f"lmscope: {h} has no record of its training documents (trained before lmscope "
                "kept one, "
                "or imported); held-out disjointness is not checked",
                file=sys.stderr,
            )
            continue
        keys = read_keys(folder.path(h) / rec["file"])
        ov = overlap(keys, eval_keys)
        out[h] = (int(keys.size), ov)
        if ov:
            where = (
                f"{rec.get('source')}: {(rec.get('corpus') or {}).get('source')}, split "
                f"{rec.get('split')}"
            )
            msg = (
                f"{ov:,} of the {eval_keys.size:,} documents evaluated (--corpus {corpus}) were "
                "in the training "
                f"data of {h} ({where}), so its held-out numbers would be in-sample; evaluate on "
                "text it never "
                "saw (another --corpus), or retrain it from a store captured with --split train"
            )
            if not allow:
                raise UserError(msg + " (--allow-overlap evaluates anyway)")
            print(f"lmscope: WARNING: {msg}", file=sys.stderr)
    return out


def evaluate_atlas(
    cfg: EvalConfig, *, lm: LanguageModel | None = None, progress: bool = True
) -> EvalReport:
    """Evaluate every (or the selected) dictionary of an atlas; writes eval.json and plots."""
    from ..models import load_model

    folder = DictionaryFolder.open(cfg.atlas)
    layout, manifest = folder.layout, folder.manifest
    hooks = folder.select(cfg.hooks)
    entries = {h: folder.entries[h] for h in hooks}
    if lm is None:
        lm = load_model(
            cfg.model or folder.model, dtype=getattr(torch, cfg.model_dtype), device=cfg.device
        )
    dicts = folder.load(hooks, lm, device=cfg.device)
    seen: set[int] = set()
    contexts = heldout_contexts(lm, cfg.corpus, tokens=cfg.tokens, ctx_len=cfg.ctx_len, seen=seen)
    eval_keys = np.unique(np.array(sorted(seen), dtype=np.uint64))
    docs = _check_documents(folder, entries, eval_keys, cfg.corpus, cfg.allow_overlap)
    results = evaluate_dictionaries(lm, dicts, contexts, batch=cfg.batch, progress=progress)
    insample = {}
    if cfg.train_tokens:
        train_ctx = heldout_contexts(
            lm, cfg.corpus, tokens=cfg.train_tokens, ctx_len=cfg.ctx_len, split="train"
        )
        insample = reconstruction(
            lm,
            dicts,
            train_ctx,
            batch=cfg.batch,
            thresholds={ev.hook: ev.outlier_threshold for ev in results},
        )
    for ev in results:
        ev.eval_documents = int(eval_keys.size)
        ev.train_documents, ev.overlap_documents = docs[ev.hook]
        ev.train_fvu_reported = entries[ev.hook].get("train_fvu")
        ev.insample = insample.get(ev.hook)
    if cfg.plots:
        try:
            for ev in results:
                ev.plot = str(
                    density_plot(
                        ev, ev._freq, layout.plots / f"density_{hook_dirname(ev.hook)}.png"
                    )
                )  # type: ignore[attr-defined]
        except UserError as e:  # no matplotlib: the numbers are still worth having
            print(f"lmscope: skipping plots: {e}", file=sys.stderr)
    report = EvalReport(
        atlas=str(layout.root),
        model=manifest["model"],
        tokens=results[0].tokens if results else 0,
        dictionaries=results,
    )
    write_json_atomic(
        layout.root / "eval.json", {"schema_version": EVAL_SCHEMA_VERSION, **report.to_dict()}
    )
    return report


def format_report(r: EvalReport) -> str:
    """The printed report: added loss and KL first, FVU with and without norm outliers."""
    n_ctx = r.dictionaries[0].contexts if r.dictionaries else 0
    lines = [
        f"{r.atlas}: {r.model}, {r.tokens:,} held-out tokens ({n_ctx:,} contexts; intervals: 95% "
        "bootstrap "
        "over contexts)",
        "",
    ]
    for e in r.dictionaries:
        lo, hi = e.ce_added_ci
        klo, khi = e.kl_ci
        lines += [
            f"{e.hook} ({e.arch}, {e.d_sae:,} latents"
            + (f", writes {e.out_hook}" if e.out_hook else "")
            + ")",
            f"  loss added by the splice  {e.ce_added:+.4f} nats/token [{lo:+.4f}, {hi:+.4f}]   "
            f"KL(clean||spliced) {e.kl:.4f} [{klo:.4f}, {khi:.4f}]",
            f"  CE clean {e.ce_clean:.4f}  spliced {e.ce_spliced:.4f}  mean-ablated "
            f"{e.ce_mean:.4f}  "
            f"zero-ablated {e.ce_zero:.4f}",
            f"  loss recovered: {e.loss_recovered_mean:.1%} vs mean-ablation, "
            f"{e.loss_recovered:.1%} vs zero-ablation",
            f"  FVU {e.fvu_inliers:.3f} [{e.fvu_inliers_ci[0]:.3f}, {e.fvu_inliers_ci[1]:.3f}] "
            "without the "
            f"{e.outlier_tokens} norm outliers; {e.fvu:.3f} [{e.fvu_ci[0]:.3f}, "
            f"{e.fvu_ci[1]:.3f}] with them",
            f"    (outlier: ||x|| > {r.outlier_factor:g}x the median norm = "
            f"{e.outlier_threshold:,.0f}; "
            f"{e.outlier_tokens / max(1, e.tokens):.2%} of the tokens, {e.outlier_var_share:.0%} "
            "of the variance, "
            f"{e.outlier_err_share:.0%} of the squared error)",
            f"  L0 {e.l0:.1f}  dead {e.dead_frac:.1%}  dense {e.dense_frac:.1%}  MSE {e.mse:.4g}",
        ]
        if e.insample is not None:
            s = e.insample
            lines.append(
                f"  in-sample, same measure on {s.tokens:,} training-split tokens: FVU "
                f"{s.fvu_inliers:.3f} "
                f"[{s.fvu_inliers_ci[0]:.3f}, {s.fvu_inliers_ci[1]:.3f}] without its "
                f"{s.outlier_tokens} "
                f"outliers; {s.fvu:.3f} [{s.fvu_ci[0]:.3f}, {s.fvu_ci[1]:.3f}] with them"
            )
        if e.train_fvu_reported is not None:
            lines.append(
                f"  (`lmscope train` printed FVU {e.train_fvu_reported:.3f}: the mean of "
                "per-batch FVUs over "
                "its last 10% of steps; a batch holding an outlier scores low, one without scores "
                "like "
                "the no-outlier FVU, so it falls between the two pooled numbers above)"
            )
        if e.overlap_documents is None:
            lines.append(
                f"  documents: {e.eval_documents:,} evaluated; training documents not recorded "
                "(unchecked)"
            )
        else:
            lines.append(
                f"  documents: {e.eval_documents:,} evaluated, {e.train_documents:,} in training, "
                f"{e.overlap_documents} shared"
            )
        lines.append("")
    plots = [e.plot for e in r.dictionaries if e.plot]
    if plots:
        lines += ["density histograms: " + ", ".join(plots)]
    return "\n".join(lines).rstrip()


__all__ = [
    "DictionaryEval",
    "EvalConfig",
    "EvalReport",
    "Reconstruction",
    "bootstrap_ratio",
    "clean_stats",
    "density_plot",
    "evaluate_atlas",
    "evaluate_dictionaries",
    "format_report",
    "heldout_contexts",
    "reconstruction",
]
