"""Honest evaluation of trained dictionaries: reconstruction, sparsity, and the spliced LM loss.

For each dictionary of an atlas, on held-out corpus text (the split training never saw):

- MSE (per token, summed over d) and FVU = sum ||x - x_hat||^2 / sum ||x - mean(x)||^2;
- L0 (active latents per token), the dead fraction (never fired on these tokens) and the
  dense fraction (fires on > 10% of tokens);
- the language-model loss with the reconstruction spliced in: the model runs again with
  the activation at the hook replaced by the dictionary's output (lmscope.capture.hooks
  edits). We report the clean CE, the spliced CE, the zero-ablated CE, the fraction of
  loss recovered (zero - spliced) / (zero - clean) and KL(clean || spliced) per token
  (Bricken et al. 2023; Gao et al. 2024 Sec. 4.1). A transcoder reads its input hook from
  the clean run and replaces its *output* hook (mlp_out) with its prediction.
- as a check of the machinery, the splice of reconstruction + error (x_hat + (x - x_hat),
  done in float64 so it is bitwise x) must give back the clean loss exactly.

BOS and other special-token positions keep their clean activation in every splice: the
dictionaries are trained without them (sources.py), and the attention sinks' norms (~25,000
in SmolLM2's middle layer) would make the ablated loss meaningless. CE is averaged over
next-token targets that are text tokens.
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ..atlas.layout import AtlasLayout, hook_dirname, write_json_atomic
from ..errors import UserError
from .sources import token_mask

HELDOUT_SPLIT = "test"
DENSE_THRESHOLD = 0.1


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
    """Evaluate only these dictionaries (comma-separated hook names); empty: all."""
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
        if self.ctx_len < 2:
            raise ValueError(f"--ctx-len must be >= 2, got {self.ctx_len}")
        if self.batch < 1:
            raise ValueError(f"--batch must be >= 1, got {self.batch}")


@dataclass
class DictionaryEval:
    """Numbers for one dictionary."""

    hook: str
    out_hook: str | None
    arch: str
    d_sae: int
    tokens: int
    mse: float
    fvu: float
    l0: float
    dead_frac: float
    dense_frac: float
    ce_clean: float
    ce_spliced: float
    ce_zero: float
    loss_recovered: float
    """(ce_zero - ce_spliced) / (ce_zero - ce_clean): 1 = as good as the model, 0 = as bad as ablation."""
    kl: float
    """Mean KL(clean || spliced) per token, in nats."""
    ce_recon_plus_error: float
    """CE with reconstruction + error spliced in on the first batch (must equal ce_clean_first)."""
    ce_clean_first: float
    plot: str | None = None


@dataclass
class EvalReport:
    atlas: str
    model: str
    tokens: int
    dictionaries: list[DictionaryEval] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


class _Acc:
    """Running sums for one dictionary."""

    def __init__(self, d_sae: int, d_out: int) -> None:
        self.n = 0
        self.sq_err = 0.0
        self.sum_x = torch.zeros(d_out, dtype=torch.float64)
        self.sum_x2 = 0.0
        self.active = 0.0
        self.fires = torch.zeros(d_sae, dtype=torch.float64)
        self.ce = {"clean": 0.0, "spliced": 0.0, "zero": 0.0}
        self.kl = 0.0
        self.n_ce = 0
        self.ce_check: tuple[float, float] | None = None


def _ce_sum(logits: Tensor, tokens: Tensor, mask: Tensor) -> tuple[float, int]:
    """Summed next-token CE over targets where mask[:, 1:] (and the count)."""
    lp = F.log_softmax(logits[:, :-1].float(), dim=-1)  # [batch, pos-1, vocab]
    nll = -lp.gather(-1, tokens[:, 1:, None]).squeeze(-1)  # [batch, pos-1]
    m = mask[:, 1:]
    return float(nll[m].sum()), int(m.sum())


def _kl_sum(clean: Tensor, other: Tensor, mask: Tensor) -> float:
    lp = F.log_softmax(clean[:, :-1].float(), dim=-1)
    lq = F.log_softmax(other[:, :-1].float(), dim=-1)
    kl = (lp.exp() * (lp - lq)).sum(-1)  # [batch, pos-1]
    return float(kl[mask[:, 1:]].sum())


def _splice(value: Tensor, keep: Tensor):
    """An edit replacing the activation by `value` [batch, pos, d] where keep [batch, pos]."""

    def f(x: Tensor) -> Tensor:
        return torch.where(keep[..., None], value.to(x.dtype), x)

    return f


@torch.no_grad()
def evaluate_dictionaries(lm, dicts: dict[str, object], contexts: list[Tensor], *, batch: int = 8,
                          progress: bool = True) -> list[DictionaryEval]:
    """Evaluate `dicts` (hook -> SparseDictionary) on token contexts [ctx_len] each."""
    from ..capture.hooks import run

    needed: list[str] = []
    for h, d in dicts.items():
        for x in (h, d.cfg.out_hook_name):
            if x and x not in needed:
                needed.append(x)
    accs = {h: _Acc(d.d_sae, d.d_out) for h, d in dicts.items()}
    chunks = [contexts[i:i + batch] for i in range(0, len(contexts), batch)]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(chunks), desc="eval", unit="batch", dynamic_ncols=True)
    for ci, chunk in enumerate(chunks):
        tokens = torch.stack(chunk).to(lm.device)  # [b, ctx_len]
        keep = token_mask(lm, tokens)
        clean = run(lm, tokens, capture=needed, logits=True)
        for h, d in dicts.items():
            a = accs[h]
            out_h = d.cfg.out_hook_name or h
            x = clean.acts[h].float()  # [b, pos, d_in]
            t = clean.acts[out_h].float()  # [b, pos, d_out]
            xs, ts = x[keep], t[keep]  # [tokens, d]
            acts = d.encode(xs)  # [tokens, d_sae]
            rec = d.decode(acts, xs) if d.W_skip is not None else d.decode(acts)  # [tokens, d_out]
            a.n += xs.shape[0]
            a.sq_err += float((rec - ts).double().pow(2).sum())
            a.sum_x += ts.double().sum(0)
            a.sum_x2 += float(ts.double().pow(2).sum())
            fired = acts > 0
            a.active += float(fired.sum())
            a.fires += fired.sum(0).double()
            full = t.clone()
            full[keep] = rec.to(full.dtype)  # [b, pos, d_out]
            spliced = run(lm, tokens, edits={out_h: _splice(full, keep)}, logits=True).logits
            zero = run(lm, tokens, edits={out_h: _splice(torch.zeros_like(t), keep)}, logits=True).logits
            for name, lg in (("clean", clean.logits), ("spliced", spliced), ("zero", zero)):
                s, n = _ce_sum(lg, tokens, keep)
                a.ce[name] += s
            a.n_ce += n
            a.kl += _kl_sum(clean.logits, spliced, keep)
            if ci == 0:
                # recon + error in float64 is bitwise the clean activation: the loss must not move.
                r64 = full.double()
                back = (r64 + (t.double() - r64)).to(t.dtype)
                check = run(lm, tokens, edits={out_h: _splice(back, torch.ones_like(keep))}, logits=True).logits
                a.ce_check = (_ce_sum(check, tokens, keep)[0] / max(1, n), _ce_sum(clean.logits, tokens, keep)[0] / max(1, n))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    out = []
    for h, d in dicts.items():
        a = accs[h]
        n = max(1, a.n)
        var = a.sum_x2 - float(a.sum_x.pow(2).sum()) / n
        freq = a.fires / n
        ce = {k: v / max(1, a.n_ce) for k, v in a.ce.items()}
        denom = ce["zero"] - ce["clean"]
        out.append(DictionaryEval(
            hook=h, out_hook=d.cfg.out_hook_name, arch=d.cfg.arch, d_sae=d.d_sae, tokens=a.n,
            mse=a.sq_err / n, fvu=a.sq_err / max(var, 1e-12), l0=a.active / n,
            dead_frac=float((a.fires == 0).double().mean()), dense_frac=float((freq > DENSE_THRESHOLD).double().mean()),
            ce_clean=ce["clean"], ce_spliced=ce["spliced"], ce_zero=ce["zero"],
            loss_recovered=(ce["zero"] - ce["spliced"]) / denom if abs(denom) > 1e-12 else math.nan,
            kl=a.kl / max(1, a.n_ce), ce_recon_plus_error=a.ce_check[0] if a.ce_check else math.nan,
            ce_clean_first=a.ce_check[1] if a.ce_check else math.nan))
        out[-1]._freq = freq  # type: ignore[attr-defined]  # for the plot
    return out


def density_plot(ev: DictionaryEval, freq: Tensor, path: Path) -> Path:
    """Histogram of log10 firing frequency per latent (dead latents counted in the title)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("plots need matplotlib: pip install 'lmscope[plot]' (or pass --no-plots)") from None
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


def heldout_contexts(lm, corpus: str, *, tokens: int, ctx_len: int) -> list[Tensor]:
    """Enough held-out contexts for `tokens` non-BOS tokens."""
    from .sources import iter_contexts

    out, have = [], 0
    for ctx in iter_contexts(lm, corpus, ctx_len=ctx_len, split=HELDOUT_SPLIT):
        out.append(ctx)
        have += int(token_mask(lm, ctx[None])[0].sum())
        if have >= tokens:
            break
    if not out:
        raise UserError(f"the held-out split of corpus {corpus!r} is empty; use a larger --corpus")
    if have < tokens:
        print(f"lmscope: the held-out split of {corpus!r} has only {have:,} tokens; evaluating on those",
              file=sys.stderr)
    return out


def evaluate_atlas(cfg: EvalConfig, *, lm=None, progress: bool = True) -> EvalReport:
    """Evaluate every (or the selected) dictionary of an atlas; writes eval.json and plots."""
    from ..models import load_model
    from .io import load_dictionary

    layout = AtlasLayout(cfg.atlas)
    manifest = layout.read()
    entries = manifest["dictionaries"]
    if cfg.hooks:
        wanted = [h.strip() for h in cfg.hooks.split(",") if h.strip()]
        for h in wanted:
            if h not in entries:
                from ..errors import close_matches

                raise UserError(f"no dictionary for {h!r} in {layout.root}{close_matches(h, entries)}")
        entries = {h: entries[h] for h in wanted}
    if not entries:
        raise UserError(f"{layout.root} holds no dictionaries yet; run `lmscope train --out {layout.root}` first")
    if lm is None:
        lm = load_model(cfg.model or manifest["model"], dtype=getattr(torch, cfg.model_dtype), device=cfg.device)
    dicts = {h: load_dictionary(layout.root / e["path"], device=cfg.device).eval() for h, e in entries.items()}
    contexts = heldout_contexts(lm, cfg.corpus, tokens=cfg.tokens, ctx_len=cfg.ctx_len)
    results = evaluate_dictionaries(lm, dicts, contexts, batch=cfg.batch, progress=progress)
    if cfg.plots:
        try:
            for ev in results:
                ev.plot = str(density_plot(ev, ev._freq, layout.plots / f"density_{hook_dirname(ev.hook)}.png"))  # type: ignore[attr-defined]
        except UserError as e:  # no matplotlib: the numbers are still worth having
            print(f"lmscope: skipping plots: {e}", file=sys.stderr)
    report = EvalReport(atlas=str(layout.root), model=manifest["model"], tokens=results[0].tokens if results else 0,
                        dictionaries=results)
    write_json_atomic(layout.root / "eval.json", {"schema_version": 1, **report.to_dict()})
    return report


def format_report(r: EvalReport) -> str:
    lines = [f"{r.atlas}: {r.model}, {r.tokens:,} held-out tokens", "",
             f"{'dictionary':<24} {'FVU':>6} {'MSE':>9} {'L0':>6} {'dead':>6} {'dense':>6} "
             f"{'CE clean':>8} {'spliced':>8} {'zero':>8} {'recov.':>7} {'KL':>7}"]
    for e in r.dictionaries:
        lines.append(f"{e.hook:<24} {e.fvu:6.3f} {e.mse:9.4g} {e.l0:6.1f} {e.dead_frac:6.1%} {e.dense_frac:6.1%} "
                     f"{e.ce_clean:8.4f} {e.ce_spliced:8.4f} {e.ce_zero:8.4f} {e.loss_recovered:7.1%} {e.kl:7.4f}")
    plots = [e.plot for e in r.dictionaries if e.plot]
    if plots:
        lines += ["", "density histograms: " + ", ".join(plots)]
    return "\n".join(lines)


__all__ = ["DictionaryEval", "EvalConfig", "EvalReport", "density_plot", "evaluate_atlas",
           "evaluate_dictionaries", "format_report", "heldout_contexts"]
