"""Freeze a model's attention patterns and normalization scales at their values on one prompt.

Attribution graphs (Ameisen et al. 2025, "Circuit Tracing"; circuit-tracer) study a
model made *linear* around one prompt: with the attention patterns and every norm's
1/sigma held at the values they took on the prompt, the map from what the MLPs write
(and the token embeddings) to everything downstream is linear, so an edge weight is
a gradient, and that gradient is also the exact effect of an intervention in this
frozen model. This module does the freezing and nothing else:

    with frozen(lm) as fz:
        fz.record(tokens)            # one clean pass: caches patterns and norm scales
        fz.frozen = True
        lm.model(tokens_batch)       # now every norm uses the cached 1/sigma, every
                                     # attention layer the cached pattern (softmax(QK^T))

Attention goes through a registered transformers attention function (`lmscope_frozen`):
in record mode it runs the family's own eager attention and keeps its probabilities; in
frozen mode it applies the cached probabilities to the (live) values, so only the OV path
carries signal and gradient. Norms get plain forward hooks that recompute the output
from the live input and the cached scale. Both are removed on exit (try/finally), and
they are a linearization of modules, not hook *points*: captures and edits still go
through `lmscope.models.runtime`.

Foot-gun: the cached values broadcast over the batch, so a frozen forward may run on B
copies of the recorded prompt (batched backward passes), never on another prompt.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..errors import UserError

if TYPE_CHECKING:
    from ..models import LanguageModel

ATTN_NAME = "lmscope_frozen"


class _NormLinearization:
    """One norm module as y = g(center(x) * inv_sigma) with inv_sigma cacheable.

    RMSNorm variants (Llama's w * x/sigma, Gemma's (1 + w) * x/sigma) are found by
    calibration: y(ones) * sqrt(1 + eps) is the effective elementwise weight. LayerNorm
    (GPT-2, GPT-NeoX) also subtracts the mean (a linear map, so it stays live).
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.layer_norm = isinstance(module, nn.LayerNorm)
        eps = getattr(module, "variance_epsilon", None)
        if eps is None:
            eps = getattr(module, "eps", None)
        if eps is None:
            raise UserError(
                f"cannot freeze norm {type(module).__name__}: no eps attribute; "
                "this model family is not supported by graph/trace yet"
            )
        self.eps = float(eps)
        w = getattr(module, "weight", None)
        d = w.shape[0] if w is not None else None
        if self.layer_norm:
            self.w_eff = None
        else:
            with torch.no_grad():
                ones = torch.ones(1, 1, d, device=w.device, dtype=w.dtype)
                self.w_eff = (module(ones).float() * math.sqrt(1.0 + self.eps)).reshape(d)  # [d]
                x = torch.randn(1, 3, d, generator=torch.Generator().manual_seed(0)).to(
                    w.device, w.dtype
                )
                err = (
                    (self.apply(x, self.inv_sigma(x)).float() - module(x).float())
                    .abs()
                    .max()
                    .item()
                )
            if err > 1e-3 * (1 + self.w_eff.abs().max().item()):
                raise UserError(
                    f"norm {type(module).__name__} is neither RMSNorm-like nor LayerNorm "
                    f"(calibration error {err:.3g}); graph/trace do not support it yet"
                )
        self.cached: torch.Tensor | None = None  # [1, pos, 1] inv_sigma on the recorded prompt

    def center(self, x: torch.Tensor) -> torch.Tensor:
        return x - x.mean(-1, keepdim=True) if self.layer_norm else x

    def inv_sigma(self, x: torch.Tensor) -> torch.Tensor:
        """[..., d] -> [..., 1] 1/sqrt(mean(center(x)^2) + eps), in float32."""
        xc = self.center(x.float())
        return torch.rsqrt(xc.pow(2).mean(-1, keepdim=True) + self.eps)

    def apply(self, x: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
        """The norm with a given inv_sigma: linear in x (affine for LayerNorm's bias)."""
        z = self.center(x.float()) * inv
        if self.layer_norm:
            m = self.module
            z = z * m.weight.float() if m.weight is not None else z
            z = z + m.bias.float() if m.bias is not None else z
            return z.to(x.dtype)
        return (z * self.w_eff).to(x.dtype)

    def linear(self, v: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
        """The frozen norm's linear part applied to a direction v (no bias): J v."""
        z = self.center(v.float()) * inv
        if self.layer_norm:
            return z * self.module.weight.float() if self.module.weight is not None else z
        return z * self.w_eff


class FrozenModel:
    """State behind `frozen(lm)`: cached patterns/scales and the record/frozen switch."""

    def __init__(self, lm: LanguageModel) -> None:
        self.lm = lm
        self.frozen = False
        self.patterns: dict[int, torch.Tensor] = {}  # id(attn module) -> [1, heads, q, k]
        self.norms: dict[int, _NormLinearization] = {}
        for parts in lm.hooks.parts:
            for child in parts.block.children():
                if "norm" in type(child).__name__.lower():
                    self.norms[id(child)] = _NormLinearization(child)
        if lm.hooks.final_norm is not None:
            self.norms[id(lm.hooks.final_norm)] = _NormLinearization(lm.hooks.final_norm)

    @property
    def final_norm(self) -> _NormLinearization | None:
        fn = self.lm.hooks.final_norm
        return None if fn is None else self.norms[id(fn)]

    @torch.no_grad()
    def record(self, tokens: torch.Tensor):
        """One clean pass on tokens [1, pos]: cache the patterns and 1/sigma; returns the HF
        output."""
        if tokens.shape[0] != 1:
            raise ValueError("record one prompt at a time (tokens [1, pos])")
        self.frozen = False
        self.patterns.clear()
        for n in self.norms.values():
            n.cached = None
        return self.lm.model(tokens, use_cache=False)

    # --- the pieces installed while the context is open ---------------------------------
    def _norm_hook(self, mod, args, out):
        lin = self.norms[id(mod)]
        x = args[0]
        if not self.frozen:
            lin.cached = lin.inv_sigma(x).detach()
            return None
        if lin.cached is None:
            raise RuntimeError("frozen forward before record(): no cached norm scale")
        return lin.apply(x, lin.cached)

    def _attention(
        self, module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kw
    ):
        if not self.frozen:
            eager = sys.modules[type(module).__module__].eager_attention_forward
            out, w = eager(
                module, query, key, value, attention_mask, scaling=scaling, dropout=0.0, **kw
            )
            self.patterns[id(module)] = w.detach()
            return out, w
        w = self.patterns[id(module)]  # [1, heads, q, k]
        n_rep = w.shape[1] // value.shape[1]
        if n_rep > 1:  # grouped-query attention: repeat the KV heads
            b, h, s, dh = value.shape
            value = value[:, :, None].expand(b, h, n_rep, s, dh).reshape(b, h * n_rep, s, dh)
        out = torch.matmul(w.to(value.dtype), value)  # [batch, heads, q, d_head]
        return out.transpose(1, 2).contiguous(), w


@contextlib.contextmanager
def frozen(lm: LanguageModel) -> Iterator[FrozenModel]:
    """Context manager: patterns and norm scales become cacheable and, once `.frozen`, fixed."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    fz = FrozenModel(lm)
    AttentionInterface.register(ATTN_NAME, fz._attention)
    # Unknown implementations get no mask at all (non-causal!): ask for the eager 4D mask.
    AttentionMaskInterface.register(ATTN_NAME, eager_mask)
    cfg = lm.model.config
    old_impl = cfg._attn_implementation
    handles = []
    try:
        cfg._attn_implementation = ATTN_NAME
        for parts in lm.hooks.parts:
            for child in parts.block.children():
                if id(child) in fz.norms:
                    handles.append(child.register_forward_hook(fz._norm_hook))
        if lm.hooks.final_norm is not None:
            handles.append(lm.hooks.final_norm.register_forward_hook(fz._norm_hook))
        yield fz
    finally:
        for h in handles:
            h.remove()
        cfg._attn_implementation = old_impl
