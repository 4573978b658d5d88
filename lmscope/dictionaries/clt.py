"""Cross-layer transcoders (CLTs; Ameisen et al. 2025, "Circuit Tracing", Anthropic).

A per-layer transcoder reads one MLP's input and writes that MLP's output. A CLT has one
encoder per layer l, reading `blocks.l.mlp_in`, and its latents write to the MLP output of
layer l AND of every later layer: the reconstruction of layer t's MLP output is

    out[t] = sum_{l <= t} acts[l] @ W_dec[l][:, t - l] + b_dec[t]

so a feature found at layer 3 whose effect the model spreads over layers 3..9 is one node
in an attribution graph instead of a chain of per-layer features joined by error nodes.

Parameters (shapes; L = n_layers, n = d_sae latents per layer, d = d_model):
    W_enc [L, d, n], b_enc [L, n], threshold [L, n] (jumprelu only),
    W_dec  ParameterList, W_dec[l] [n, L - l, d]: source layer l -> targets l..L-1,
    b_dec [L, d].
The decoders hold L(L+1)/2 * n * d numbers, L/2+1/2 times the encoders: they dominate memory
and the optimizer (docs/scaling.md, "Cross-layer transcoders").

Units. Inputs of layer l are scaled by act_scale_in[l] and targets of layer t by
act_scale_out[t] so that each layer's MEDIAN token has squared norm d: SmolLM2's MLP outputs
differ by orders of magnitude between layers, and without a per-layer scale the loss, summed
over layers, would be the loss of the few largest layers. The median, not base.py's mean,
because a few layers' outputs are extremely heavy-tailed: on 8,192 training tokens of SmolLM2
(text tokens; BOS and separators are already excluded) one token of layer 11's MLP output has
240,000x the median squared norm and holds 64% of the layer's sum, and a 512-token batch's mean
ranges from 0.024x to 10.2x the 8,192-token mean (bench/clt_scale_norms.py). A scale set from
the mean of the first batch (the old rule) was a lottery ticket: 0.029x there, so a later batch
holding a massive token had a layer-11 loss ~350x the first batch's. Each 512-token batch's
median is within 0.90-1.14x of the 8,192-token median at all 60 hooks (layer 11: 0.96-1.03x).
Consequence, stated: a heavy-tailed layer's normalized targets have a mean squared norm above d
(layer 11: ~46 d, layer 2: ~19 d), so its rare massive tokens weigh more in the summed loss
than they would under an exact (but unattainable from a sample) mean.
The public encode/decode/forward take and return RAW activations; on save the scales
are folded into the weights (W_enc[l] * s_in[l], W_dec[l][:, j] / s_out[l + j],
b_dec[t] / s_out[t]), so a loaded CLT has scales 1 and its parameters are raw-unit. The latent
activations are the same numbers before and after folding (the pre-activation does not change),
so a JumpReLU threshold needs no folding. (This differs from base.py, which divides a latent by
its single output scale; a CLT latent writes to several outputs with different scales.)

Decoder norm. TopK and JumpReLU keep each latent's whole decoder (all its target layers,
concatenated: a vector of (L - l) * d numbers) at unit norm in the normalized space, and remove
the gradient component along it (Gao et al. 2024 App. A.4, applied to the concatenation). Without
a norm constraint TopK's ranking of latents would depend on the encoder/decoder scale split.

Sparsity. topk: k active latents per layer per token (encode picks the top k of each layer's
n latents). jumprelu: a per-latent threshold trained with the straight-through estimator of
jumprelu.py (rectangle kernel of width jumprelu_bandwidth) and an L0 penalty (not Anthropic's
tanh penalty): l0_coeff * (active latents per token, summed over layers).

Training (loss) runs on the sparse code for topk (clt_kernels.py: only the k active rows of each
decoder get a gradient) and densely for jumprelu.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
import torch.nn as nn
from torch import Tensor

from .clt_kernels import (
    clt_decode,
    stacked_jumprelu,
    stacked_sparse_encode,
    stacked_step,
    stacked_topk,
)
from .init import geometric_median
from .kernels import sparse_decode

CLT_ARCHS = ("topk", "jumprelu")
CLT_FORMAT = "lmscope-clt"
CLT_SCHEMA_VERSION = 1
CLT_CFG_FILENAME = "clt_cfg.json"
CLT_WEIGHTS_FILENAME = "clt.safetensors"
TRANSCODER_ENC_SCALE = 0.1
"""The random encoder starts at this fraction of the unit scale, as base.py's transcoders: the
latents start near zero and b_dec carries the first steps."""


@dataclass(frozen=True)
class CLTConfig:
    """What a cross-layer transcoder is: its shape, architecture and loss coefficients."""

    n_layers: int
    """Number of layers L; the CLT reads blocks.0..L-1 (hook_in) and writes blocks.0..L-1
    (hook_out)."""
    d_model: int
    """Width d of every layer's MLP input and output."""
    d_sae: int
    """Latents per layer n (the CLT has n_layers * d_sae features)."""
    arch: Literal["topk", "jumprelu"] = "topk"
    """topk (k active latents per layer per token) or jumprelu (trained thresholds + L0)."""
    k: int = 32
    """topk: active latents per layer per token."""
    hook_in: str = "blocks.{layer}.mlp_in"
    """Hook point read by layer `layer`'s encoder ({layer} is replaced by the layer index)."""
    hook_out: str = "blocks.{layer}.mlp_out"
    """Hook point reconstructed for target layer `layer`."""
    model_name: str = ""
    """The model the CLT was trained on (our name or alias, e.g. smollm2-135m)."""
    l0_coeff: float = 0.5
    """jumprelu: weight of the straight-through L0 penalty (squared error per active latent,
    summed over layers)."""
    jumprelu_bandwidth: float = 0.05
    """jumprelu: width epsilon of the rectangle kernel in the threshold's pseudo-derivative."""
    init_threshold: float = 0.1
    """jumprelu: initial threshold of every latent (normalized units)."""
    aux_k: int | None = None
    """topk: dead latents per layer used by the AuxK loss (None: d_model // 2)."""
    aux_coeff: float = 1 / 32
    """topk: weight of the AuxK loss (Gao et al. 2024)."""
    b_dec_init: Literal["geometric_median", "mean", "zeros"] = "geometric_median"
    """How init_from_data sets each layer's decoder bias from its normalized targets."""
    normalize_activations: bool = True
    """Scale each layer's inputs and targets to mean squared norm d_model (folded in on save)."""
    dtype: str = "float32"
    """Parameter dtype for training (float32; the saved file is float32 too)."""
    seed: int = 0
    """Seed for the initial weights (same seed, same CLT on CPU)."""

    def __post_init__(self) -> None:
        if self.arch not in CLT_ARCHS:
            raise ValueError(
                f"unknown CLT arch {self.arch!r}; choose one of {', '.join(CLT_ARCHS)}"
            )
        for name in ("n_layers", "d_model", "d_sae"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.arch == "topk" and not 1 <= self.k <= self.d_sae:
            raise ValueError(f"k must be in [1, d_sae={self.d_sae}] for topk, got {self.k}")
        if self.aux_k is not None and not 1 <= self.aux_k <= self.d_sae:
            raise ValueError(f"aux_k must be in [1, d_sae={self.d_sae}], got {self.aux_k}")
        for name in ("l0_coeff", "aux_coeff"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.jumprelu_bandwidth <= 0 or self.init_threshold <= 0:
            raise ValueError("jumprelu_bandwidth and init_threshold must be > 0")
        for name in ("hook_in", "hook_out"):
            if "{layer}" not in getattr(self, name):
                raise ValueError(f"{name} must contain '{{layer}}', got {getattr(self, name)!r}")
        if self.dtype not in ("float32", "bfloat16", "float16", "float64"):
            raise ValueError(f"dtype must be float32, bfloat16, float16 or float64: {self.dtype}")

    @property
    def hooks_in(self) -> list[str]:
        """Encoder input hook of each layer, in layer order."""
        return [self.hook_in.format(layer=i) for i in range(self.n_layers)]

    @property
    def hooks_out(self) -> list[str]:
        """Reconstructed hook of each layer, in layer order."""
        return [self.hook_out.format(layer=i) for i in range(self.n_layers)]

    @property
    def resolved_aux_k(self) -> int:
        return min(self.d_sae, self.aux_k if self.aux_k is not None else max(1, self.d_model // 2))

    @property
    def n_features(self) -> int:
        return self.n_layers * self.d_sae

    @property
    def n_decoder_params(self) -> int:
        """L(L+1)/2 * n * d: every source layer writes to itself and every later layer."""
        L = self.n_layers
        return L * (L + 1) // 2 * self.d_sae * self.d_model

    @property
    def n_params(self) -> int:
        L, n, d = self.n_layers, self.d_sae, self.d_model
        thr = L * n if self.arch == "jumprelu" else 0
        return L * d * n + L * n + thr + self.n_decoder_params + L * d

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CLTConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def replace(self, **changes: Any) -> CLTConfig:
        return replace(self, **changes)


class CLTTrainOutput(NamedTuple):
    """One training forward pass, all in the normalized space."""

    loss: Tensor
    """Scalar to backpropagate: mse + sparsity_loss + aux_coeff * aux_loss."""
    mse: Tensor
    """Squared error summed over d_model and over layers, mean over tokens (detached)."""
    fvu: Tensor
    """[L] fraction of variance unexplained of each target layer (detached)."""
    l0: Tensor
    """[L] mean active latents per token of each source layer (detached)."""
    aux_loss: Tensor
    """AuxK loss (topk with a dead mask), else 0 (detached)."""
    fired: Tensor
    """bool [L, n]: latents active on at least one token of this batch."""
    sparsity_loss: Tensor
    """The weighted L0 term (jumprelu) included in `loss`, else 0 (detached)."""


class Comm:
    """Where a CLT's latents live. This one: all in this process (clt_sharded.Shards splits them
    over ranks and overrides every method; the loss below is written once for both)."""

    lo: int = 0
    """Global index of this process's first latent (of every layer)."""

    def topk(self, pre: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """[L, B, n_local] pre-activations -> the k largest of each layer over ALL latents:
        (values ReLU'd, global indices), both [L, B, k]."""
        return stacked_topk(pre, k)

    def own(self, values: Tensor, indices: Tensor) -> tuple[Tensor, Tensor]:
        """The selected latents this process holds: values (0 elsewhere), local indices."""
        return values, indices

    def reduce(self, t: Tensor) -> Tensor:
        """Sum of every process's partial reconstruction (autograd: identity backward)."""
        return t

    def sum_(self, t: Tensor) -> Tensor:
        """In-place sum over processes of a count (no autograd)."""
        return t


WHOLE = Comm()


def clt_loss(
    m: Any, x_in: Tensor, target: Tensor, dead_mask: Tensor | None, comm: Comm
) -> CLTTrainOutput:
    """CrossLayerTranscoder.loss for a whole CLT (comm=WHOLE) or one rank's slice of its latents
    (`m` then is a clt_sharded.ShardedCLT: same attributes, n_local latents per layer)."""
    cfg = m.cfg
    x_n = x_in * m.act_scale_in.to(x_in.dtype)[:, None, None]
    t_n = (target * m.act_scale_out.to(target.dtype)[:, None, None]).float()
    L, B = x_in.shape[0], x_in.shape[1]
    n_local = m.W_enc.shape[2]
    zero = t_n.new_zeros(())
    if cfg.arch == "topk":
        x_w = x_n.to(m.W_enc.dtype)
        with torch.no_grad():
            pre = torch.baddbmm(m.b_enc[:, None, :], x_w, m.W_enc)  # [L, B, n_local]
            v, gi = comm.topk(pre, cfg.k)  # [L, B, k], the same on every rank
            lv, li = comm.own(v, gi)
        vals = stacked_sparse_encode(x_w, m.W_enc, m.b_enc, lv, li)
        recon = comm.reduce(clt_decode(vals, li, m.W_dec)) + m.b_dec[:, None, :]
        recon = recon.float()
        l0 = (v > 0).sum(-1).float().mean(1)  # [L]
        hits = torch.zeros(L, n_local, device=v.device)
        hits.scatter_add_(1, li.flatten(1), (lv > 0).flatten(1).float())
        fired = hits > 0
        aux = _auxk(m, pre, x_w, (t_n - recon).detach(), dead_mask, comm)
        sparsity = sparsity_value = zero
    else:
        pre = torch.baddbmm(m.b_enc[:, None, :], x_n.to(m.W_enc.dtype), m.W_enc)
        eps = cfg.jumprelu_bandwidth
        acts = stacked_jumprelu(pre, m.threshold, eps)
        recon = comm.reduce(clt_decode(acts, None, m.W_dec)) + m.b_dec[:, None, :]
        recon = recon.float()
        l0_tok = stacked_step(pre, m.threshold, eps).float().sum(-1)  # [L, B], this rank's latents
        sparsity = cfg.l0_coeff * l0_tok.sum(0).mean()  # its gradient reaches local thresholds
        sparsity_value = comm.sum_(sparsity.detach().clone())
        active = acts.detach() > 0
        l0 = comm.sum_(active.sum(-1).float().mean(1))
        fired = active.any(1)
        aux = zero
    sq = (recon - t_n).pow(2).sum((1, 2))  # [L]
    mse = sq.sum() / B
    with torch.no_grad():
        var = (t_n - t_n.mean(1, keepdim=True)).pow(2).sum((1, 2)).clamp_min(1e-12)
        fvu = sq.detach() / var
    # The value is the global loss; the gradient of the sparsity term is this rank's part.
    loss = mse + sparsity + (sparsity_value - sparsity.detach()) + cfg.aux_coeff * aux
    return CLTTrainOutput(loss, mse.detach(), fvu, l0.detach(), aux.detach(), fired, sparsity_value)


def _auxk(
    m: Any, pre: Tensor, x_w: Tensor, residual: Tensor, dead_mask: Tensor | None, comm: Comm
) -> Tensor:
    """AuxK per source layer l (Gao et al. 2024 App. A.2, per layer): its top aux_k dead latents
    reconstruct the main residual of every target it writes (layers l..L-1, concatenated),
    without bias; the squared errors are summed over source layers."""
    zero = residual.new_zeros(())
    if dead_mask is None:
        return zero
    n_dead = comm.sum_(dead_mask.sum(1).long())  # [L], over all ranks
    if not bool(n_dead.any()):
        return zero
    total = zero
    L, B = pre.shape[0], pre.shape[1]
    for src in range(L):
        if int(n_dead[src]) == 0:
            continue
        k_aux = min(m.cfg.resolved_aux_k, int(n_dead[src]))
        with torch.no_grad():
            masked = pre[src : src + 1].masked_fill(
                ~dead_mask[src : src + 1, None, :].to(pre.device), float("-inf")
            )
            v, gi = comm.topk(masked, k_aux)  # [1, B, k_aux]
            lv, li = comm.own(v, gi)
        vals = stacked_sparse_encode(
            x_w[src : src + 1], m.W_enc[src : src + 1], m.b_enc[src : src + 1], lv, li
        )[0]
        w = m.W_dec[src]
        e_hat = comm.reduce(sparse_decode(vals, li[0], w.reshape(w.shape[0], -1))).float()
        res = residual[src:].transpose(0, 1).reshape(B, -1)  # [B, (L - src) * d]
        total = total + (e_hat - res).pow(2).sum(-1).mean()
    return total


class CrossLayerTranscoder(nn.Module):
    """A cross-layer transcoder: encoders per layer, decoders from each layer to every later one.

    encode(x_in [L, B, d]) -> acts [L, B, n]; decode(acts) -> [L, B, d]; forward = decode(encode).
    All three take and return raw activations (see the module docstring for units).
    """

    def __init__(self, cfg: CLTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        L, d, n = cfg.n_layers, cfg.d_model, cfg.d_sae
        gen = torch.Generator().manual_seed(cfg.seed)
        decs = []
        for i in range(L):
            w = torch.randn(n, L - i, d, generator=gen)
            w /= w.flatten(1).norm(dim=1)[:, None, None]  # each latent's whole decoder: unit norm
            decs.append(nn.Parameter(w))
        # Random encoder at a small scale (base.py's transcoders): latents start near zero.
        W_enc = torch.randn(L, d, n, generator=gen) * (TRANSCODER_ENC_SCALE / math.sqrt(d))
        dt = cfg.torch_dtype
        self.W_enc = nn.Parameter(W_enc.to(dt))  # [L, d, n]
        self.b_enc = nn.Parameter(torch.zeros(L, n, dtype=dt))  # [L, n]
        self.W_dec = nn.ParameterList([p.to(dt) for p in decs])  # W_dec[l] [n, L - l, d]
        self.b_dec = nn.Parameter(torch.zeros(L, d, dtype=dt))  # [L, d]
        if cfg.arch == "jumprelu":
            self.threshold = nn.Parameter(torch.full((L, n), cfg.init_threshold, dtype=dt))
        else:
            self.threshold = None
        self.register_buffer("act_scale_in", torch.ones(L))
        self.register_buffer("act_scale_out", torch.ones(L))

    # --- shape ---------------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return self.cfg.n_layers

    @property
    def d_model(self) -> int:
        return self.cfg.d_model

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    def decoder_to(self, source: int, target: int) -> Tensor:
        """[n, d] raw-unit decoder of source layer `source`'s latents into target layer `target`
        (target >= source), so that raw out[target] includes acts[source] @ decoder_to(...)."""
        if not 0 <= source <= target < self.n_layers:
            raise ValueError(
                f"decoder_to({source}, {target}): need 0 <= source <= target < {self.n_layers}"
            )
        return self.W_dec[source][:, target - source] / self.act_scale_out[target]

    def _check_in(self, x: Tensor, what: str) -> None:
        L, d = self.n_layers, self.d_model
        if x.dim() != 3 or x.shape[0] != L or x.shape[2] != d:
            raise ValueError(
                f"{what} must be [n_layers={L}, batch, d_model={d}], got {tuple(x.shape)}"
            )

    # --- normalized-space building blocks -------------------------------------------------
    def pre_acts_normalized(self, x_n: Tensor) -> Tensor:
        """[L, B, d] normalized inputs -> [L, B, n] pre-activations."""
        return torch.baddbmm(self.b_enc[:, None, :], x_n.to(self.W_enc.dtype), self.W_enc)

    def activation(self, pre: Tensor) -> Tensor:
        """[L, B, n] pre-activations -> sparse activations (inference)."""
        if self.cfg.arch == "topk":
            v, i = stacked_topk(pre, self.cfg.k)
            return torch.zeros_like(pre).scatter_(-1, i, v)
        return pre * (pre > self.threshold[:, None])

    def decode_normalized(self, acts: Tensor) -> Tensor:
        """[L, B, n] activations -> [L, B, d] normalized reconstruction (dense)."""
        out = clt_decode(acts, None, self.W_dec)
        return out + self.b_dec[:, None, :]

    def decode_sparse_normalized(self, values: Tensor, indices: Tensor) -> Tensor:
        """Sparse code values/indices [L, B, k] -> [L, B, d] normalized reconstruction; only the
        active decoder rows are read, and only they get a gradient."""
        out = clt_decode(values, indices, self.W_dec)
        return out + self.b_dec[:, None, :]

    # --- public inference API (raw activations) -------------------------------------------
    def encode(self, x_in: Tensor) -> Tensor:
        """[L, B, d] raw MLP inputs -> [L, B, n] latent activations."""
        self._check_in(x_in, "x_in")
        s = self.act_scale_in.to(x_in.dtype)[:, None, None]
        return self.activation(self.pre_acts_normalized(x_in * s))

    def decode(self, acts: Tensor) -> Tensor:
        """[L, B, n] latent activations -> [L, B, d] raw MLP-output reconstruction."""
        out = self.decode_normalized(acts)
        return out / self.act_scale_out.to(out.dtype)[:, None, None]

    def forward(self, x_in: Tensor) -> Tensor:
        return self.decode(self.encode(x_in))

    # --- training ---------------------------------------------------------------------------
    def loss(
        self, x_in: Tensor, target: Tensor, *, dead_mask: Tensor | None = None
    ) -> CLTTrainOutput:
        """The training objective on raw inputs x_in and targets [L, B, d].

        Loss = sum over target layers t of mean-over-tokens ||out_n[t] - target_n[t]||^2 in each
        layer's normalized space, + the sparsity term (jumprelu) or aux_coeff * AuxK (topk, when
        dead_mask bool [L, n] marks latents that have not fired for a while).
        """
        self._check_in(x_in, "x_in")
        self._check_in(target, "target")
        return clt_loss(self, x_in, target, dead_mask, WHOLE)

    @torch.no_grad()
    def init_from_data(self, x_in: Tensor, target: Tensor) -> None:
        """Per-layer act scales (median token's squared norm = d_model, median_scale) and
        b_dec[t] = geometric median (or mean) of layer t's normalized targets, from a sample
        [L, N, d] of raw activations."""
        self._check_in(x_in, "x_in")
        self._check_in(target, "target")
        x, t = x_in.float(), target.float()
        for i in range(self.n_layers):
            if self.cfg.normalize_activations:
                self.act_scale_in[i] = median_scale(x[i], self.d_model)
                self.act_scale_out[i] = median_scale(t[i], self.d_model)
            t_n = t[i] * self.act_scale_out[i]
            if self.cfg.b_dec_init == "geometric_median":
                self.b_dec[i] = geometric_median(t_n).to(self.b_dec.dtype)
            elif self.cfg.b_dec_init == "mean":
                self.b_dec[i] = t_n.mean(0).to(self.b_dec.dtype)
            else:
                self.b_dec[i] = 0

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Each latent's concatenated decoder (all its target layers) back to unit norm."""
        for w in self.W_dec:
            w /= w.flatten(1).norm(dim=1).clamp_min(1e-8)[:, None, None]

    @torch.no_grad()
    def remove_parallel_grad_(self) -> None:
        """Drop each latent's decoder-gradient component along its (unit) decoder (Gao et al.
        2024 App. A.4 on the concatenation); call between backward() and the optimizer step."""
        for w in self.W_dec:
            if w.grad is None:
                continue
            wf, gf = w.flatten(1), w.grad.flatten(1)  # views [n, (L-l)*d]
            u = wf / wf.norm(dim=1, keepdim=True).clamp_min(1e-8)
            gf.addcmul_(u, torch.linalg.vecdot(gf, u)[:, None], value=-1.0)

    @torch.no_grad()
    def constrain_(self) -> None:
        """After an optimizer step: unit decoders, positive thresholds."""
        self.normalize_decoder_()
        if self.threshold is not None:
            self.threshold.clamp_(min=1e-6)

    # --- persistence ------------------------------------------------------------------------
    @torch.no_grad()
    def folded_state(self) -> dict[str, Tensor]:
        """float32 raw-unit weights (act scales folded in; see the module docstring)."""
        s_in, s_out = self.act_scale_in.float(), self.act_scale_out.float()
        st = {
            "W_enc": self.W_enc.float() * s_in[:, None, None],
            "b_enc": self.b_enc.float().clone(),
            "b_dec": self.b_dec.float() / s_out[:, None],
        }
        for i, w in enumerate(self.W_dec):
            st[f"W_dec.{i}"] = w.float() / s_out[i:, None]
        if self.threshold is not None:
            st["threshold"] = self.threshold.float().clone()
        return st

    def save(self, path: str | Path, *, metadata: dict[str, Any] | None = None) -> Path:
        """Write lmscope's CLT folder: clt_cfg.json + clt.safetensors (raw units; files replaced
        atomically, the config last)."""
        from safetensors.torch import save_file

        from .io.saelens import _atomic

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.contiguous() for k, v in self.folded_state().items()}
        cfg = {
            "format": CLT_FORMAT,
            "schema_version": CLT_SCHEMA_VERSION,
            **self.cfg.to_dict(),
            "dtype": "float32",
            "metadata": metadata or {},
        }
        _atomic(path / CLT_WEIGHTS_FILENAME, lambda p: save_file(tensors, p))
        _atomic(path / CLT_CFG_FILENAME, lambda p: Path(p).write_text(json.dumps(cfg, indent=2)))
        return path

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> CrossLayerTranscoder:
        """Read a folder written by save (UserError for a missing or damaged one)."""
        from safetensors.torch import load_file

        from ..errors import UserError

        path = Path(path)
        cfg_p, w_p = path / CLT_CFG_FILENAME, path / CLT_WEIGHTS_FILENAME
        if not cfg_p.is_file() or not w_p.is_file():
            raise UserError(
                f"{path} is not an lmscope CLT folder: expected {CLT_CFG_FILENAME} + "
                f"{CLT_WEIGHTS_FILENAME} (written by `lmscope train --arch clt`)"
            )
        try:
            raw = json.loads(cfg_p.read_text())
            if raw.get("format") != CLT_FORMAT:
                raise ValueError(f"format is {raw.get('format')!r}, not {CLT_FORMAT!r}")
            if raw.get("schema_version") != CLT_SCHEMA_VERSION:
                raise ValueError(f"schema_version {raw.get('schema_version')} is not supported")
            cfg = CLTConfig.from_dict(raw)
            st = load_file(str(w_p))
        except (OSError, ValueError, TypeError) as e:
            raise UserError(f"CLT folder {path} is damaged: {e}") from None
        clt = cls(cfg)
        want = {k: v.shape for k, v in clt.folded_state().items()}
        got = {k: v.shape for k, v in st.items()}
        if want != got:
            raise UserError(
                f"CLT folder {path}: weights do not match {CLT_CFG_FILENAME} "
                f"(tensors {sorted(got)} vs expected {sorted(want)} or shapes differ)"
            )
        clt.copy_state_(st)
        return clt.to(device).eval()

    @torch.no_grad()
    def copy_state_(self, st: dict[str, Tensor]) -> None:
        """Copy a checked raw-unit state dict (W_enc, b_enc, b_dec, W_dec.{l}, threshold) in."""
        self.W_enc.copy_(st["W_enc"])
        self.b_enc.copy_(st["b_enc"])
        self.b_dec.copy_(st["b_dec"])
        for i, w in enumerate(self.W_dec):
            w.copy_(st[f"W_dec.{i}"])
        if self.threshold is not None:
            self.threshold.copy_(st["threshold"])

    def extra_repr(self) -> str:
        c = self.cfg
        kk = f", k={c.k}" if c.arch == "topk" else ""
        return (
            f"arch={c.arch}, n_layers={c.n_layers}, d_model={c.d_model}, d_sae={c.d_sae}{kk}, "
            f"hooks={c.hook_in!r}->{c.hook_out!r}"
        )


def median_scale(x: Tensor, d: int) -> float:
    """Scalar s with median_n ||s x_n||^2 == d for x [N, d] (the lower median for even N, as
    torch.median): robust to the few massive tokens that make the mean a lottery (module
    docstring, "Units")."""
    med = x.float().pow(2).sum(-1).median().item()
    if not math.isfinite(med) or med <= 0:
        raise ValueError(
            "cannot normalize activations: the median token's squared norm is 0 or not finite"
        )
    return math.sqrt(d / med)


def is_clt_folder(path: str | Path) -> bool:
    """Whether `path` is a folder written by CrossLayerTranscoder.save."""
    p = Path(path)
    return (p / CLT_CFG_FILENAME).is_file() and (p / CLT_WEIGHTS_FILENAME).is_file()


__all__ = [
    "CLT_ARCHS",
    "CLTConfig",
    "CLTTrainOutput",
    "CrossLayerTranscoder",
    "is_clt_folder",
    "median_scale",
    "stacked_topk",
]
