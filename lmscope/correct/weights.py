"""Fold an edit (correct/edits.py) into a copy of the model's weights.

The repaired model then runs in plain transformers, without lmscope or hooks. Which weights
change:

- ProjectOut(u): every matrix that writes to the residual stream gets P = I - u u^T on its
  output side: the input (and learned position) embedding rows, and the output projection of
  every attention and MLP (o_proj/down_proj, c_proj, dense, ...), biases included. Tied input
  and output embeddings are untied first, so the unembedding still reads the original vocabulary
  directions (only what is written is changed, as the runtime edit does).
- AddVector(L, v): v is added to the bias of block L's MLP output projection. A family whose
  MLP has no bias gets one where its config can say so (Llama-style `mlp_bias`); otherwise the
  fold is refused and the runtime edit is the way.

Which module is "the output projection" is found, not guessed: one calibration forward records
the linear layers each sublayer runs, and the writer is the last one whose output IS the
sublayer's output. Families with a norm after the sublayer (Gemma 2/3, OLMo 2) rescale what
is written, so no weight fold is exact there: refused with one line.

`fold(lm, edits)` returns a new LanguageModel and checks it against the runtime edit on a
calibration input before returning it.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from ..errors import UserError
from ..models.hooks import first_tensor
from .edits import RUNTIME_ONLY, AddVector, EditSet, ProjectOut, as_edit_set


def _is_conv1d(m: nn.Module) -> bool:
    """transformers' Conv1D (GPT-2): a linear layer with weight [in, out]."""
    return type(m).__name__ == "Conv1D" and hasattr(m, "nf")


def _is_linear(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear) or _is_conv1d(m)


def _calibration_ids(lm) -> Tensor:
    vocab = lm.model.get_input_embeddings().weight.shape[0]
    return ((torch.arange(12) * 11 + 5) % vocab)[None].to(lm.device)


@torch.no_grad()
def writers(lm) -> list[tuple[nn.Module, nn.Module]]:
    """Per block, (attention's output projection, MLP's output projection), found by running."""
    hp = lm.hooks
    subs = []
    for L, p in enumerate(hp.parts):
        for kind, mod, out_mod in (("attention", p.attn, p.attn_out), ("MLP", p.mlp, p.mlp_out)):
            if out_mod is not mod:
                raise UserError(
                    f"block {L}'s {kind} output passes through {type(out_mod).__name__} before "
                    "the residual stream, so no weight edit is exact for this family; use the "
                    "runtime edit (lmscope steer) instead"
                )
            subs.append(mod)
    calls: dict[int, list[tuple[nn.Module, Tensor]]] = {id(s): [] for s in subs}
    outs: dict[int, Tensor] = {}
    handles = []
    for s in subs:
        handles.append(
            s.register_forward_hook(lambda m, a, o: outs.__setitem__(id(m), first_tensor(o)))
        )
        for child in s.modules():
            if child is not s and _is_linear(child):
                handles.append(
                    child.register_forward_hook(lambda m, a, o, s=s: calls[id(s)].append((m, o)))
                )
    try:
        lm.model(_calibration_ids(lm), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    found = []
    for L, s in enumerate(subs):
        out = outs.get(id(s))
        hit = next(
            (
                m
                for m, o in reversed(calls[id(s)])
                if out is not None and o.shape == out.shape and torch.equal(o, out)
            ),
            None,
        )
        if hit is None:
            raise UserError(
                f"block {L // 2}'s {'attention' if L % 2 == 0 else 'MLP'} "
                f"({type(s).__name__}) does not end in a linear layer that writes its output; "
                "weight edits are not supported for this family: use the runtime edit"
            )
        found.append(hit)
    return [(found[2 * i], found[2 * i + 1]) for i in range(len(found) // 2)]


def _project_out_rows(w: Tensor, u: Tensor) -> None:
    """w [..., d] (d = residual side on the LAST axis) -> w - (w u) u^T, in place."""
    u = u.to(device=w.device, dtype=torch.float32)
    w32 = w.data.to(torch.float32)
    w.data.copy_((w32 - (w32 @ u)[..., None] * u).to(w.dtype))


def _project_writer(m: nn.Module, u: Tensor) -> None:
    if _is_conv1d(m):  # y = x W + b, W [in, out]: the residual side is the last axis
        _project_out_rows(m.weight, u)
    else:  # nn.Linear: y = x W^T + b, W [out, in]: project columns, i.e. rows of W^T
        w = m.weight
        wt = w.data.t().contiguous()
        tmp = nn.Parameter(wt)
        _project_out_rows(tmp, u)
        w.data.copy_(tmp.data.t())
    if m.bias is not None:
        _project_out_rows(m.bias, u)


def _untie(model: nn.Module) -> None:
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    if out is None:
        return
    if out.weight is inp.weight or out.weight.data_ptr() == inp.weight.data_ptr():
        out.weight = nn.Parameter(inp.weight.detach().clone())
        for cfg in (model.config, getattr(model.config, "text_config", None)):
            if cfg is not None and hasattr(cfg, "tie_word_embeddings"):
                cfg.tie_word_embeddings = False


def _embeddings(model: nn.Module, layers: nn.ModuleList, d_model: int) -> list[nn.Embedding]:
    """Token and learned position embeddings (nn.Embedding of width d_model outside the blocks)."""
    inside = {id(m) for m in layers.modules()}
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.Embedding) and m.embedding_dim == d_model and id(m) not in inside
    ]


def _add_bias(lm, mlp: nn.Module, writer: nn.Module, v: Tensor) -> None:
    if writer.bias is None:
        cfg = lm.model.config
        if not hasattr(cfg, "mlp_bias"):
            raise UserError(
                f"{type(lm.model).__name__}'s MLP has no bias to fold a vector into and its "
                "config cannot add one; use the runtime edit (lmscope steer) instead"
            )
        cfg.mlp_bias = True  # from_pretrained then builds a bias on every MLP linear
        for m in mlp.modules():
            if isinstance(m, nn.Linear) and m.bias is None:
                m.bias = nn.Parameter(
                    torch.zeros(m.out_features, dtype=m.weight.dtype, device=m.weight.device)
                )
    b = writer.bias
    b.data.add_(v.to(device=b.device, dtype=torch.float32).to(b.dtype))


def fold(lm, edits) -> object:
    """A new LanguageModel whose weights carry `edits`; the original is left untouched."""
    from ..models.load import LanguageModel

    es: EditSet = as_edit_set(edits)
    if any(isinstance(e, RUNTIME_ONLY) for e in es.edits):
        raise UserError(
            "a feature ablation or a gated edit acts only at run time (an encoder, a threshold) "
            "and cannot be folded into weights; export a direction edit instead (lmscope fix "
            "--export chooses one)"
        )
    es.runtime(lm)  # validates layers and shapes with the runtime's messages
    model = copy.deepcopy(lm.model)
    new = LanguageModel(model, lm.tokenizer, lm.name, lm.source)
    pairs = writers(new)
    for e in es.edits:
        if isinstance(e, ProjectOut):
            u = e.unit()
            blocks = e.blocks(new.n_layers)
            if 0 in blocks:
                _untie(model)
                for emb in _embeddings(model, new.hooks.layers, new.d_model):
                    _project_out_rows(emb.weight, u)
            for L in blocks:
                for w in pairs[L]:
                    _project_writer(w, u)
        elif isinstance(e, AddVector):
            _add_bias(new, new.hooks.parts[e.layer].mlp, pairs[e.layer][1], e.vector.flatten())
        else:  # pragma: no cover - EditSet only holds the two kinds
            raise TypeError(type(e))
    check(lm, new, es)
    return new


@torch.no_grad()
def check(lm, folded, edits: EditSet) -> float:
    """Max |logit difference| between the runtime-edited original and the folded copy on a
    calibration input; raises if they differ beyond the dtype's rounding."""
    ids = _calibration_ids(lm)
    with lm.edit(edits.runtime(lm)):
        ref = lm.model(ids, use_cache=False).logits.float()
    got = folded.model(ids, use_cache=False).logits.float()
    err = float((ref - got).abs().max())
    tol = (1e-3 if lm.dtype == torch.float32 else 5e-2) * (1 + float(ref.abs().max()))
    if not err <= tol:
        raise RuntimeError(
            f"the weight fold does not reproduce the runtime edit (max logit difference {err:.3g}"
            f" > {tol:.3g}); this is a bug in lmscope, please report it"
        )
    return err


__all__ = ["check", "fold", "writers"]
