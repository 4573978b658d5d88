"""Generate with and without interventions, side by side, and the change in target probabilities.

A plain loop re-running the whole sequence for every new token (no KV cache): edits that
act on fixed positions (ActAdd adds at the first positions) then apply the same way at
every step, and for the short generations steering is used for (tens of tokens on a
~100M-parameter model) the quadratic cost is small. Greedy by default; with a
temperature, sampling uses one seeded generator per run so both runs draw the same
random numbers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import torch

from ..models.runtime import hooked

if TYPE_CHECKING:
    from ..models import LanguageModel


@dataclass
class Comparison:
    prompt: str
    unsteered: str
    steered: str
    interventions: list[str]
    targets: list[dict] = field(default_factory=list)
    """[{token, id, p_unsteered, p_steered}] next-token probabilities right after the prompt."""
    next_tokens: list[dict] = field(default_factory=list)
    """The same rows for the `top` most likely next tokens of either run (most likely first)."""
    vector: dict | None = None
    """The steering vector used (SteeringVector.to_dict() + coeff), if any."""

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def generate(
    lm: LanguageModel,
    prompt: str,
    edits: dict | None = None,
    *,
    max_new_tokens: int = 30,
    temperature: float = 0.0,
    seed: int = 0,
) -> tuple[str, torch.Tensor]:
    """(continuation text, next-token probabilities [vocab] after the prompt) under `edits`."""
    toks = lm.to_tokens(prompt)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    first_probs = None
    eos = getattr(lm.tokenizer, "eos_token_id", None)
    new: list[int] = []
    with hooked(lm, (), edits or {}):
        for _ in range(max_new_tokens):
            logits = lm.model(toks, use_cache=False).logits[0, -1].float()
            probs = torch.softmax(logits, -1)
            if first_probs is None:
                first_probs = probs.cpu()
            if temperature > 0:
                nxt = int(
                    torch.multinomial(
                        torch.softmax(logits / temperature, -1).cpu(), 1, generator=gen
                    )
                )
            else:
                nxt = int(logits.argmax())
            if nxt == eos:
                break
            new.append(nxt)
            toks = torch.cat([toks, torch.tensor([[nxt]], device=toks.device)], 1)
    if first_probs is None:  # max_new_tokens == 0
        with hooked(lm, (), edits or {}):
            first_probs = torch.softmax(
                lm.model(toks, use_cache=False).logits[0, -1].float(), -1
            ).cpu()
    return _continuation(lm, toks[0, : toks.shape[1] - len(new)].tolist(), new), first_probs


def _continuation(lm: LanguageModel, prompt_ids: list[int], new: list[int]) -> str:
    """The text the new tokens add after the prompt, spacing included.

    decode(new) alone drops the space between prompt and continuation for tokenizers that
    join words with spaces at decode time (WordLevel, SentencePiece's leading-space strip);
    decoding prompt + new and removing the decoded prompt keeps it.
    """
    dec = lm.tokenizer.decode
    head = dec(prompt_ids, skip_special_tokens=True)
    full = dec(prompt_ids + new, skip_special_tokens=True)
    return full[len(head) :] if full.startswith(head) else dec(new)


def compare(
    lm: LanguageModel,
    prompt: str,
    edits: dict,
    *,
    interventions: list[str] | None = None,
    max_new_tokens: int = 30,
    temperature: float = 0.0,
    seed: int = 0,
    targets: list[int] | None = None,
    top: int = 5,
) -> Comparison:
    """Unsteered and steered continuations of `prompt`, target-token and top next-token
    probabilities."""
    base, p0 = generate(
        lm, prompt, None, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed
    )
    steer, p1 = generate(
        lm, prompt, edits, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed
    )

    def row(t: int) -> dict:
        return {
            "token": lm.tokenizer.decode([t]),
            "id": t,
            "p_unsteered": float(p0[t]),
            "p_steered": float(p1[t]),
        }

    nxt: list[int] = []
    if top > 0:
        cand = set(p0.topk(top).indices.tolist()) | set(p1.topk(top).indices.tolist())
        nxt = sorted(cand, key=lambda t: -max(float(p0[t]), float(p1[t])))
    return Comparison(
        prompt,
        base,
        steer,
        interventions or [],
        [row(t) for t in (targets or [])],
        [row(t) for t in nxt],
    )
