"""Architecture name -> dictionary class: the one place that knows every subclass.

base.py defines what all architectures share and never imports them; each architecture
file imports base. Adding an architecture means one file plus one line here (and its name
in base.ARCHS, which DictionaryConfig validates against).
"""

from __future__ import annotations

from .base import DictionaryConfig, SparseDictionary
from .batchtopk import BatchTopKDictionary
from .jumprelu import JumpReLUDictionary
from .relu import ReLUDictionary
from .topk import TopKDictionary

ARCHITECTURES: dict[str, type[SparseDictionary]] = {
    "topk": TopKDictionary,
    "batchtopk": BatchTopKDictionary,
    "jumprelu": JumpReLUDictionary,
    "relu": ReLUDictionary,
}


def build(cfg: DictionaryConfig) -> SparseDictionary:
    """A fresh dictionary of the class for `cfg.arch`."""
    return ARCHITECTURES[cfg.arch](cfg)


__all__ = ["ARCHITECTURES", "build"]
