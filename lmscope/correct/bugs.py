"""A bug described as data: a JSONL file of prompts with the unwanted and the wanted behaviour.

One JSON object per line:

    {"prompt": "Q: What is the capital of Australia?\\nA:", "bad": " Sydney", "good": " Canberra"}
    {"prompt": "Write a poem about rain.", "chat": true, "group": "poems"}
    {"prompt": "What is the capital of Vietnam?", "answer": "Hanoi", "chat": true}

- pairs: `bad` and `good` are continuations; the bad behaviour is that the model finds the bad
  one likelier, log p(bad | prompt) > log p(good | prompt), teacher-forced.
- prompt only: a behaviour scorer (e.g. `--scorer repetition`) judges the model's greedy
  continuation; `answer` gives the right answer to scorers that need one (`missed_answer`).
- `chat`: wrap the prompt in the tokenizer's chat template (a user turn) first.
- `group`: lines sharing a group land on the same side of the fit / held-out split, so a fix
  is never judged on a near-copy of a prompt it was fitted on (default: the prompt itself).

The split is seeded and deterministic: a group's side depends only on its text and the seed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..errors import UserError

FIELDS = {"prompt", "bad", "good", "group", "chat", "answer"}


@dataclass(frozen=True)
class BugCase:
    prompt: str
    bad: str | None = None
    good: str | None = None
    group: str = ""
    chat: bool = False
    answer: str | None = None
    """prompt-only lines: the right answer, for scorers that judge against it (missed_answer)"""

    @property
    def key(self) -> str:
        return self.group or self.prompt


@dataclass(frozen=True)
class BugSet:
    cases: tuple[BugCase, ...]
    mode: Literal["pairs", "scorer"]
    source: str = ""

    def __len__(self) -> int:
        return len(self.cases)


def load_bugs(path: str | Path) -> BugSet:
    """Read and check a bug file; every problem is one line naming the file and line."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"bug file {p} does not exist; write one prompt per line as JSONL")
    cases: list[BugCase] = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(
                f"{p}:{n}: not valid JSON ({e.msg}); one JSON object per line"
            ) from None
        if not isinstance(obj, dict):
            raise UserError(f'{p}:{n}: expected a JSON object with a "prompt"')
        extra = set(obj) - FIELDS
        if extra:
            fields = ", ".join(sorted(FIELDS))
            raise UserError(f"{p}:{n}: unknown field {sorted(extra)[0]!r}; fields are {fields}")
        prompt = obj.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise UserError(f'{p}:{n}: "prompt" must be a non-empty string')
        bad, good = obj.get("bad"), obj.get("good")
        if (bad is None) != (good is None):
            raise UserError(f'{p}:{n}: give both "bad" and "good" continuations, or neither')
        for name, v in (("bad", bad), ("good", good)):
            if v is not None and (not isinstance(v, str) or not v):
                raise UserError(f'{p}:{n}: "{name}" must be a non-empty string')
        if bad is not None and bad == good:
            raise UserError(f'{p}:{n}: "bad" and "good" are the same text')
        answer = obj.get("answer")
        if answer is not None and (not isinstance(answer, str) or not answer.strip()):
            raise UserError(f'{p}:{n}: "answer" must be a non-empty string')
        if answer is not None and bad is not None:
            raise UserError(
                f'{p}:{n}: "answer" is for prompt-only lines (a scorer judges the continuation '
                "against it); a line with bad/good needs none"
            )
        chat = obj.get("chat", False)
        if not isinstance(chat, bool):
            raise UserError(f'{p}:{n}: "chat" must be true or false')
        cases.append(BugCase(prompt, bad, good, str(obj.get("group", "") or ""), chat, answer))
    if not cases:
        raise UserError(f"bug file {p} has no prompts; write one JSON object per line")
    kinds = {c.bad is not None for c in cases}
    if len(kinds) > 1:
        raise UserError(
            f"{p} mixes lines with bad/good continuations and lines without; use one kind per file"
        )
    return BugSet(tuple(cases), "pairs" if kinds == {True} else "scorer", str(p))


def _side(key: str, seed: int) -> float:
    h = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def split(bugs: BugSet, *, heldout: float = 0.5, seed: int = 0) -> tuple[BugSet, BugSet]:
    """(fit, held-out) by group; each side has at least one group."""
    if not 0 < heldout < 1:
        raise UserError(f"--heldout must be between 0 and 1 (got {heldout})")
    keys = sorted({c.key for c in bugs.cases}, key=lambda k: _side(k, seed))
    if len(keys) < 2:
        raise UserError(
            f"{bugs.source or 'the bug file'} has one group only; a fix needs fit and held-out "
            "prompts: add prompts (or groups)"
        )
    n_held = min(len(keys) - 1, max(1, round(heldout * len(keys))))
    held = set(keys[:n_held])
    fit = tuple(c for c in bugs.cases if c.key not in held)
    out = tuple(c for c in bugs.cases if c.key in held)
    return BugSet(fit, bugs.mode, bugs.source), BugSet(out, bugs.mode, bugs.source)


__all__ = ["BugCase", "BugSet", "load_bugs", "split"]
