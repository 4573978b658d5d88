"""Stage 0: load any causal LM and name its hook points uniformly."""

from .hooks import HookPoint, HookPoints
from .load import LanguageModel, from_pretrained_model, load_model, resolve
from .registry import DEFAULT_MODEL

__all__ = ["DEFAULT_MODEL", "HookPoint", "HookPoints", "LanguageModel", "from_pretrained_model",
           "load_model", "resolve"]
