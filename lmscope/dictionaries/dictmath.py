"""A dictionary's linear pieces in raw activation units (for attribution, steering, the atlas).

`SparseDictionary.encode`/`decode` take and return raw activations; attribution needs
the affine maps behind them: what one unit of feature f writes (its raw decoder row) and
the pre-activation whose sign / threshold decides whether f fires (its raw encoder column
and bias). Both are derived from the dictionary's normalization buffers here, in one
place, and tests check them against `encode`/`decode` so a change there shows up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from torch import Tensor

if TYPE_CHECKING:
    from .protocol import Dictionary


class EncoderAffine(NamedTuple):
    weight: Tensor
    """[d_in, d_sae] pre-activation = x @ weight + bias, in the units of encode()'s output."""
    bias: Tensor
    """[d_sae]"""


def decoder_rows(d: Dictionary) -> Tensor:
    """[d_sae, d_out] decode(acts) - decode(0) = acts @ decoder_rows(d) (raw units)."""
    # decode(acts) = (acts * s_o @ W_dec + b_dec [+ skip]) / s_o
    return d.W_dec.detach()


def decoder_bias(d: Dictionary) -> Tensor:
    """[d_out] decode(0) without the skip term."""
    return (d.b_dec / d.act_scale_out).detach()


def encoder_affine(d: Dictionary) -> EncoderAffine:
    """Raw-unit pre-activations: encode(x) = activation(x @ weight + bias) (for relu/topk
    exactly)."""
    s, so = d.act_scale, d.act_scale_out
    bias = d.b_enc
    if d.apply_b_dec_to_input:  # SAEs subtract b_dec (normalized space) before encoding
        bias = bias - d.b_dec @ d.W_enc
    return EncoderAffine((d.W_enc * s / so).detach(), (bias / so).detach())


def skip_term(d: Dictionary, x: Tensor) -> Tensor | None:
    """[..., d_out] the skip transcoder's linear path from raw input x (None without W_skip)."""
    if d.W_skip is None:
        return None
    return (x * d.act_scale) @ d.W_skip.t() / d.act_scale_out
