"""JumpReLU sparse autoencoder / transcoder (Rajamanoharan et al. 2024, "Jumping Ahead"; Gemma
Scope).

A latent is active when its pre-activation exceeds its own threshold theta_i, and then
passes the pre-activation through unchanged: f_i = z_i * H(z_i - theta_i). The loss
penalizes L0 (the count of active latents) directly. Both the jump and the L0 are
piecewise constant in theta, so their gradients w.r.t. theta are zero almost
everywhere; the paper's straight-through estimator replaces the Dirac delta by a
rectangle kernel K(u) = 1[|u| < 1/2] of width epsilon (`jumprelu_bandwidth`):

    d/dtheta JumpReLU(z; theta) ~= -(theta / eps) K((z - theta) / eps)
    d/dtheta H(z - theta)       ~= -(1 / eps)     K((z - theta) / eps)

and leaves the gradient w.r.t. z as that of the function where it is differentiable
(H(z - theta) for the JumpReLU, 0 for the step). theta = exp(log_threshold) stays
positive.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch import Tensor

from .base import DictionaryConfig, SparseDictionary, _Terms


def _rectangle(u: Tensor) -> Tensor:
    return (u.abs() < 0.5).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre: Tensor, theta: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return pre * (pre > theta)

    @staticmethod
    def backward(ctx, grad: Tensor):
        pre, theta = ctx.saved_tensors
        eps = ctx.eps
        grad_pre = grad * (pre > theta)
        grad_theta = -(theta / eps) * _rectangle((pre - theta) / eps) * grad  # [batch, d_sae]
        return grad_pre, grad_theta.sum(0), None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre: Tensor, theta: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        pre, theta = ctx.saved_tensors
        eps = ctx.eps
        grad_theta = -(1.0 / eps) * _rectangle((pre - theta) / eps) * grad  # [batch, d_sae]
        return torch.zeros_like(pre), grad_theta.sum(0), None


def jumprelu(pre: Tensor, theta: Tensor, eps: float) -> Tensor:
    """pre * H(pre - theta) with the straight-through threshold gradient."""
    return _JumpReLU.apply(pre, theta, eps)


def step(pre: Tensor, theta: Tensor, eps: float) -> Tensor:
    """H(pre - theta) with the straight-through threshold gradient (for the L0 penalty)."""
    return _Step.apply(pre, theta, eps)


class JumpReLUDictionary(SparseDictionary):
    """JumpReLU activation with a trained per-latent threshold and an L0 penalty."""

    arch = "jumprelu"

    def __init__(self, cfg: DictionaryConfig) -> None:
        super().__init__(cfg)
        self.log_threshold = nn.Parameter(torch.full((cfg.d_sae,), math.log(cfg.init_threshold)))

    @property
    def threshold(self) -> Tensor:
        """[d_sae] per-latent threshold theta."""
        return self.log_threshold.exp()

    def activation(self, pre: Tensor) -> Tensor:
        theta = self.threshold.to(pre.dtype)
        return pre * (pre > theta)  # [batch, d_sae]

    def _train_terms(self, x_n: Tensor, target_n: Tensor, dead_mask: Tensor | None) -> _Terms:
        pre = self.pre_acts_normalized(x_n)  # [batch, d_sae]
        theta = self.threshold.to(pre.dtype)
        eps = self.cfg.jumprelu_bandwidth
        acts = jumprelu(pre, theta, eps)
        recon = self.decode_normalized(acts, x_n)  # [batch, d_out]
        l0_per_token = step(pre, theta, eps).float().sum(-1)  # [batch]
        sparsity = self.cfg.l0_coeff * l0_per_token.mean()
        active = acts.detach() > 0
        return _Terms(
            recon, active.sum(1).float().mean(), active.any(0), sparsity, recon.new_zeros(())
        )


__all__ = ["JumpReLUDictionary", "jumprelu", "step"]
