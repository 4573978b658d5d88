"""Transcoders: read one hook point, predict another (Dunefsky, Chlenski & Nanda 2024).

A transcoder replaces an MLP with a sparse, interpretable one: it encodes the MLP's
input (`blocks.L.mlp_in`) and decodes the MLP's output (`blocks.L.mlp_out`), so its
latents are features *of the computation* rather than of a representation, and
attribution graphs can route through them (circuit-tracer). A skip transcoder adds a
linear map W_skip [d_out, d_in] from input to output that soaks up the linear part of
the MLP (Paulo et al. 2025, "Transcoders beat sparse autoencoders for interpretability").

There is no separate class: every architecture (topk, batchtopk, jumprelu, relu) is a
transcoder when its config has `d_out` / `out_hook_name` (base.DictionaryConfig), and
then (1) `loss(x, target)` needs the target activation, (2) b_dec lives in output space
so it is not subtracted from the input, (3) input and target get their own normalization
scales (act_scale, act_scale_out), and (4) the encoder starts random, since it cannot be
the decoder's transpose. This module only spells out the usual pairing.
"""

from __future__ import annotations

from typing import Any

from .base import DictionaryConfig


def mlp_hooks(layer: int) -> tuple[str, str]:
    """(input hook, output hook) of the MLP transcoder for `layer`."""
    return f"blocks.{layer}.mlp_in", f"blocks.{layer}.mlp_out"


def transcoder_config(
    layer: int,
    d_model: int,
    d_sae: int,
    *,
    d_out: int | None = None,
    skip: bool = False,
    **kwargs: Any,
) -> DictionaryConfig:
    """A DictionaryConfig for an MLP transcoder mlp_in -> mlp_out at `layer`."""
    hook_in, hook_out = mlp_hooks(layer)
    return DictionaryConfig(
        d_in=d_model,
        d_sae=d_sae,
        d_out=d_model if d_out is None else d_out,
        skip=skip,
        hook_name=hook_in,
        out_hook_name=hook_out,
        **kwargs,
    )


__all__ = ["mlp_hooks", "transcoder_config"]
