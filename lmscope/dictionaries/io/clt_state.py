"""The CLT contract's plain form, shared by every CLT file format: (fields, tensors) <-> the
CrossLayerTranscoder class (clt.py).

fields: CLTConfig keyword arguments (n_layers, d_model, d_sae, arch, hook_in, hook_out,
model_name, ...). tensors, raw units, float32: W_enc [L, d, n], b_enc [L, n], b_dec [L, d],
W_dec.{l} [n, L - l, d] (source l -> targets l..L-1), threshold [L, n] (jumprelu) -- the
names and shapes of CrossLayerTranscoder.folded_state(). Readers (circuit_tracer.py,
gemmascope2.py) produce this form and writers consume it, so a format converter never depends
on the class's internals and the class never knows a foreign layout.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from ...errors import UserError


def check_state(fields: Mapping[str, Any], st: Mapping[str, Tensor], where: str = "") -> None:
    """UserError unless the tensors have the contract's names and shapes for `fields`."""
    L, d, n = int(fields["n_layers"]), int(fields["d_model"]), int(fields["d_sae"])
    want = {"W_enc": (L, d, n), "b_enc": (L, n), "b_dec": (L, d)}
    want.update({f"W_dec.{i}": (n, L - i, d) for i in range(L)})
    if fields.get("arch", "topk") == "jumprelu":
        want["threshold"] = (L, n)
    for k, shape in want.items():
        if k not in st:
            raise UserError(f"{where or 'CLT'}: the weights lack {k}")
        if tuple(st[k].shape) != shape:
            raise UserError(
                f"{where or 'CLT'}: {k} has shape {tuple(st[k].shape)}, expected {shape}"
            )


def clt_from_state(fields: Mapping[str, Any], st: Mapping[str, Tensor]):
    """(fields, tensors) -> CrossLayerTranscoder in eval mode, parameters equal to the tensors."""
    from ..clt import CLTConfig, CrossLayerTranscoder

    try:
        cfg = CLTConfig(**dict(fields))
    except (TypeError, ValueError) as e:
        raise UserError(f"not a valid cross-layer transcoder: {e}") from None
    check_state(fields, st)
    clt = CrossLayerTranscoder(cfg)
    clt.copy_state_(st)
    return clt.eval()


def clt_to_state(clt) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """CrossLayerTranscoder -> (fields, raw-unit float32 tensors)."""
    c = clt.cfg
    fields = {
        "n_layers": c.n_layers,
        "d_model": c.d_model,
        "d_sae": c.d_sae,
        "arch": c.arch,
        "k": c.k,
        "hook_in": c.hook_in,
        "hook_out": c.hook_out,
        "model_name": c.model_name,
    }
    return fields, clt.folded_state()


__all__ = ["check_state", "clt_from_state", "clt_to_state"]
