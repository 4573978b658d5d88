"""The LLM explainer: marked activating examples + logit effects -> a short label from any
OpenAI-compatible chat server (llm_client.py). Only the explainer's half of the split is shown."""

from __future__ import annotations

from ..atlas.db import FeatureProfile
from .llm_client import LLMClient, LLMError
from .prompts import clean_label, explainer_messages
from .split import Split

METHOD = "llm"
VERSION = "1"


def explain_llm(client: LLMClient, p: FeatureProfile, split: Split, max_tokens: int = 30) -> str:
    raw = client.chat(explainer_messages(p, split.shown), max_tokens=max_tokens)
    label = clean_label(raw)
    if not label:
        raise LLMError(f"malformed completion from {client.base_url}: empty label ({raw[:80]!r})")
    return label
