"""Capture and edit activations at named hook points: one hooking mechanism.

Plain PyTorch hooks inside context managers that always remove them, also on
exceptions (docs/STYLE.md #6). Every later stage (training, splicing,
steering, attribution) goes through `hooked`.

    with lm.capture(["blocks.6.resid_post"]) as acts:
        lm.model(tokens)            # stops right after block 6 (no LM head)
    acts["blocks.6.resid_post"]     # [batch, pos, d_model]

    with lm.edit({"blocks.6.resid_post": add(vector)}):
        logits = lm.model(tokens).logits

    res = lm.run(tokens, capture=["blocks.*.resid_post"], edits={...}, logits=True)

Capture records the value *after* any edit at the same hook point, i.e. what
the rest of the model actually sees.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .hooks import HookPoint, first_tensor

if TYPE_CHECKING:
    from .load import LanguageModel

Edit = Callable[[torch.Tensor], torch.Tensor]
"""A function of the activation [batch, pos, d] returning its replacement (same shape)."""


class StopForward(Exception):
    """Raised inside the forward pass once the deepest requested hook has fired."""


# --- edit helpers ----------------------------------------------------------------
def add(vector: torch.Tensor, positions: slice | Sequence[int] | None = None) -> Edit:
    """x + vector (at the given positions only, if any). vector: [d] or [batch, pos, d]."""

    def f(x: torch.Tensor) -> torch.Tensor:
        v = vector.to(device=x.device, dtype=x.dtype)
        if positions is None:
            return x + v
        y = x.clone()
        y[:, positions] = y[:, positions] + v
        return y

    return f


def replace(value: torch.Tensor) -> Edit:
    """Replace the activation by `value` (broadcast to its shape)."""
    return lambda x: value.to(device=x.device, dtype=x.dtype).expand_as(x).clone()


def scale(factor: float) -> Edit:
    return lambda x: x * factor


@dataclass
class RunResult:
    """What `run` returns: named activations and (if asked) logits [batch, pos, vocab]."""

    acts: dict[str, torch.Tensor]
    logits: torch.Tensor | None = None


# --- the one mechanism -------------------------------------------------------------
def _set_first(out, new):
    if isinstance(out, tuple):
        return (new,) + out[1:]
    if isinstance(out, list):
        return [new] + out[1:]
    return new


@contextlib.contextmanager
def hooked(
    lm: LanguageModel,
    capture: Sequence[str] | str = (),
    edits: Mapping[str, Edit] | None = None,
    *,
    stop_early: bool = False,
    detach: bool = True,
    to_dtype: torch.dtype | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Register capture/edit hooks for the duration of the block.

    Yields the dict that fills with captured activations. With `stop_early`,
    the forward pass raises StopForward after the deepest captured hook and the
    context swallows it, so a forward call must be the last statement inside.
    """
    hp = lm.hooks
    names = hp.resolve(capture) if capture else []
    edits = dict(edits or {})
    for n in edits:
        hp[n]  # raises a UserError for unknown names
    acts: dict[str, torch.Tensor] = {}
    wanted = set(names)
    deepest = max((hp[n].order for n in names), default=None)
    scratch: dict[int, torch.Tensor] = {}  # layer -> resid_pre of the current call (for resid_mid)
    handles: list[torch.utils.hooks.RemovableHandle] = []

    def keep(name: str, x: torch.Tensor, point: HookPoint) -> None:
        if name in wanted:
            y = x.detach() if detach else x
            acts[name] = y.to(to_dtype) if to_dtype is not None else y
            if stop_early and point.order >= deepest and len(acts) == len(wanted):
                raise StopForward

    def points_at(kind: str, layer: int) -> list[HookPoint]:
        out = []
        for n in (f"blocks.{layer}.{kind}",) + (
            ("embed",) if (kind, layer) == ("resid_pre", 0) else ()
        ):
            if n in wanted or n in edits:
                out.append(hp.points[n])
        return out

    def pre_hook(kind: str, layer: int, remember_pre: bool):
        pts = points_at(kind, layer)

        def f(mod, args, kwargs):
            if args:
                x = args[0]
            else:
                key = "hidden_states" if "hidden_states" in kwargs else next(iter(kwargs))
                x = kwargs[key]
            changed = False
            for p in pts:
                if p.name in edits:
                    x = edits[p.name](x)
                    changed = True
                keep(p.name, x, p)
            if remember_pre:
                scratch[layer] = x
            if not changed:
                return None
            if args:
                return (x,) + tuple(args[1:]), kwargs
            kwargs = dict(kwargs)
            kwargs[key] = x
            return args, kwargs

        return f

    def post_hook(points: list[HookPoint], layer: int | None):
        def f(mod, args, out):
            x = first_tensor(out)
            changed = False
            for p in points:
                if p.kind == "resid_mid":
                    pre = scratch[layer]
                    mid = pre + x
                    if p.name in edits:
                        mid = edits[p.name](mid)
                        x = mid - pre
                        changed = True
                    keep(p.name, mid, p)
                else:
                    if p.name in edits:
                        x = edits[p.name](x)
                        changed = True
                    keep(p.name, x, p)
            return _set_first(out, x) if changed else None

        return f

    try:
        for L, parts in enumerate(hp.parts):
            need = {
                k
                for k in ("resid_pre", "attn_out", "resid_mid", "mlp_in", "mlp_out", "resid_post")
                if f"blocks.{L}.{k}" in wanted or f"blocks.{L}.{k}" in edits
            }
            if L == 0 and ("embed" in wanted or "embed" in edits):
                need.add("resid_pre")
            if not need:
                continue
            if "resid_pre" in need or "resid_mid" in need:
                handles.append(
                    parts.block.register_forward_pre_hook(
                        pre_hook("resid_pre", L, "resid_mid" in need), with_kwargs=True
                    )
                )
            attn_pts = [
                hp.points[f"blocks.{L}.{k}"] for k in ("attn_out", "resid_mid") if k in need
            ]
            if attn_pts:
                handles.append(parts.attn_out.register_forward_hook(post_hook(attn_pts, L)))
            if "mlp_in" in need:
                handles.append(
                    parts.mlp.register_forward_pre_hook(
                        pre_hook("mlp_in", L, False), with_kwargs=True
                    )
                )
            if "mlp_out" in need:
                handles.append(
                    parts.mlp_out.register_forward_hook(
                        post_hook([hp.points[f"blocks.{L}.mlp_out"]], L)
                    )
                )
            if "resid_post" in need:
                handles.append(
                    parts.block.register_forward_hook(
                        post_hook([hp.points[f"blocks.{L}.resid_post"]], L)
                    )
                )
        if "ln_final" in wanted or "ln_final" in edits:
            handles.append(
                hp.final_norm.register_forward_hook(post_hook([hp.points["ln_final"]], None))
            )
        try:
            yield acts
        except StopForward:
            if not stop_early:
                raise
    finally:
        for h in handles:
            h.remove()
        scratch.clear()


def capture(lm: LanguageModel, names: Sequence[str] | str, *, stop_early: bool = True, **kw):
    """Context manager: record activations at `names`; stops the forward after the deepest."""
    return hooked(lm, names, stop_early=stop_early, **kw)


def edit(lm: LanguageModel, edits: Mapping[str, Edit]):
    """Context manager: replace activations at hook points by functions of themselves."""
    return hooked(lm, (), edits)


def run(
    lm: LanguageModel,
    tokens: torch.Tensor,
    capture: Sequence[str] | str = (),
    *,
    edits: Mapping[str, Edit] | None = None,
    logits: bool = False,
    attention_mask: torch.Tensor | None = None,
    grad: bool = False,
    to_dtype: torch.dtype | None = None,
) -> RunResult:
    """One forward pass over tokens [batch, pos]: captured activations (and logits).

    Without `logits`, the pass stops after the deepest captured hook (no LM head).
    """
    stop = bool(capture) and not logits
    out_logits = None
    ctx = torch.enable_grad() if grad else torch.inference_mode()
    with (
        ctx,
        hooked(lm, capture, edits, stop_early=stop, detach=not grad, to_dtype=to_dtype) as acts,
    ):
        out = lm.model(tokens, attention_mask=attention_mask, use_cache=False)
        out_logits = out.logits
    return RunResult(acts=acts, logits=out_logits if logits else None)
