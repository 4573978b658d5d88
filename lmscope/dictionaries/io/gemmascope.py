"""Gemma Scope `params.npz` (Lieberum et al. 2024): JumpReLU SAEs and transcoders on raw
activations.

The archive holds W_enc [d_in, d_sae], W_dec [d_sae, d_out], b_enc [d_sae], b_dec [d_out]
and threshold [d_sae]. Gemma Scope encodes x @ W_enc + b_enc without subtracting b_dec
(SAELens loads them with apply_b_dec_to_input=False); `from_raw_state` folds that into
b_enc for our convention (for SAEs; a transcoder's b_dec is its output bias). The folder path
(layer_L/width_X/average_l0_N) and the release's site name the hook point: the caller maps them
(models/hook_names.py, io/pretrained.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ...errors import UserError
from ..base import DictionaryConfig, SparseDictionary
from .saelens import from_raw_state

PARAMS_FILENAME = "params.npz"


def load_gemmascope(
    path: str | Path,
    device: str | torch.device = "cpu",
    *,
    hook_name: str = "",
    out_hook_name: str | None = None,
    model_name: str = "",
) -> SparseDictionary:
    """A Gemma Scope params.npz (or the folder holding it) -> JumpReLU SparseDictionary; with
    out_hook_name (the -transcoders releases: mlp_in -> mlp_out) a transcoder, whose b_dec is an
    output bias."""
    path = Path(path)
    file = path / PARAMS_FILENAME if path.is_dir() else path
    try:
        with np.load(file, allow_pickle=False) as npz:
            st = {k: torch.from_numpy(np.asarray(npz[k], dtype=np.float32)) for k in npz.files}
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read Gemma Scope params {file}: {e}") from None
    missing = [k for k in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold") if k not in st]
    if missing:
        raise UserError(f"{file} is not a Gemma Scope params.npz: it lacks {', '.join(missing)}")
    d_in, d_sae = st["W_enc"].shape
    d_out = st["W_dec"].shape[1]
    cfg = DictionaryConfig(
        d_in=d_in,
        d_sae=d_sae,
        arch="jumprelu",
        d_out=None if d_out == d_in and out_hook_name is None else d_out,
        skip="W_skip" in st,
        hook_name=hook_name,
        out_hook_name=out_hook_name,
        model_name=model_name,
    )
    return from_raw_state(cfg, st, apply_b_dec_to_input=False).to(device)


__all__ = ["load_gemmascope", "PARAMS_FILENAME"]
