"""Finish a forward pass from a given residual stream: the blocks after L, the final norm, the head.

Splicing a dictionary in at block L changes nothing before L, so the spliced logits only need
blocks L+1 .. n-1 and the LM head. Evaluating 30 per-layer dictionaries that way costs about
half the blocks per splice instead of all of them (plus the head, which every splice needs).

    logits = resume(lm, tokens, layer=L, resid_post=h)   # h: [batch, pos, d_model] after block L

How, for every family whose decoder blocks sit in one ModuleList (what HookPoints found): blocks
0 .. L are swapped for stand-ins for the duration of one call; blocks before L hand their input
through untouched (no compute), block L returns `resid_post`, and the model's own forward does
everything else (embedding, rotary tables, masks, the later blocks, final norm, head) exactly as
in a full pass. With `resid_post` equal to the clean one the logits equal a clean forward's bit
for bit (tests/test_eval_layers.py), which is what makes a resumed splice the same number as a
full spliced forward.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from .load import LanguageModel

# model -> how a decoder block returns its hidden state: "tensor", "tuple" or "list"
_RETURNS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class _StandIn(nn.Module):
    """Replaces one decoder block for one call: returns `value` (or its input when None)."""

    def __init__(self, real: nn.Module, value: torch.Tensor | None, returns: str) -> None:
        super().__init__()
        object.__setattr__(self, "_real", real)  # not a submodule: no parameters to see twice
        self._value = value
        self._returns = returns

    def __getattr__(self, name: str):
        # Model loops read block attributes (e.g. attention_type for sliding-window masks).
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_real"), name)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        h = hidden_states if self._value is None else self._value.to(hidden_states.dtype)
        if self._returns == "tuple":
            return (h,)
        if self._returns == "list":
            return [h]
        return h


def _block_returns(lm: LanguageModel) -> str:
    """Whether this model's decoder blocks return a tensor or a tuple (one 2-token forward)."""
    got = _RETURNS.get(lm.model)
    if got is not None:
        return got
    seen: list[str] = []

    def rec(mod, args, out):
        seen.append(
            "tuple" if isinstance(out, tuple) else "list" if isinstance(out, list) else "tensor"
        )

    block = lm.hooks.layers[0]
    h = block.register_forward_hook(rec)
    try:
        with torch.inference_mode():
            first = next(lm.model.parameters())
            lm.model(torch.zeros(1, 2, dtype=torch.long, device=first.device), use_cache=False)
    finally:
        h.remove()
    _RETURNS[lm.model] = seen[0]
    return seen[0]


def resume(
    lm: LanguageModel, tokens: torch.Tensor, *, layer: int, resid_post: torch.Tensor
) -> torch.Tensor:
    """Logits [batch, pos, vocab] of the forward pass whose residual stream after block `layer`
    is `resid_post` [batch, pos, d_model]; `tokens` [batch, pos] are the same pass's inputs."""
    hp = lm.hooks
    if not 0 <= layer < hp.n_layers:
        raise ValueError(f"layer {layer} is not a block of this {hp.n_layers}-block model")
    returns = _block_returns(lm)
    layers = hp.layers
    real = [layers[i] for i in range(layer + 1)]
    try:
        for i in range(layer + 1):
            layers[i] = _StandIn(real[i], resid_post if i == layer else None, returns)
        with torch.inference_mode():
            return lm.model(tokens, use_cache=False).logits
    finally:
        for i, m in enumerate(real):
            layers[i] = m


__all__ = ["resume"]
