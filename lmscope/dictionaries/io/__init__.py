"""Foreign and native dictionary formats, and `load_dictionary`, which picks the right reader.

- lmscope / SAELens folder: cfg.json + sae_weights.safetensors (io/saelens.py); lmscope
  writes this format, with its own settings under metadata.lmscope_*.
- EleutherAI sparsify folder: cfg.json + sae.safetensors (io/sparsify.py).
- Gemma Scope: params.npz, or a folder holding it (io/gemmascope.py).

Published sets and cross-layer transcoders (several layers at once), read by `load_pretrained`
/ `import_pretrained` (io/pretrained.py) from a folder or a Hugging Face reference (io/hub.py):
- circuit-tracer: config.yaml + layer_{i}.safetensors, or W_enc_{i}/W_dec_{i}.safetensors
  (CLT); also written, for circuit-tracer to load (io/circuit_tracer.py).
- Gemma Scope 2: config.json + params.safetensors, or params_layer_{i}.safetensors (CLT)
  (io/gemmascope2.py). CLT tensors travel in one plain form (io/clt_state.py).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ...errors import UserError
from ..base import SparseDictionary
from .circuit_tracer import (
    load_circuit_tracer_clt,
    load_circuit_tracer_transcoders,
    save_circuit_tracer_clt,
    save_circuit_tracer_transcoders,
)
from .gemmascope import PARAMS_FILENAME, load_gemmascope
from .gemmascope2 import load_gemmascope2, load_gemmascope2_clt
from .pretrained import Pretrained, detect_pretrained, import_pretrained, load_pretrained
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
    "Pretrained",
    "detect_format",
    "detect_pretrained",
    "import_pretrained",
    "load_circuit_tracer_clt",
    "load_circuit_tracer_transcoders",
    "load_dictionary",
    "load_gemmascope",
    "load_gemmascope2",
    "load_gemmascope2_clt",
    "load_pretrained",
    "save_circuit_tracer_clt",
    "save_circuit_tracer_transcoders",
    "load_saelens",
    "load_sparsify",
    "read_sparsity",
    "saelens_metadata",
    "save_saelens",
]
