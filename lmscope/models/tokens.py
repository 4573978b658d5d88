"""Which token positions carry text: the special-token mask every stage applies the same way.

BOS, EOS, padding and the other special tokens are attention sinks whose residual norms
are far above every text token (see lmscope/dictionaries/sources.py for the SmolLM2
measurement), so training, evaluation, splicing, the atlas and attribution all skip them.
One definition here keeps those stages in agreement.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .load import LanguageModel


def special_ids(lm: LanguageModel) -> Tensor:
    """Token ids excluded from training and splicing: BOS, EOS, padding, other special tokens."""
    ids = set(getattr(lm.tokenizer, "all_special_ids", None) or [])
    ids |= {
        i for i in (lm.bos_token_id, getattr(lm.tokenizer, "eos_token_id", None)) if i is not None
    }
    return torch.tensor(sorted(ids), dtype=torch.long)


def token_mask(lm: LanguageModel, tokens: Tensor) -> Tensor:
    """bool [batch, pos]: positions whose activations train and get evaluated (module docstring)."""
    keep = ~torch.isin(tokens, special_ids(lm).to(tokens.device))
    keep[:, 0] = False  # position 0 is an attention sink whatever its token
    return keep
