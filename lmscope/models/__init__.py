"""Stage 0: load any causal LM, name its hook points uniformly, capture and edit activations there.

load.py (LanguageModel), hooks.py (hook points), runtime.py (the one hooking mechanism),
tokens.py (which positions carry text). See docs/packages.md.
"""

from .hooks import HookPoint, HookPoints
from .load import LanguageModel, from_pretrained_model, load_model, resolve
from .registry import DEFAULT_MODEL

__all__ = [
    "DEFAULT_MODEL",
    "HookPoint",
    "HookPoints",
    "LanguageModel",
    "from_pretrained_model",
    "load_model",
    "resolve",
]
