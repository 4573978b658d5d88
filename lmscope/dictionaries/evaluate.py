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
- Many dictionaries (a transcoder per layer): one clean pass per batch serves all of them, and
  each splice resumes the forward after its block (lmscope.models.resume) instead of running
  it whole; --splice-tokens measures the loss on fewer tokens than FVU/L0/dead.
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
import time
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
    splice_tokens: int = 0
    """Measure the spliced loss (added nats, KL, ablations) on only the first held-out contexts
    holding this many tokens (whole batches); FVU, L0 and dead latents use all --tokens (they
    need one clean pass for every dictionary, a splice needs a pass per dictionary). 0: all."""
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
    model_dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    """dtype of the model weights; auto: bfloat16 on a CPU with native bf16 (AVX-512 BF16 / AMX)
    or a GPU, float32 otherwise. Clean and spliced passes share it, so the added loss and the KL
    compare like with like."""
    baselines: bool = True
    """Also splice the mean and zero at each hook (2 more passes per dictionary) for the
    loss-recovered fractions; --no-baselines halves the time of a many-layer eval."""
    device: str = "cpu"
    """torch device."""
    plots: bool = True
    """Write a feature-density histogram per dictionary to ATLAS/plots/ (needs matplotlib)."""

    def __post_init__(self) -> None:
        if self.tokens < 1:
            raise ValueError(f"--tokens must be >= 1, got {self.tokens}")
        if self.splice_tokens < 0:
            raise ValueError(f"--splice-tokens must be >= 0, got {self.splice_tokens}")
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
    loss_contexts: int
    """Contexts the spliced-loss numbers (CE, KL, ablations) are measured on (--splice-tokens)."""
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
    ce_zero: float | None
    """CE with the activation zeroed at the hook (text positions); None: --no-baselines."""
    ce_mean: float | None
    """CE with the activation replaced by its mean over the evaluated text tokens."""
    loss_recovered: float | None
    """(ce_zero - ce_spliced) / (ce_zero - ce_clean): against zero-ablation (flatters)."""
    loss_recovered_mean: float | None
    """(ce_mean - ce_spliced) / (ce_mean - ce_clean): against mean-ablation."""
    ce_recon_plus_error: float
    """CE with reconstruction + error spliced in on the first context (must equal
    ce_clean_first, the clean CE of that context)."""
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
    layer: int | None = None
    """Block of the hook the dictionary reads (None: embed-free names such as ln_final)."""
    k: int | None = None
    """TopK / BatchTopK k (the L0 it was trained for); None for other architectures."""


@dataclass
class EvalReport:
    atlas: str
    model: str
    tokens: int
    outlier_factor: float = OUTLIER_FACTOR
    dictionaries: list[DictionaryEval] = field(default_factory=list)
    model_dtype: str = "float32"
    """dtype the model ran in (clean and spliced passes alike)."""
    seconds: float | None = None
    """Wall time of the evaluation (model load excluded)."""
    plot: str | None = None
    """The metrics-by-layer PNG (when more than one layer was evaluated)."""

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
# Log-probabilities are [rows, pos, vocab] float32: on Gemma 3's 262k vocabulary one batch of 8
# contexts of 128 tokens is 1.07 GB per tensor, and a KL needs several at once. Rows are taken
# a few at a time so that each temporary stays within this budget (SmolLM2's batch of 8 fits in
# one chunk, so its numbers do not change).
LOGPROB_CHUNK_BYTES = 256 * 2**20


def _row_chunks(logits: Tensor) -> list[slice]:
    """Slices over contexts so that a float32 [rows, pos, vocab] block fits LOGPROB_CHUNK_BYTES."""
    b, pos, vocab = logits.shape
    step = max(1, LOGPROB_CHUNK_BYTES // max(1, pos * vocab * 4))
    return [slice(i, i + step) for i in range(0, b, step)]


def _ce_rows(logits: Tensor, tokens: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Per context: summed next-token CE over targets where mask[:, 1:], and their count. [batch]
    each."""
    m = mask[:, 1:]
    ce = []
    for r in _row_chunks(logits):
        lp = F.log_softmax(logits[r, :-1].float(), dim=-1)  # [rows, pos-1, vocab]
        nll = -lp.gather(-1, tokens[r, 1:, None]).squeeze(-1)  # [rows, pos-1]
        ce.append((nll * m[r]).double().sum(1).cpu())
    return torch.cat(ce), m.sum(1).cpu()


def _ce_kl_rows(
    lp: Tensor, other: Tensor, tokens: Tensor | None, mask: Tensor
) -> tuple[Tensor | None, Tensor]:
    """Per context [batch]: summed CE of `other` logits (None without tokens) and summed
    KL(clean || other), over targets where mask[:, 1:], from one log-softmax of `other`.

    lp: the clean log-probabilities [batch, pos-1, vocab], computed once per batch and shared by
    every dictionary's splice; the rest is done a few contexts at a time (_row_chunks)."""
    m = mask[:, 1:]
    ces, kls = [], []
    for r in _row_chunks(other):
        lq = F.log_softmax(other[r, :-1].float(), dim=-1)  # [rows, pos-1, vocab]
        kl = (lp[r].exp() * (lp[r] - lq)).sum(-1)  # [rows, pos-1]
        kls.append((kl * m[r]).double().sum(1).cpu())
        if tokens is not None:
            nll = -lq.gather(-1, tokens[r, 1:, None]).squeeze(-1)  # [rows, pos-1]
            ces.append((nll * m[r]).double().sum(1).cpu())
    return (torch.cat(ces) if tokens is not None else None), torch.cat(kls)


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
        return {k: torch.cat(v) for k, v in self.rows.items() if v}


def _recovered(ce: dict[str, float], ref: str) -> float:
    """(ce[ref] - spliced) / (ce[ref] - clean): the fraction of the ablation's damage the splice
    avoids."""
    denom = ce[ref] - ce["clean"]
    return (ce[ref] - ce["spliced"]) / denom if abs(denom) > 1e-12 else math.nan


class _Splicer:
    """Logits of one batch with one hook's activation replaced, by the cheapest exact route.

    A dictionary writing blocks.L.resid_post or blocks.L.mlp_out changes nothing before block L,
    so its spliced pass resumes after block L from the clean run's residual stream
    (lmscope.models.resume): resid_post = resid_mid + mlp_out, added in the model's dtype as the
    block adds them, so a splice of the clean value gives the clean logits bit for bit. Other
    hooks (attn_out, resid_pre, ...) run the full forward with an edit.
    """

    RESUMABLE = ("resid_post", "mlp_out")

    def __init__(self, lm: LanguageModel, out_hooks: list[str], *, resume: bool = True) -> None:
        from ..models.hooks import HookPoints

        self.lm = lm
        self.route: dict[str, tuple[int, str] | None] = {}
        for h in out_hooks:
            parsed = HookPoints.parse(h) if resume else None
            self.route[h] = parsed if parsed and parsed[1] in self.RESUMABLE else None

    def captures(self) -> list[str]:
        """Extra clean activations the resumed splices add to (resid_mid under mlp_out)."""
        return [f"blocks.{r[0]}.resid_mid" for r in self.route.values() if r and r[1] == "mlp_out"]

    def logits(
        self, tokens: Tensor, clean_acts: dict[str, Tensor], out_h: str, value: Tensor, keep: Tensor
    ) -> Tensor:
        """value [b, pos, d] replaces the activation at out_h where keep [b, pos]."""
        from ..models.resume import resume
        from ..models.runtime import run

        r = self.route[out_h]
        if r is None:
            return run(self.lm, tokens, edits={out_h: _splice(value, keep)}, logits=True).logits
        layer, kind = r
        clean = clean_acts[out_h]
        v = torch.where(keep[..., None], value.to(clean.dtype), clean)  # what _splice gives
        if kind == "mlp_out":
            v = clean_acts[f"blocks.{layer}.resid_mid"] + v
        return resume(self.lm, tokens, layer=layer, resid_post=v)


@torch.no_grad()
def _splice_check(
    lm: LanguageModel,
    splicer: _Splicer,
    d: SparseDictionary,
    h: str,
    out_h: str,
    tokens: Tensor,
    needed: list[str],
) -> tuple[float, float]:
    """(CE with reconstruction + error spliced in, clean CE) on `tokens` [1, pos]: must be equal.

    Reconstruction + error, added in float64, is bitwise the clean activation, so the loss must
    not move; through the splicer this also checks the resumed forward against a clean one on
    the real model. One context (its own clean pass, so both sides have the same batch shape):
    a check per dictionary at 1/batch of a splice's cost."""
    from ..models.runtime import run

    keep = token_mask(lm, tokens)
    clean = run(lm, tokens, capture=needed, logits=True)
    t = clean.acts[out_h]
    full = t.float().clone()
    full[keep] = _reconstruct(d, clean.acts[h].float()[keep])[1].to(full.dtype)
    r64 = full.double()
    back = (r64 + (t.double() - r64)).to(t.dtype)
    ck = splicer.logits(tokens, clean.acts, out_h, back, torch.ones_like(keep))
    ce_ck, n = _ce_rows(ck, tokens, keep)
    m = max(1, int(n.sum()))
    return float(ce_ck.sum()) / m, float(_ce_rows(clean.logits, tokens, keep)[0].sum()) / m


def _layer_order(h: str) -> tuple[float, str]:
    """Sort key: where the hook sits in the forward pass (embed first, ln_final last)."""
    from ..models.hooks import KINDS, HookPoints

    p = HookPoints.parse(h)
    return (p[0] + KINDS.index(p[1]) / len(KINDS) if p else (-1 if h == "embed" else math.inf), h)


@torch.no_grad()
def evaluate_dictionaries(
    lm: LanguageModel,
    dicts: dict[str, SparseDictionary],
    contexts: list[Tensor],
    *,
    batch: int = 8,
    progress: bool = True,
    baselines: bool = True,
    resume: bool = True,
    splice_tokens: int = 0,
) -> list[DictionaryEval]:
    """Evaluate `dicts` (hook -> SparseDictionary) on token contexts [ctx_len] each.

    One clean forward per batch captures every hook (and the clean logits) for all dictionaries
    at once; each dictionary's splice then resumes the forward after its block (`resume`; False
    runs every splice as a full forward, the reference the tests compare with).
    """
    from ..models.hooks import HookPoints
    from ..models.runtime import run

    dicts = dict(sorted(dicts.items(), key=lambda kv: _layer_order(kv[0])))
    outs = {h: d.cfg.out_hook_name or h for h, d in dicts.items()}
    splicer = _Splicer(lm, sorted(set(outs.values())), resume=resume)
    needed = list(dict.fromkeys(_needed(dicts) + splicer.captures()))
    chunks = [
        torch.stack(contexts[i : i + batch]) for i in range(0, len(contexts), batch)
    ]  # [b, ctx_len]
    stats = clean_stats(lm, sorted(set(outs.values())), chunks)
    n_splice = len(chunks)  # batches whose spliced loss is measured: enough for splice_tokens
    if splice_tokens:
        have = np.cumsum([int(token_mask(lm, c).sum()) for c in chunks])  # [batches]
        n_splice = min(len(chunks), int(np.searchsorted(have, splice_tokens)) + 1)
    loss_contexts = sum(c.shape[0] for c in chunks[:n_splice])
    recon = {h: _ReconSums(OUTLIER_FACTOR * stats[outs[h]].median_norm) for h in dicts}
    loss = {h: _LossSums() for h in dicts}
    active = {h: 0.0 for h in dicts}
    fires = {h: torch.zeros(d.d_sae, dtype=torch.float64) for h, d in dicts.items()}
    check: dict[str, tuple[float, float]] = {}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n_splice * len(dicts), desc="eval", unit="splice", dynamic_ncols=True)
    for ci, tokens in enumerate(chunks):
        tokens = tokens.to(lm.device)  # [b, ctx_len]
        keep = token_mask(lm, tokens)
        row = keep.nonzero()[:, 0]  # [tokens] context of each kept token
        splice = ci < n_splice
        clean = run(lm, tokens, capture=needed, logits=splice)  # no LM head: FVU/L0 only
        if splice:
            ce_clean, n = _ce_rows(clean.logits, tokens, keep)
            lp_clean = F.log_softmax(clean.logits[:, :-1].float(), dim=-1)  # once for every KL
        for h, d in dicts.items():
            out_h = outs[h]
            x = clean.acts[h].float()  # [b, pos, d_in]
            t = clean.acts[out_h].float()  # [b, pos, d_out]
            acts, rec = _reconstruct(d, x[keep])  # [tokens, d_sae], [tokens, d_out]
            recon[h].add(t[keep], rec, row, tokens.shape[0])
            fired = acts > 0
            active[h] += float(fired.sum())
            fires[h] += fired.sum(0).double().cpu()
            if not splice:
                continue
            full = t.clone()
            full[keep] = rec.to(full.dtype)  # [b, pos, d_out]
            spliced = splicer.logits(tokens, clean.acts, out_h, full, keep)
            ce_sp, kl = _ce_kl_rows(lp_clean, spliced, tokens, keep)
            parts = dict(clean=ce_clean, spliced=ce_sp, kl=kl, n=n)
            if baselines:
                zero = splicer.logits(tokens, clean.acts, out_h, torch.zeros_like(t), keep)
                mean = stats[out_h].mean.to(t.device, t.dtype).expand_as(t)  # [b, pos, d_out]
                mean_abl = splicer.logits(tokens, clean.acts, out_h, mean, keep)
                parts.update(
                    zero=_ce_rows(zero, tokens, keep)[0], mean=_ce_rows(mean_abl, tokens, keep)[0]
                )
            loss[h].add(**parts)
            if ci == 0:
                check[h] = _splice_check(lm, splicer, d, h, out_h, tokens[:1], needed)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    out = []
    for h, d in dicts.items():
        r = recon[h].result()
        rows = loss[h].cat()
        n_ce = max(1, int(rows["n"].sum()))
        ce = {
            k: float(rows[k].sum()) / n_ce
            for k in ("clean", "spliced", "zero", "mean")
            if k in rows
        }
        freq = fires[h] / max(1, r.tokens)
        parsed = HookPoints.parse(h)
        out.append(
            DictionaryEval(
                hook=h,
                out_hook=d.cfg.out_hook_name,
                arch=d.cfg.arch,
                d_sae=d.d_sae,
                tokens=r.tokens,
                contexts=len(contexts),
                loss_contexts=loss_contexts,
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
                ce_zero=ce.get("zero"),
                ce_mean=ce.get("mean"),
                loss_recovered=_recovered(ce, "zero") if baselines else None,
                loss_recovered_mean=_recovered(ce, "mean") if baselines else None,
                ce_recon_plus_error=check[h][0] if h in check else math.nan,
                ce_clean_first=check[h][1] if h in check else math.nan,
                layer=parsed[0] if parsed else (0 if h == "embed" else None),
                k=getattr(d.cfg, "k", None) if d.cfg.arch in ("topk", "batchtopk") else None,
            )
        )
        out[-1]._freq = freq  # type: ignore[attr-defined]  # for the plot
    return out


def density_plot(ev: DictionaryEval, freq: Tensor, path: Path) -> Path:
    """Histogram of log10 firing frequency per latent (dead latents counted in the title)."""
    from .layer_plot import pyplot

    plt = pyplot()
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
    unrecorded: list[str] = []
    for h, e in entries.items():
        rec = e.get("train_data")
        if not rec or not rec.get("file"):
            out[h] = (None, None)
            unrecorded.append(h)
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
    if unrecorded:  # one line, however many dictionaries (a whole-model atlas has 30)
        if len(unrecorded) == 1:
            which = f"{unrecorded[0]} has no"
        elif len(unrecorded) == len(entries):
            which = f"none of the {len(entries)} dictionaries has a"
        else:
            which = f"{len(unrecorded)} dictionaries ({', '.join(unrecorded)}) have no"
        print(
            f"lmscope: {which} record of the training documents (trained before lmscope kept "
            "one, or imported); held-out disjointness is not checked",
            file=sys.stderr,
        )
    return out


def model_dtype(cfg: EvalConfig) -> torch.dtype:
    """The dtype --model-dtype names; auto: bfloat16 where it is native (GPU, or a CPU with
    AVX-512 BF16 / AMX), float32 elsewhere (emulated bf16 is several times slower)."""
    from ..models.load import cpu_half_is_slow

    if cfg.model_dtype != "auto":
        return getattr(torch, cfg.model_dtype)
    return torch.float32 if cpu_half_is_slow(torch.bfloat16, cfg.device) else torch.bfloat16


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
        lm = load_model(cfg.model or folder.model, dtype=model_dtype(cfg), device=cfg.device)
    t0 = time.perf_counter()
    dicts = folder.load(hooks, lm, device=cfg.device)
    seen: set[int] = set()
    contexts = heldout_contexts(lm, cfg.corpus, tokens=cfg.tokens, ctx_len=cfg.ctx_len, seen=seen)
    eval_keys = np.unique(np.array(sorted(seen), dtype=np.uint64))
    docs = _check_documents(folder, entries, eval_keys, cfg.corpus, cfg.allow_overlap)
    results = evaluate_dictionaries(
        lm,
        dicts,
        contexts,
        batch=cfg.batch,
        progress=progress,
        baselines=cfg.baselines,
        splice_tokens=cfg.splice_tokens,
    )
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
    report = EvalReport(
        atlas=str(layout.root),
        model=manifest["model"],
        tokens=results[0].tokens if results else 0,
        dictionaries=results,
        model_dtype=str(next(lm.model.parameters()).dtype).removeprefix("torch."),
    )
    if cfg.plots:
        from .layer_plot import LAYER_PLOT, layer_plot

        try:
            for ev in results:
                ev.plot = str(
                    density_plot(
                        ev, ev._freq, layout.plots / f"density_{hook_dirname(ev.hook)}.png"
                    )
                )  # type: ignore[attr-defined]
            if len({ev.layer for ev in results if ev.layer is not None}) > 1:
                report.plot = str(layer_plot(report, layout.plots / LAYER_PLOT))
        except UserError as e:  # no matplotlib: the numbers are still worth having
            print(f"lmscope: skipping plots: {e}", file=sys.stderr)
    report.seconds = time.perf_counter() - t0
    write_json_atomic(
        layout.root / "eval.json", {"schema_version": EVAL_SCHEMA_VERSION, **report.to_dict()}
    )
    return report


def _ci(v: float, ci: tuple[float, float], fmt: str) -> str:
    return f"{v:{fmt}} [{ci[0]:{fmt}}, {ci[1]:{fmt}}]"


def format_table(r: EvalReport) -> str:
    """One row per dictionary, in layer order: FVU, L0, dead %, added nats and KL with their
    intervals (the per-layer view of a whole-model run; eval.json holds every field)."""
    ds = r.dictionaries
    n_ctx = ds[0].contexts if ds else 0
    n_loss = ds[0].loss_contexts if ds else 0
    base = any(e.loss_recovered_mean is not None for e in ds)
    head = (
        f"{'hook':<20} {'FVU [95% CI]':<22} {'FVU-inl':>7} {'L0':>6} {'k':>4} {'dead':>6} "
        f"{'added nats/tok [95% CI]':<30} {'KL nats/tok [95% CI]':<27}"
        + (f" {'rec.mean':>8}" if base else "")
    )
    lines = [
        f"{r.atlas}: {r.model} ({r.model_dtype}), {len(ds)} dictionaries, {r.tokens:,} held-out "
        f"tokens in {n_ctx:,} contexts"
        + (f" (spliced loss: the first {n_loss:,})" if n_loss != n_ctx else "")
        + "; intervals: 95% bootstrap over contexts",
        "",
        head,
        "-" * len(head),
    ]
    for e in ds:
        lines.append(
            f"{e.hook:<20} {_ci(e.fvu, e.fvu_ci, '.3f'):<22} {e.fvu_inliers:>7.3f} {e.l0:>6.1f} "
            f"{e.k if e.k is not None else '-':>4} {e.dead_frac:>6.1%} "
            f"{_ci(e.ce_added, e.ce_added_ci, '+.4f'):<30} {_ci(e.kl, e.kl_ci, '.4f'):<27}"
            + (
                f" {e.loss_recovered_mean:>8.1%}"
                if base and e.loss_recovered_mean is not None
                else (f" {'-':>8}" if base else "")
            )
        )
    ce = ds[0].ce_clean if ds else math.nan
    bad = [e.hook for e in ds if e.ce_recon_plus_error != e.ce_clean_first]
    lines += [
        "",
        f"FVU: pooled over every token (FVU-inl: without the norm outliers, ||x|| > "
        f"{r.outlier_factor:g}x median); L0: active latents per token (k: trained for); dead: "
        "never fired on these tokens;",
        f"added nats: CE(spliced) - CE(clean) per text token, clean CE {ce:.4f}; KL(clean || "
        "spliced) per token" + ("; rec.mean: loss recovered vs mean-ablation" if base else ""),
        "splice check (reconstruction + error gives the clean loss): "
        + ("exact for every dictionary" if not bad else "FAILED for " + ", ".join(bad)),
    ]
    ov = [e for e in ds if e.overlap_documents]
    unchecked = [e for e in ds if e.overlap_documents is None]
    lines.append(
        f"documents: {ds[0].eval_documents:,} evaluated; "
        + (
            f"{len(ov)} dictionaries share some with training (--allow-overlap)"
            if ov
            else "no training documents recorded, disjointness unchecked"
            if len(unchecked) == len(ds)
            else "none in any recorded dictionary's training data"
        )
        + (
            f" ({len(unchecked)} without a record, unchecked)"
            if unchecked and len(unchecked) < len(ds)
            else ""
        )
        if ds
        else "documents: none"
    )
    if r.plot:
        lines.append(f"metrics by layer: {r.plot}")
    if r.seconds is not None:
        lines.append(f"evaluated in {r.seconds:.0f} s")
    return "\n".join(lines)


def format_report(r: EvalReport) -> str:
    """The printed report: one dictionary in detail (added loss and KL first, FVU with and
    without norm outliers), several as one table by layer (format_table)."""
    if len(r.dictionaries) > 1:
        return format_table(r)
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
            f"  CE clean {e.ce_clean:.4f}  spliced {e.ce_spliced:.4f}"
            + (
                f"  mean-ablated {e.ce_mean:.4f}  zero-ablated {e.ce_zero:.4f}"
                if e.ce_mean is not None and e.ce_zero is not None
                else ""
            ),
        ]
        if e.loss_recovered_mean is not None and e.loss_recovered is not None:
            lines.append(
                f"  loss recovered: {e.loss_recovered_mean:.1%} vs mean-ablation, "
                f"{e.loss_recovered:.1%} vs zero-ablation"
            )
        lines += [
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
    "format_table",
    "model_dtype",
    "heldout_contexts",
    "reconstruction",
]
