"""`Dictionary`: what every trainable dictionary offers, the unsharded ones and ShardedTopK alike.

The architectures (topk.py, batchtopk.py, jumprelu.py, relu.py) subclass SparseDictionary;
sharded.py's ShardedTopK holds one rank's slice of a TopK dictionary and is not a subclass.
Both have the same parameters in the same normalized space, the same training loss and
the same decoder upkeep, which is all the trainer and the raw-unit maths (dictmath.py)
need, so those take a `Dictionary`. Code that encodes or decodes activations needs the
whole dictionary and takes a SparseDictionary (a slice cannot encode alone).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from torch import Tensor

if TYPE_CHECKING:
    from .base import DictionaryConfig, TrainOutput


@runtime_checkable
class Dictionary(Protocol):
    cfg: DictionaryConfig
    W_enc: Tensor
    """[d_in, d_sae] (a shard: [d_in, d_local]), normalized space."""
    b_enc: Tensor
    W_dec: Tensor
    """[d_sae, d_out] (a shard: [d_local, d_out]), normalized space."""
    b_dec: Tensor
    W_skip: Tensor | None
    """[d_out, d_in] a skip transcoder's linear path, else None."""
    act_scale: Tensor
    """Scalar that normalizes inputs (see base.py)."""
    act_scale_out: Tensor
    """Scalar that normalizes targets (== act_scale for an SAE)."""

    @property
    def apply_b_dec_to_input(self) -> bool:
        """SAEs subtract b_dec before encoding; transcoders do not."""
        ...

    def loss(
        self, x: Tensor, target: Tensor | None = None, *, dead_mask: Tensor | None = None
    ) -> TrainOutput:
        """One training step's loss and metrics on raw activations x [batch, d_in]."""
        ...

    def normalize_decoder_(self) -> None:
        """Put decoder rows back on the unit sphere (architectures that keep them there)."""
        ...

    def remove_parallel_grad_(self) -> None:
        """Drop the decoder gradient's component along each row (before the optimizer step)."""
        ...


__all__ = ["Dictionary"]
