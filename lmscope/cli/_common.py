"""Small helpers shared by CLI modules: JSON output and model flags."""

from __future__ import annotations

import json
import sys

from ..models.registry import DEFAULT_MODEL


def add_model_flags(p, *, dtype: bool = True) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"alias, Hugging Face id, local folder or .gguf file (default: {DEFAULT_MODEL})")
    if dtype:
        p.add_argument("--model-dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                       help="dtype of the model weights (bfloat16 is ~2x faster on CPUs with AVX-512 bf16)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default: cpu)")


def print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
