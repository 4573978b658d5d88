"""Prompts for the LLM explainer and judges (written for lmscope; delphi-style token marking).

Active tokens are marked <<like this>> when above 0.3 x the example's max (Paulo et al. 2024).
"""

from __future__ import annotations

from ..atlas.db import Example, FeatureProfile
from .split import token_key, window_text

MARK_FRACTION = 0.3
SYSTEM = (
    "You label features of a language model. Each example is text where the feature is active on "
    "the "
    "tokens marked <<like this>>. Reply with a short label (under 8 words) naming what the marked "
    "tokens "
    "have in common, nothing else."
)


def mark(e: Example, fraction: float = MARK_FRACTION) -> str:
    peak = max(e.acts) if e.acts else 0.0
    out = []
    for t, a in zip(e.tokens, e.acts):
        if t.startswith("<") and t.endswith(">") and len(t) < 16 and " " not in t:
            continue
        out.append(f"<<{t}>>" if peak > 0 and a >= fraction * peak else t)
    joined = "".join(out)
    return joined if " " in "".join(e.tokens) else " ".join(out)


def explainer_messages(p: FeatureProfile, shown: list[Example], n_examples: int = 12) -> list[dict]:
    lines = [f"Example {i + 1}: {mark(e)}" for i, e in enumerate(shown[:n_examples])]
    says = ", ".join(repr(token_key(x.token)) for x in p.promoted[:5])
    if says:
        lines.append(f"Tokens this feature makes more likely next: {says}")
    lines.append("Label:")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n".join(lines)}]


def clean_label(text: str) -> str:
    """First non-empty line, without a 'Label:' prefix or quotes; '' when nothing usable."""
    for line in text.strip().splitlines():
        line = line.strip().removeprefix("Label:").strip().strip("\"'` *")
        if line:
            return line[:120]
    return ""


def detection_messages(label: str, e: Example) -> list[dict]:
    return [
        {"role": "system", "content": "Answer only Yes or No."},
        {
            "role": "user",
            "content": f"Feature: {label}\nText: {window_text(e)}\n"
            "Does this text contain what the feature describes? Yes or No:",
        },
    ]


def fuzzing_messages(label: str, marked: str) -> list[dict]:
    return [
        {"role": "system", "content": "Answer only Yes or No."},
        {
            "role": "user",
            "content": f"Feature: {label}\nText with some tokens marked <<like this>>: {marked}\n"
            "Are the marked tokens ones the feature describes? Yes or No:",
        },
    ]


def parse_yes_no(text: str) -> bool | None:
    t = text.strip().lower()
    if t.startswith("yes"):
        return True
    if t.startswith("no"):
        return False
    return None
