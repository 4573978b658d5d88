"""The sparse dictionary every architecture shares: config, parameters, normalization, saving.

A sparse dictionary maps an activation `x` [batch, d_in] read at one hook point to a
sparse code `acts` [batch, d_sae] and back to a reconstruction [batch, d_out] of a
target: the same activation (an SAE, d_out == d_in) or another hook's activation (a
transcoder, e.g. mlp_in -> mlp_out; Dunefsky et al. 2024). The architectures
(topk.py, batchtopk.py, jumprelu.py, relu.py) differ only in the activation function
and the sparsity term of the loss; everything else lives here:

- Activation normalization (SAELens "expected_average_only_in"): inputs are multiplied
  by a scalar `act_scale` so their mean squared norm is d_in (targets by `act_scale_out`
  to d_out). SmolLM2's residual stream has outlier norms around 4,600 from layer 12 on,
  so an unnormalized loss would be dominated by a few positions and the learning rate
  would depend on the layer. The public `encode`/`decode`/`forward` take and return RAW
  activations; only `loss` works in the normalized space. On save the scales are folded
  into the weights, so the saved file is a plain SAELens SAE on raw activations.
- Decoder rows are kept at unit norm (Bricken et al. 2023; Gao et al. 2024 App. A.4 also
  removes the gradient component parallel to each row) for topk/batchtopk/jumprelu.
  ReLU+L1 leaves the norms free and weights the L1 penalty by them instead (Anthropic,
  "Circuits Updates, April 2024"); those norms are folded into the encoder on save.
- b_dec starts at the geometric median of the (normalized) targets (Bricken et al. 2023)
  and, for SAEs, is subtracted from the input before encoding (Gao et al. 2024 "b_pre").
- The encoder of an SAE starts as the decoder's transpose (Gao et al. 2024 Sec. 2.4). A
  transcoder's input and output are different spaces, so its encoder starts random at
  TRANSCODER_ENC_SCALE (0.1) times the decoder rows' norm: the latents start near zero and the
  skip's least-squares fit and b_dec carry the first steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import torch
import torch.nn as nn
from torch import Tensor

from . import native
from .init import geometric_median, norm_scale, ridge_map

if TYPE_CHECKING:
    from ..models import LanguageModel

ARCHS = ("topk", "batchtopk", "jumprelu", "relu")


@dataclass(frozen=True)
class DictionaryConfig:
    """What a sparse dictionary is: its shape, architecture and loss coefficients."""

    d_in: int
    """Width of the activation read at `hook_name` (the model's d_model for the residual stream)."""
    d_sae: int
    """Number of latents (dictionary width)."""
    arch: Literal["topk", "batchtopk", "jumprelu", "relu"] = "topk"
    """Activation function: topk (Gao et al. 2024), batchtopk (Bussmann et al. 2024), jumprelu
    (Rajamanoharan et al. 2024) or relu (ReLU + decoder-norm-weighted L1)."""
    k: int = 32
    """Active latents per token for topk; average active latents per token for batchtopk."""
    d_out: int | None = None
    """Width of the reconstructed activation; None: an SAE reconstructing its own input (d_out =
    d_in)."""
    skip: bool = False
    """Transcoders: add a linear skip connection W_skip [d_out, d_in] from input to output (Paulo
    et al. 2025)."""
    hook_name: str = ""
    """Our hook point read by the encoder, e.g. blocks.15.resid_post (blocks.L.mlp_in for a
    transcoder)."""
    out_hook_name: str | None = None
    """Transcoders: the hook point the decoder predicts, e.g. blocks.15.mlp_out (None: same as
    hook_name)."""
    model_name: str = ""
    """The model the dictionary was trained on (our name or alias, e.g. smollm2-135m)."""
    l1_coeff: float = 5.0
    """relu: weight of the L1 penalty sum_i |f_i| * ||W_dec_i|| (Anthropic April 2024 uses ~5 at
    mean squared input norm d_in)."""
    l0_coeff: float = 0.5
    """jumprelu: weight of the (straight-through) L0 penalty, in units of squared error per active
    latent."""
    jumprelu_bandwidth: float = 0.05
    """jumprelu: width of the rectangle kernel in the threshold's pseudo-derivative (epsilon in
    Rajamanoharan et al. 2024)."""
    init_threshold: float = 0.1
    """jumprelu: initial threshold of every latent (in normalized units; pre-activations are
    O(1))."""
    aux_k: int | None = None
    """topk/batchtopk: dead latents used by the AuxK loss (None: d_in // 2, Gao et al. 2024 App.
    A.2)."""
    aux_coeff: float = 1 / 32
    """topk/batchtopk: weight of the AuxK loss (Gao et al. 2024 use 1/32)."""
    threshold_momentum: float = 0.01
    """batchtopk: the inference threshold is a running mean of each batch's smallest kept
    activation with this momentum."""
    b_dec_init: Literal["geometric_median", "mean", "zeros"] = "geometric_median"
    """How init_from_data sets the decoder bias from the (normalized) targets."""
    skip_init: Literal["lstsq", "zeros"] = "lstsq"
    """Skip transcoders: W_skip starts as the ridge least-squares map from the init sample (the
    MLP's best
    linear part; the latents then learn what is left) or at zeros (Paulo et al. 2025)."""
    normalize_activations: bool = True
    """Scale inputs (and targets) to mean squared norm d_in (d_out) before encoding; folded into
    the weights on save."""
    seed: int = 0
    """Seed for the initial weights (the same seed gives the same dictionary on CPU)."""

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(
                f"unknown dictionary arch {self.arch!r}; choose one of {', '.join(ARCHS)}"
            )
        if self.d_in < 1:
            raise ValueError(f"d_in must be >= 1, got {self.d_in}")
        if self.d_sae < 1:
            raise ValueError(f"d_sae (dictionary width) must be >= 1, got {self.d_sae}")
        if self.d_out is not None and self.d_out < 1:
            raise ValueError(f"d_out must be >= 1 (or None for an SAE), got {self.d_out}")
        if self.arch in ("topk", "batchtopk"):
            if self.k < 1:
                raise ValueError(f"k must be >= 1 for arch {self.arch}, got {self.k}")
            if self.k > self.d_sae:
                raise ValueError(
                    f"k={self.k} active latents is more than the dictionary width "
                    f"d_sae={self.d_sae}; "
                    "use a smaller k or a wider dictionary"
                )
        if self.aux_k is not None and not 1 <= self.aux_k <= self.d_sae:
            raise ValueError(f"aux_k must be in [1, d_sae={self.d_sae}], got {self.aux_k}")
        for name in ("l1_coeff", "l0_coeff", "aux_coeff"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.jumprelu_bandwidth <= 0:
            raise ValueError(f"jumprelu_bandwidth must be > 0, got {self.jumprelu_bandwidth}")
        if self.init_threshold <= 0:
            raise ValueError(f"init_threshold must be > 0, got {self.init_threshold}")
        if not 0 < self.threshold_momentum <= 1:
            raise ValueError(f"threshold_momentum must be in (0, 1], got {self.threshold_momentum}")
        if self.skip and not self.is_transcoder:
            raise ValueError(
                "skip=True needs a transcoder: set d_out or out_hook_name (an SAE's skip would be "
                "the identity)"
            )

    # --- derived ---------------------------------------------------------------------
    @property
    def output_dim(self) -> int:
        """d_out resolved: the reconstruction width."""
        return self.d_in if self.d_out is None else self.d_out

    @property
    def is_transcoder(self) -> bool:
        """Predicts another activation than it reads (different width or another hook)."""
        return (self.d_out is not None and self.d_out != self.d_in) or (
            self.out_hook_name is not None and self.out_hook_name != self.hook_name
        )

    @property
    def resolved_aux_k(self) -> int:
        return min(self.d_sae, self.aux_k if self.aux_k is not None else max(1, self.d_in // 2))

    @property
    def unit_norm_decoder(self) -> bool:
        """Whether training keeps decoder rows at unit norm (all but relu, whose L1 is
        norm-weighted)."""
        return self.arch != "relu"

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DictionaryConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def replace(self, **changes: Any) -> DictionaryConfig:
        return replace(self, **changes)


class TrainOutput(NamedTuple):
    """One training forward pass, all in the normalized space."""

    loss: Tensor
    """Scalar to backpropagate: mse + sparsity_loss + aux_coeff * aux_loss."""
    mse: Tensor
    """Squared reconstruction error summed over d_out, mean over tokens."""
    fvu: Tensor
    """Fraction of variance unexplained: total squared error / total variance of the target
    (detached)."""
    l0: Tensor
    """Mean number of active latents per token (detached)."""
    aux_loss: Tensor
    """AuxK loss (topk/batchtopk with a dead mask), else 0."""
    fired: Tensor
    """bool [d_sae]: latents active on at least one token of this batch."""
    sparsity_loss: Tensor
    """The weighted L1 (relu) or L0 (jumprelu) term already included in `loss`, else 0."""
    fire_counts: Tensor | None = None
    """[d_sae] tokens of this batch on which each latent fired (topk/batchtopk: counted from the
    sparse code at hand, so the trainer's firing frequencies need no second encode), or None."""


class TopKOutput(NamedTuple):
    """A sparse code with the same number of active latents per token."""

    values: Tensor
    """[batch, k] activations (>= 0)."""
    indices: Tensor
    """[batch, k] int64 latent ids."""


TRANSCODER_ENC_SCALE = 0.1
"""A transcoder's random encoder starts at this fraction of the unit scale (pre-activations ~N(0,
0.01))."""


class SparseDictionary(nn.Module):
    """Shared parameters and machinery; subclasses define `activation` and the sparse loss terms.

    Parameters: W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_out], b_dec [d_out],
    optional W_skip [d_out, d_in]. Buffers: act_scale, act_scale_out (scalars).
    """

    arch: str = ""

    def __init__(self, cfg: DictionaryConfig) -> None:
        super().__init__()
        if cfg.arch != self.arch:
            raise ValueError(f"{type(self).__name__} needs arch={self.arch!r}, got {cfg.arch!r}")
        self.cfg = cfg
        d_in, d_sae, d_out = cfg.d_in, cfg.d_sae, cfg.output_dim
        gen = torch.Generator().manual_seed(cfg.seed)
        # Decoder rows: random unit directions (relu: norm 0.1, Anthropic April 2024).
        W_dec = torch.randn(d_sae, d_out, generator=gen)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        if not cfg.unit_norm_decoder:
            W_dec *= 0.1
        if not cfg.is_transcoder:
            W_enc = W_dec.t().clone()  # Gao et al. 2024: encoder = decoder transpose
        else:
            # Input and output are different spaces, so the transpose means nothing (with
            # d_out == d_in it would start the transcoder as a noisy copy of its input). A small
            # random encoder starts the latents' contribution near zero: the skip's least-squares
            # fit and b_dec carry step 0, and the latents grow into what they leave.
            W_enc = torch.randn(d_in, d_sae, generator=gen) / math.sqrt(d_in)
            W_enc *= TRANSCODER_ENC_SCALE * W_dec.norm(dim=1).mean()
        self.W_enc = nn.Parameter(W_enc.contiguous())  # [d_in, d_sae]
        self.b_enc = nn.Parameter(torch.zeros(d_sae))  # [d_sae]
        self.W_dec = nn.Parameter(W_dec.contiguous())  # [d_sae, d_out]
        self.b_dec = nn.Parameter(torch.zeros(d_out))  # [d_out]
        self.W_skip = nn.Parameter(torch.zeros(d_out, d_in)) if cfg.skip else None
        self.register_buffer("act_scale", torch.ones(()))
        self.register_buffer("act_scale_out", torch.ones(()))

    # --- properties ------------------------------------------------------------------
    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    @property
    def d_out(self) -> int:
        return self.cfg.output_dim

    @property
    def apply_b_dec_to_input(self) -> bool:
        """SAEs subtract b_dec from the input (Gao's b_pre); a transcoder's b_dec lives in output
        space."""
        return not self.cfg.is_transcoder

    # --- the arch-specific part ------------------------------------------------------
    def activation(self, pre: Tensor) -> Tensor:
        """[batch, d_sae] pre-activations -> [batch, d_sae] sparse activations (inference)."""
        raise NotImplementedError

    def _train_terms(self, x_n: Tensor, target_n: Tensor, dead_mask: Tensor | None) -> _Terms:
        """Normalized input/target -> reconstruction and loss terms. Default: dense activation."""
        pre = self.pre_acts_normalized(x_n)
        acts = self.activation(pre)
        recon = self.decode_normalized(acts, x_n)
        zero = recon.new_zeros(())
        return _Terms(recon, acts.gt(0).sum(1).float().mean(), acts.gt(0).any(0), zero, zero)

    # --- normalized-space building blocks ---------------------------------------------
    def pre_acts_normalized(self, x_n: Tensor) -> Tensor:
        """[batch, d_in] normalized input -> [batch, d_sae] encoder pre-activations."""
        if self.apply_b_dec_to_input:
            x_n = x_n - self.b_dec
        return x_n @ self.W_enc + self.b_enc  # [batch, d_sae]

    def decode_normalized(self, acts: Tensor, x_n: Tensor | None = None) -> Tensor:
        """[batch, d_sae] activations (+ normalized input for the skip) -> [batch, d_out]
        normalized."""
        out = acts @ self.W_dec + self.b_dec  # [batch, d_out]
        if self.W_skip is not None:
            if x_n is None:
                raise ValueError("a skip transcoder needs its input to decode: use forward(x)")
            out = out + x_n @ self.W_skip.t()
        return out

    # --- public inference API (raw activations in and out) ----------------------------
    def encode(self, x: Tensor) -> Tensor:
        """[batch, d_in] raw activations -> [batch, d_sae] dense latent activations.

        Latent activations are in raw-output units (normalized activations / act_scale_out),
        the same numbers SAELens computes from the saved file, so a feature's activation
        does not depend on which tool opened the dictionary.
        """
        return self.activation(self.pre_acts_normalized(x * self.act_scale)) / self.act_scale_out

    def decode(self, acts: Tensor, x: Tensor | None = None) -> Tensor:
        """[batch, d_sae] activations (as from encode) -> [batch, d_out] raw reconstruction.

        Skip transcoders also need the input x.
        """
        x_n = None if x is None else x * self.act_scale
        return self.decode_normalized(acts * self.act_scale_out, x_n) / self.act_scale_out

    def forward(self, x: Tensor) -> Tensor:
        """[batch, d_in] raw -> [batch, d_out] raw reconstruction (of x, or of the transcoder
        target)."""
        x_n = x * self.act_scale
        return (
            self.decode_normalized(self.activation(self.pre_acts_normalized(x_n)), x_n)
            / self.act_scale_out
        )

    # --- training --------------------------------------------------------------------
    def loss(
        self, x: Tensor, target: Tensor | None = None, *, dead_mask: Tensor | None = None
    ) -> TrainOutput:
        """The training objective on raw `x` [batch, d_in] (and `target` [batch, d_out] for a
        transcoder).

        `dead_mask` bool [d_sae] marks latents that have not fired for a while (the trainer
        tracks it); topk/batchtopk then add the AuxK loss on them (Gao et al. 2024 App. A.2).
        """
        if target is None:
            if self.cfg.is_transcoder:
                raise ValueError("a transcoder's loss needs the target activation (target=...)")
            target = x
        x_n = x * self.act_scale
        t_n = target * self.act_scale_out
        terms = self._train_terms(x_n, t_n, dead_mask)
        # sums of squares as one fused kernel each (forward and backward), not sub + pow + sum
        t32 = t_n.float()
        sq = nn.functional.mse_loss(terms.recon.float(), t32, reduction="sum")
        mse = sq / x.shape[0]
        with torch.no_grad():
            var = nn.functional.mse_loss(t32, t32.mean(0).expand_as(t32), reduction="sum")
            fvu = sq.detach() / var.clamp_min(1e-12)
        loss = mse + terms.sparsity_loss + self.cfg.aux_coeff * terms.aux_loss
        return TrainOutput(
            loss,
            mse.detach(),
            fvu,
            terms.l0.detach(),
            terms.aux_loss.detach(),
            terms.fired,
            terms.sparsity_loss.detach(),
            terms.fire_counts,
        )

    @torch.no_grad()
    def init_from_data(self, x: Tensor, target: Tensor | None = None) -> None:
        """Set act_scale(s) and b_dec from a sample of raw activations x [n, d_in] (target [n,
        d_out]).

        act_scale makes the mean squared norm d_in (SAELens' expected-average normalization);
        b_dec is the geometric median (or mean) of the normalized targets (minus the skip's part:
        a skip transcoder's W_skip starts as the ridge fit of target on input, see skip_init).
        """
        x = x.float()
        t = x if target is None else target.float()
        if self.cfg.normalize_activations:
            self.act_scale.fill_(norm_scale(x, self.d_in))
            self.act_scale_out.fill_(
                self.act_scale if target is None else norm_scale(t, self.d_out)
            )
        t_n = t * self.act_scale_out
        if self.W_skip is not None and self.cfg.skip_init == "lstsq" and target is not None:
            # Starting from zero, Adam needs hundreds of steps before the skip even matches the
            # MLP's linear part (SmolLM2 layer 5: FVU 0.67 after 195 steps of 4,096 tokens, against
            # 0.62 for least squares); starting from the fit, step 0 is already there.
            self.W_skip.copy_(ridge_map(x * self.act_scale, t_n).to(self.W_skip.dtype))
            t_n = t_n - (x * self.act_scale) @ self.W_skip.t()  # b_dec centres what the latents add
        if self.cfg.b_dec_init == "geometric_median":
            self.b_dec.copy_(geometric_median(t_n))
        elif self.cfg.b_dec_init == "mean":
            self.b_dec.copy_(t_n.mean(0))
        else:
            self.b_dec.zero_()

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Rescale decoder rows to unit norm (no-op for relu, whose norms are part of the model)."""
        if self.cfg.unit_norm_decoder and not native.normalize_rows_(self.W_dec.data):
            self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)

    @torch.no_grad()
    def remove_parallel_grad_(self) -> None:
        """Project out the W_dec gradient component parallel to each (unit) row (Gao et al. 2024
        App. A.4).

        Call between backward() and the optimizer step; the step then moves rows (almost)
        tangentially to the unit sphere, and normalize_decoder_() after it fixes the rest.
        """
        g = self.W_dec.grad
        if g is None or not self.cfg.unit_norm_decoder or native.remove_parallel_(self.W_dec, g):
            return
        w = self.W_dec / self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)  # [d_sae, d_out]
        g.addcmul_(w, torch.linalg.vecdot(g, w)[:, None], value=-1.0)

    # --- persistence (SAELens format, see io/saelens.py) --------------------------------
    def save(
        self,
        path: str | Path,
        *,
        sparsity: Tensor | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Path:
        """Write a SAELens folder (cfg.json + sae_weights.safetensors [+ sparsity.safetensors]).

        act_scale is folded into the weights, so SAELens and lmscope read the same raw-space
        SAE. `sparsity` is the per-latent firing frequency [d_sae] (stored as log10, SAELens
        convention); `metadata` adds/overrides SAELens metadata keys (context_size, prepend_bos,
        ...).
        """
        from .io.saelens import save_saelens

        return save_saelens(self, path, sparsity=sparsity, metadata=metadata)

    # --- helpers for save: raw-space ("folded") weights -------------------------------
    @torch.no_grad()
    def folded_state(self) -> dict[str, Tensor]:
        """Weights equivalent on RAW activations with act_scale == 1 (what SAELens files hold).

        With s = act_scale, s_o = act_scale_out:  pre = (x s - b_dec) W_enc + b_enc
        = (x - b_dec/s) (s W_enc) + b_enc, and recon = (acts W_dec + b_dec + x s W_skip^T) / s_o.
        For SAEs (s == s_o) the input-side b_dec/s equals the output-side b_dec/s_o.
        """
        s, so = self.act_scale.float(), self.act_scale_out.float()
        st = {
            "W_enc": self.W_enc.float() * s,
            "b_enc": self.b_enc.float().clone(),
            "W_dec": self.W_dec.float() / so,
            "b_dec": self.b_dec.float() / so,
        }
        if self.W_skip is not None:
            st["W_skip"] = self.W_skip.float() * (s / so)
        return st

    def extra_repr(self) -> str:
        c = self.cfg
        tc = f", d_out={c.output_dim}, skip={c.skip}" if c.is_transcoder else ""
        kk = f", k={c.k}" if c.arch in ("topk", "batchtopk") else ""
        return f"arch={c.arch}, d_in={c.d_in}, d_sae={c.d_sae}{kk}{tc}, hook={c.hook_name!r}"


class _Terms(NamedTuple):
    """What an architecture's training forward hands back to `loss`."""

    recon: Tensor  # [batch, d_out] normalized reconstruction
    l0: Tensor  # scalar, mean active latents per token
    fired: Tensor  # bool [d_sae]
    sparsity_loss: Tensor  # scalar, weighted
    aux_loss: Tensor  # scalar, unweighted AuxK
    fire_counts: Tensor | None = None  # [d_sae] firing tokens per latent, where at hand


__all__ = [
    "ARCHS",
    "DictionaryConfig",
    "SparseDictionary",
    "TopKOutput",
    "TrainOutput",
    "geometric_median",
]


def check_fits(d: SparseDictionary, lm: LanguageModel, name: str) -> None:
    """UserError unless dictionary `name` reads (and, for a transcoder, writes) hook points of `lm`
    with its widths: a dictionary downloaded for another model fails here with one line instead
    of a shape error mid-forward."""
    from ..errors import UserError

    for hook, width in (
        (d.cfg.hook_name or name, d.cfg.d_in),
        (d.cfg.out_hook_name if d.cfg.is_transcoder else None, d.cfg.output_dim),
    ):
        if not hook:
            continue
        try:
            point = lm.hooks[hook]
        except (KeyError, UserError):
            if hook == d.cfg.out_hook_name:  # foreign transcoders name their target loosely
                continue
            raise UserError(
                f"dictionary {name} reads hook {hook!r}, which model {lm.name} does not "
                "have; is this an atlas of another model?"
            ) from None
        if point.d != width:
            raise UserError(
                f"dictionary {name} expects width {width} at {hook} but model {lm.name} "
                f"has {point.d}; the dictionary belongs to another model"
            )
