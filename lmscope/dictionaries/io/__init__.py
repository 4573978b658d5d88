"""Foreign and native dictionary formats, and `load_dictionary`, which picks the right reader.

- lmscope / SAELens folder: cfg.json + sae_weights.safetensors (io/saelens.py); lmscope
  writes this format, with its own settings under metadata.lmscope_*.
- EleutherAI sparsify folder: cfg.json + sae.safetensors (io/sparsify.py).
- Gemma Scope: params.npz, or a folder holding it (io/gemmascope.py).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ...errors import UserError
from ..base import SparseDictionary
from .gemmascope import PARAMS_FILENAME, load_gemmascope
from .saelens import WEIGHTS_FILENAME, load_saelens, read_sparsity, saelens_metadata, save_saelens
from .sparsify import SPARSIFY_WEIGHTS, load_sparsify


def detect_format(path: str | Path) -> str:
    """'saelens', 'sparsify' or 'gemmascope' for a dictionary file/folder; UserError otherwise."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"no dictionary at {p}: the path does not exist")
    if p.is_file():
        if p.name.endswith(".npz"):
            return "gemmascope"
        p = p.parent
    if (p / WEIGHTS_FILENAME).exists():
        return "saelens"
    if (p / SPARSIFY_WEIGHTS).exists():
        return "sparsify"
    if (p / PARAMS_FILENAME).exists():
        return "gemmascope"
    raise UserError(
        f"{p} is not a dictionary folder: expected cfg.json + {WEIGHTS_FILENAME} "
        "(lmscope/SAELens), "
        f"cfg.json + {SPARSIFY_WEIGHTS} (sparsify) or {PARAMS_FILENAME} (Gemma Scope)"
    )


def load_dictionary(path: str | Path, device: str | torch.device = "cpu") -> SparseDictionary:
    """Load a dictionary in any supported format; outputs equal the original tool's."""
    fmt = detect_format(path)
    p = Path(path)
    if fmt == "gemmascope":
        return load_gemmascope(p, device)
    folder = p if p.is_dir() else p.parent
    return load_saelens(folder, device) if fmt == "saelens" else load_sparsify(folder, device)


__all__ = [
    "detect_format",
    "load_dictionary",
    "load_gemmascope",
    "load_saelens",
    "load_sparsify",
    "read_sparsity",
    "saelens_metadata",
    "save_saelens",
]
