"""The model's own short answers: batched greedy generation, the answer cut, and its token span.

    rows = [chat_ids(lm, system, question, example=(q, a)) for ...]   # prompt token ids
    answers = generate_answers(lm, rows, max_new_tokens=20)           # [Answer(text, tokens,
    start, stop)]

Generation is greedy over left-padded batches with an attention mask, so every
prompt ends at the same position and HF `generate` derives each row's
positions from the mask; a batch gives the same answers as one prompt at a
time (tested). A small model asked for "one short phrase" often goes on after
it, so the answer is cut at its first newline or sentence end, and the probe
later reads exactly the tokens of that cut answer (`Answer.start:Answer.stop`
of the generated ids), never the prompt or what followed the cut.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..models.runtime import run
from .activations import batches, pad_id

if TYPE_CHECKING:
    from ..models import LanguageModel

# A sentence ends at . ! ? followed by whitespace or the end ("U.S." is not cut after "U.").
SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


def chat_ids(
    lm: LanguageModel, system: str, user: str, example: tuple[str, str] | None = None
) -> list[int]:
    """Prompt token ids: the model's chat template (system, optional worked example, user turn), or
    a
    plain "Q: ... A:" prompt for a model without one."""
    tok = lm.tokenizer
    if getattr(tok, "chat_template", None):
        msgs = [{"role": "system", "content": system}]
        if example:
            msgs += [
                {"role": "user", "content": example[0]},
                {"role": "assistant", "content": example[1]},
            ]
        msgs.append({"role": "user", "content": user})
        text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        return tok(text, add_special_tokens=False)["input_ids"]
    shot = f"Q: {example[0]}\nA: {example[1]}\n" if example else ""
    ids = tok(f"{system}\n{shot}Q: {user}\nA:", add_special_tokens=False)["input_ids"]
    return ([lm.bos_token_id] if lm.bos_token_id is not None else []) + ids


def answer_span(text: str) -> tuple[int, int]:
    """(start, stop) character span of the answer in generated text: from the first non-space
    character to the first newline or sentence end (the end mark included)."""
    start = len(text) - len(text.lstrip())
    nl = text.find("\n", start)
    end = len(text) if nl < 0 else nl
    m = SENTENCE_END.search(text, start, end)
    return start, (m.end() if m else end)


def has_end(text: str) -> bool:
    """Whether a newline or sentence end follows the start of the answer (else it may be
    truncated)."""
    start = len(text) - len(text.lstrip())
    return "\n" in text[start:] or SENTENCE_END.search(text, start) is not None


def clean_answer(text: str) -> str:
    """The answer as a phrase: the cut span without surrounding spaces or its final end mark."""
    start, stop = answer_span(text)
    return text[start:stop].strip().rstrip(".!?").strip()


@dataclass
class Answer:
    text: str
    """The cut answer as a phrase ("" when the model said nothing usable)."""
    generated: list[int]
    """Every generated token id up to the first EOS (what `generate` returned, uncut)."""
    start: int
    stop: int
    """generated[start:stop] are the answer's tokens: leading whitespace tokens and everything
    after the cut are excluded."""

    @property
    def tokens(self) -> list[int]:
        return self.generated[self.start : self.stop]


def cut(lm: LanguageModel, generated: list[int]) -> Answer:
    """Cut generated ids at the answer's end and find the token span that covers it."""
    dec = lm.tokenizer.decode
    text = dec(generated)
    cstart, cstop = answer_span(text)
    answer = clean_answer(text)
    if not answer:
        return Answer("", generated, 0, 0)
    # Prefix decodes give each token's end offset in the text (byte-level BPE: decode is a prefix
    # map).
    ends = [len(dec(generated[:k])) for k in range(1, len(generated) + 1)]
    first = next(
        i for i, e in enumerate(ends) if e > cstart
    )  # first token reaching past the whitespace
    stop = next((k + 1 for k, e in enumerate(ends) if e >= cstop), len(generated))
    return Answer(answer, generated, first, max(stop, first + 1))


@torch.no_grad()
def greedy(
    lm: LanguageModel, prompts: Sequence[list[int]], max_new_tokens: int = 20
) -> list[list[int]]:
    """Greedy continuations of left-padded prompts (one batch), each cut at its first EOS."""
    pid = pad_id(lm)
    n = max(len(p) for p in prompts)
    toks = torch.full((len(prompts), n), pid, dtype=torch.long)
    mask = torch.zeros((len(prompts), n), dtype=torch.long)
    for i, p in enumerate(prompts):  # left padding: every prompt ends at position n - 1
        toks[i, n - len(p) :] = torch.tensor(p)
        mask[i, n - len(p) :] = 1
    eos = lm.tokenizer.eos_token_id
    out = lm.model.generate(
        toks.to(lm.device),
        attention_mask=mask.to(lm.device),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=pid,
        eos_token_id=eos,
    )  # [batch, n + new]
    rows = []
    for r in out[:, n:].tolist():
        rows.append(r[: r.index(eos)] if eos in r else r)
    return rows


def generate_answers(
    lm: LanguageModel,
    prompts: Sequence[list[int]],
    *,
    max_new_tokens: int = 20,
    batch_size: int = 16,
    progress: bool = False,
) -> list[Answer]:
    """Greedy short answers to each prompt, cut at the first newline or sentence end."""
    # Similar lengths share a batch (little padding); the order is restored at the end.
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[Answer | None] = [None] * len(prompts)
    starts = range(0, len(order), batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="answers", unit="batch", leave=False)
    for s in starts:
        idx = order[s : s + batch_size]
        for i, gen in zip(idx, greedy(lm, [prompts[i] for i in idx], max_new_tokens)):
            out[i] = cut(lm, gen)
    return out  # type: ignore[return-value]


@torch.no_grad()
def token_logprobs(
    lm: LanguageModel,
    rows: Sequence[list[int]],
    spans: Sequence[tuple[int, int]],
    *,
    batch_size: int = 16,
) -> list[torch.Tensor]:
    """log p(token | everything before it) for row i's tokens at spans[i][0]:spans[i][1] ->
    [span_len].

    Right-padded batches with an attention mask; a span must start after position 0."""
    rows = [list(r) for r in rows]
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    out: list[torch.Tensor | None] = [None] * len(rows)
    for idx, toks, mask, _ in batches(rows, order, batch_size, pad_id(lm)):
        logits = run(lm, toks.to(lm.device), attention_mask=mask.to(lm.device), logits=True).logits
        for j, i in enumerate(idx):
            lo, hi = spans[i]
            logp = torch.log_softmax(
                logits[j, lo - 1 : hi - 1].float(), -1
            )  # [span_len, vocab]: predicts lo..hi-1
            out[i] = logp.gather(1, toks[j, lo:hi, None].to(logp.device))[:, 0].cpu()  # [span_len]
    return out  # type: ignore[return-value]


__all__ = [
    "Answer",
    "answer_span",
    "chat_ids",
    "clean_answer",
    "cut",
    "generate_answers",
    "greedy",
    "has_end",
    "token_logprobs",
]
