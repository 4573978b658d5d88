"""Batched greedy generation with a KV cache, under run-time edits: the bug hunter's sampler.

Measuring a behaviour (a repetition loop, a wrong answer) needs hundreds of generations of
~128 tokens; lmscope.steer.generate re-runs the whole sequence for every token (quadratic,
one prompt at a time), which is right for a side-by-side of one prompt but ~20x too slow
here. This loop:

1. turns each prompt into ids: `chat=True` applies the tokenizer's chat template (one user
   turn, `add_generation_prompt`, the template's own special tokens, no extra BOS), as an
   instruct model is meant to be run; otherwise BOS + the prompt, exactly as
   `LanguageModel.to_tokens` (and so steer.generate) does;
2. sorts the prompts by length and cuts batches (less padding), LEFT-pads each batch so
   every row's next token sits in the last column, with an attention mask that hides the
   pads and position ids that count real tokens only (a row's first real token is
   position 0, as it would be alone);
3. runs the prompt once, then one token per step against the cache; a finished row keeps
   receiving a pad token (its output is ignored) until every row has stopped.

The cache is valid under the edits lmscope.correct makes (ProjectOut, AddVector): they act
on every position alike, so a cached key/value equals the one a full re-run would compute. A
gated edit (edits.Gated, GatedVector) decides at each position from that position's own
activation, so the same holds.
An edit that depends on the position (steer's ActAdd at the first positions) would not be,
and must use steer.generate. The test checks this loop equals steer.generate token for
token on a tiny model, with and without an edit, for prompts of different lengths.
"""

from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch

from ..errors import UserError
from ..models.runtime import hooked

if TYPE_CHECKING:
    from ..models import LanguageModel


@dataclass(frozen=True)
class Generation:
    """One greedy continuation."""

    prompt: str
    """The prompt as the user gave it (before any chat template)."""
    text: str
    """The continuation's text (special tokens dropped)."""
    ids: list[int]
    """The continuation's token ids, the stop token excluded."""
    stopped_at_eos: bool
    """True if the model emitted a stop token; False if it ran into max_new_tokens."""

    def to_dict(self) -> dict:
        return asdict(self)


def prompt_ids(lm: LanguageModel, prompt: str, *, chat: bool = False) -> list[int]:
    """The token ids a prompt is run as (see step 1 of the module docstring)."""
    tok = lm.tokenizer
    if chat:
        if not getattr(tok, "chat_template", None):
            raise UserError(f"model {lm.name} has no chat template; run its prompts without chat")
        text = tok.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        ids = tok(text, add_special_tokens=False)["input_ids"]
    else:
        ids = lm.to_tokens(prompt)[0].tolist()
    if not ids:
        raise UserError(f"prompt {prompt!r} tokenizes to nothing")
    return ids


def stop_ids(lm: LanguageModel) -> set[int]:
    """The tokenizer's EOS and the generation config's stop tokens (e.g. a chat model's
    end-of-turn token)."""
    out: set[int] = set()
    eos = getattr(lm.tokenizer, "eos_token_id", None)
    if eos is not None:
        out.add(int(eos))
    gc = getattr(lm.model, "generation_config", None)
    g = getattr(gc, "eos_token_id", None) if gc is not None else None
    if g is not None:
        out.update(int(i) for i in (g if isinstance(g, (list, tuple)) else [g]))
    return out


def continuation_text(lm: LanguageModel, prompt: list[int], new: list[int]) -> str:
    """The text `new` adds after `prompt`, spacing included (decode(new) alone drops the space
    a word-joining decoder puts between prompt and continuation)."""
    dec = lm.tokenizer.decode
    head = dec(prompt, skip_special_tokens=True)
    full = dec(prompt + new, skip_special_tokens=True)
    return full[len(head) :] if full.startswith(head) else dec(new, skip_special_tokens=True)


@torch.no_grad()
def generate_batch(
    lm: LanguageModel,
    prompts: list[str],
    edits: dict | None = None,
    *,
    max_new_tokens: int = 128,
    chat: bool = False,
    batch_size: int = 16,
) -> list[Generation]:
    """Greedy continuations of `prompts` (in their order) under the hook `edits`
    ({hook name: function}, e.g. `ProjectOut(...).runtime(lm)`)."""
    if max_new_tokens < 0:
        raise UserError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1, got {batch_size}")
    ids = [prompt_ids(lm, p, chat=chat) for p in prompts]
    stops = stop_ids(lm)
    order = sorted(range(len(prompts)), key=lambda i: len(ids[i]))
    out: list[Generation | None] = [None] * len(prompts)
    with hooked(lm, (), edits or {}):
        for s in range(0, len(order), batch_size):
            rows = order[s : s + batch_size]
            news, ended = _greedy(lm, [ids[i] for i in rows], stops, max_new_tokens)
            for i, new, e in zip(rows, news, ended):
                out[i] = Generation(prompts[i], continuation_text(lm, ids[i], new), new, e)
    return out  # type: ignore[return-value]


def _greedy(
    lm: LanguageModel, rows: list[list[int]], stops: set[int], max_new: int
) -> tuple[list[list[int]], list[bool]]:
    """Greedy decoding of one left-padded batch -> (new ids per row, stopped at a stop token)."""
    tok = lm.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else next(iter(stops), 0)
    n, width = len(rows), max(len(r) for r in rows)
    dev = lm.device
    input_ids = torch.full((n, width), int(pad), dtype=torch.long, device=dev)  # [batch, pos]
    mask = torch.zeros((n, width), dtype=torch.long, device=dev)
    for b, r in enumerate(rows):
        input_ids[b, width - len(r) :] = torch.tensor(r, device=dev)
        mask[b, width - len(r) :] = 1
    # Real tokens count from 0 as if the row were alone; pads get 0 (they are masked anyway).
    pos = (mask.cumsum(-1) - 1).clamp(min=0)  # [batch, pos]
    news: list[list[int]] = [[] for _ in rows]
    done = [False] * n
    ended = [False] * n
    # transformers 5 renamed the cache argument and output `past_key_values` -> `cache`.
    params = inspect.signature(lm.model.forward).parameters
    key = "cache" if "cache" in params else "past_key_values"
    # Only the last position's logits are used: skip the LM head elsewhere (at prefill it
    # would be [batch, pos, vocab], 1.2 GB for 100 prompts of 60 tokens with a 49k vocab).
    keep = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
    past = None
    step_ids, step_pos = input_ids, pos
    for _ in range(max_new):
        o = lm.model(
            input_ids=step_ids,
            attention_mask=mask,
            position_ids=step_pos,
            use_cache=True,
            **{key: past},
            **keep,
        )
        past = getattr(o, key)
        nxt = o.logits[:, -1].float().argmax(-1).tolist()  # [batch]
        for b, t in enumerate(nxt):
            if done[b]:
                continue
            if t in stops:
                done[b] = ended[b] = True
            else:
                news[b].append(t)
        if all(done):
            break
        feed = [int(pad) if done[b] else nxt[b] for b in range(n)]
        step_ids = torch.tensor(feed, dtype=torch.long, device=dev)[:, None]  # [batch, 1]
        step_pos = step_pos[:, -1:] + 1
        mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype, device=dev)], 1)
    return news, ended


__all__ = ["Generation", "continuation_text", "generate_batch", "prompt_ids", "stop_ids"]
