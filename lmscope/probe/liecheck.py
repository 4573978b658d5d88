"""Score a stated answer with a truth probe: what the model internally holds about the text it
reads.

    lmscope lie-check --probe P "Q: What is the capital of France? A: Berlin."

The probe was trained at statements' last token, so the headline score is
the truth probability at the last token; the mean over the answer tokens
(everything after the last "A:", as Apollo Research score a response) is
reported next to it. A last-token probability below the probe's stored
threshold is flagged as contradicting the model's internal belief. The
threshold `probe lies --set-threshold` stores is calibrated on this very
format ("Q: <question> A: <answer>." read at the last token, its `probe_qa`
scorer), not on the restated statements the probe was trained on: a probe's
offset does not carry from one format to another. Which format the threshold
came from is printed with every verdict ('uncalibrated': the probe's 0.5).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from .activations import token_acts, tokenize
from .probes import Probe

if TYPE_CHECKING:
    from ..models import LanguageModel

ANSWER_MARKERS = ("A:", "Answer:")


@dataclass
class LieCheck:
    text: str
    answer: str
    truth_last: float
    """Truth probability at the last token (what the probe was trained on)."""
    truth_answer_mean: float
    """Mean truth probability over the answer tokens."""
    threshold: float
    threshold_format: str
    """What the threshold was calibrated on: 'qa' (this format) or 'uncalibrated' (0.5)."""
    contradiction: bool
    tokens: list[str]
    per_token: list[float]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LieCheckConfig:
    """`lmscope lie-check`: the truth score of a stated answer under a saved probe."""

    text: str
    '''e.g. "Q: What is the capital of France? A: Berlin."'''
    probe: str
    """probe folder (from `lmscope probe train`)"""
    model: str | None = None
    """model (default: the probe's own)"""
    device: str = "cpu"
    """torch device"""


def answer_start(lm: LanguageModel, text: str, ids: list[int]) -> int:
    """Index of the first answer token in ids (BOS included): after the last 'A:' marker, else the
    last token."""
    cut = max((text.rfind(m) + len(m) for m in ANSWER_MARKERS if m in text), default=-1)
    if cut < 0:
        return len(ids) - 1
    n_prefix = len(tokenize(lm, [text[:cut]])[0])
    return min(n_prefix, len(ids) - 1)


def lie_check(lm: LanguageModel, probe: Probe, text: str) -> LieCheck:
    ids = tokenize(lm, [text])[0]
    acts = token_acts(lm, ids, probe.hook)  # [pos, d_model]
    p = probe.probs(acts)  # [pos]
    start = answer_start(lm, text, ids)
    ans = p[start:]
    cut = max((text.rfind(m) + len(m) for m in ANSWER_MARKERS if m in text), default=-1)
    truth_last = float(p[-1])
    skip = 1 if lm.bos_token_id is not None else 0  # the BOS position is not shown
    return LieCheck(
        text=text,
        answer=text[cut:].strip() if cut >= 0 else text,
        truth_last=truth_last,
        truth_answer_mean=float(ans.mean()),
        threshold=probe.threshold,
        threshold_format=probe.threshold_format,
        contradiction=truth_last < probe.threshold,
        tokens=lm.to_str_tokens(ids)[skip:],
        per_token=[round(float(v), 4) for v in p[skip:]],
    )


__all__ = ["LieCheck", "LieCheckConfig", "answer_start", "lie_check"]
