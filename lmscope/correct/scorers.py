"""Behaviour scorers: did the bad behaviour happen in this generation? (True = yes.)

A bug file whose lines carry only a prompt names one of these (`--scorer repetition`); each is
a plain function of a `Generation` (correct/generate.py), so a rate is the mean over prompts.

- repetition: the model is stuck in a loop it does not leave. It ran into the token limit
  (no end-of-turn) AND the last tokens are a cycle: some n-gram of n = 1..20 tokens repeated
  at least 3 times back to back at the very end (the last copy may be cut short by the
  limit), covering at least 8 tokens. Why this definition:
  * "Ends in a cycle": a greedy decoder is deterministic given its context, and once the
    context is a few copies of one n-gram the next copy is what it predicts; a loop at the
    end of a truncated generation is the loop that would go on to any limit. Repetition in
    the middle of a text that then moves on and ends is not this bug.
  * "Hit the limit": an answer that repeats a phrase three times and then stops (a list of
    similar items, a refrain) finished; flagging it would count style, not the bug.
  * 3 copies and >= 8 tokens: two copies happen in normal text ("very, very"), and 3-7
    identical tokens at a cut ("...", a run of spaces in code) can be formatting; 20 tokens
    is a sentence, the longest loop that fits 3 times in 128 new tokens with room to start.
- repeated_sentence: a looser, text-level loop: one sentence or line of >= 4 words occurs
  >= 3 times anywhere in the continuation (case, list numbering and markup ignored, so
  "1. **Bark**: the outer layer..." / "2. **Bark**: the outer layer..." counts). It also
  catches near-loops whose numbering changes and loops the text later leaves, and (rarely)
  a deliberate refrain in a poem.
- ends_in_cycle: the same cycle test without the token-limit condition (a diagnostic: how
  many loops the model escapes or that end at the limit by chance).
- hit_limit: the generation ran into max_new_tokens (did not stop by itself).
- empty: the model stopped at once (no token before the end of its turn).

`missed_answer(g, answer)` is the factual bug's scorer; it needs the line's expected answer, so
it is not in SCORERS (whose scorers see only the generation). On SmolLM2-135M-Instruct the
teacher-forced pair cannot stand in for it: on 25 facts the model knows but answers wrongly in
chat, the summed log-probability still prefers the right sentence over the model's own greedy
wrong one in 22 (docs/correct.md).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Callable

from .generate import Generation

MAX_PERIOD = 20
"""Longest repeated n-gram (tokens) the cycle test looks for."""
MIN_COPIES = 3
"""Back-to-back copies of the n-gram at the end of the text (the last one may be partial)."""
MIN_SPAN = 8
"""Fewest tokens the repeated tail must cover."""


def tail_cycle(ids: list[int], max_period: int = MAX_PERIOD) -> tuple[int, int] | None:
    """The shortest period n (<= max_period) with which the end of `ids` repeats at least
    MIN_COPIES times over at least MIN_SPAN tokens, as (n, length of the periodic tail); or None.

    The periodic tail of period n is the longest suffix with ids[j] == ids[j - n] for every
    j in it past its first n tokens, so its length is n + (that run); copies = length / n.
    """
    L = len(ids)
    for n in range(1, max_period + 1):
        run = 0
        j = L - 1
        while j - n >= 0 and ids[j] == ids[j - n]:
            run += 1
            j -= 1
        span = run + n
        if span >= MIN_COPIES * n and span >= MIN_SPAN and span <= L:
            return n, span
    return None


def ends_in_cycle(g: Generation) -> bool:
    return tail_cycle(g.ids) is not None


def hit_limit(g: Generation) -> bool:
    return not g.stopped_at_eos


def repetition(g: Generation) -> bool:
    return hit_limit(g) and ends_in_cycle(g)


SENTENCE_MIN_WORDS = 4
"""Shortest sentence the repeated_sentence scorer counts (shorter ones repeat in normal text)."""


def _sentences(text: str) -> list[str]:
    parts = re.split(r"[.!?]+(?:\s|$)|\n+", text)
    out = []
    for p in parts:
        p = re.sub(r"^\s*(?:\d+[.)]|[-*#>]+)\s*", "", p)  # list numbers, bullets, headers
        p = " ".join(re.sub(r"[*_`\"]", "", p).lower().split())
        if len(p.split()) >= SENTENCE_MIN_WORDS:
            out.append(p)
    return out


def repeated_sentence(g: Generation) -> bool:
    return max(Counter(_sentences(g.text)).values(), default=0) >= MIN_COPIES


NUMBER_WORDS = {
    "two": "2", "three": "3", "four": "4", "six": "6", "seven": "7", "eight": "8",
    "nine": "9", "ten": "10", "eleven": "11", "twelve": "12",
}  # fmt: skip


def _norm(text: str) -> str:
    """Lower case, accents and punctuation dropped, number words as digits."""
    t = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    t = re.sub(r"[^a-z0-9 ]+", " ", t)
    return " ".join(NUMBER_WORDS.get(w, w) for w in t.split())


def mentions(text: str, answer: str) -> bool:
    """`answer` appears in `text` as whole words, a plural allowed ("mammals" for "mammal";
    "can" is not found in "cannot")."""
    return re.search(rf"\b{re.escape(_norm(answer))}(?:s|es)?\b", _norm(text)) is not None


def missed_answer(g: Generation, answer: str) -> bool:
    """The factual bug: the generation does not name `answer` (see `mentions`)."""
    return not mentions(g.text, answer)


def empty(g: Generation) -> bool:
    return g.stopped_at_eos and not g.ids


SCORERS: dict[str, Callable[[Generation], bool]] = {
    "repetition": repetition,
    "repeated_sentence": repeated_sentence,
    "ends_in_cycle": ends_in_cycle,
    "hit_limit": hit_limit,
    "empty": empty,
}
"""Name -> scorer; True means the bad behaviour happened."""


ANSWER_SCORERS: dict[str, Callable[[Generation, str], bool]] = {
    "missed_answer": missed_answer,
}
"""Name -> scorer judged against a line's "answer"; True means the bad behaviour happened."""


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval (95% by default) for a rate of k events in n trials (Wilson 1927):
    unlike the normal approximation it stays inside [0, 1] and is honest at k = 0 or k = n,
    which bug rates near 0 or 1 need."""
    if n <= 0:
        return float("nan"), float("nan")
    p = k / n
    d = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z / d * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5
    return max(0.0, centre - half), min(1.0, centre + half)


__all__ = [
    "ANSWER_SCORERS",
    "SCORERS",
    "empty",
    "ends_in_cycle",
    "hit_limit",
    "mentions",
    "missed_answer",
    "repeated_sentence",
    "repetition",
    "tail_cycle",
    "wilson",
]
