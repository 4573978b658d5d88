"""What a fix is judged by: the bug's behaviour on held-out prompts and the side effects on
general text.

- Behaviour (pairs): margin = log p(bad | prompt) - log p(good | prompt), teacher-forced, summed
  over the continuation's tokens (the continuation is tokenized on its own, so prompt and
  continuation tokens never merge). The bad-behaviour rate is the share of prompts with margin
  > 0, the good-behaviour rate the share with margin < 0 (ties count as neither).
- Behaviour (a scorer, prompt-only bug files): the model's greedy continuation (correct/
  generate.py, KV cache) judged by a scorer (correct/scorers.py); the bad-behaviour rate is the
  share of prompts where it fires, the good-behaviour rate the share where it does not.
- Knowledge (a capability check): on the probe datasets' true/false statements (cities,
  arithmetic, animal classes, Spanish words; every split: nothing in a fix is fitted on them),
  the share of (true, false) pairs of one entity where the model finds the true statement
  likelier, log p(statement | BOS). Intervals resample entities.
- General text: on held-out corpus contexts (documents never used to fit anything), the added
  loss in nats per token (edited minus original cross-entropy of the next token), the KL divergence
  KL(original || edited) of the next-token distribution per token, and next-token top-1 accuracy
  before and after. Position 0 and special tokens are left out (models/tokens.token_mask), as in
  eval. Intervals resample whole contexts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from ..models.tokens import token_mask
from ..probe.metrics import Score, bootstrap
from .bugs import BugCase


def prompt_ids(lm, case: BugCase) -> list[int]:
    """The prompt's tokens as the model sees them (BOS once; the chat template when asked)."""
    from .generate import prompt_ids as ids_of

    return ids_of(lm, case.prompt, chat=case.chat)


def _continuation_ids(lm, text: str) -> list[int]:
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        from ..errors import UserError

        raise UserError(f"continuation {text!r} tokenizes to nothing")
    return list(ids)


@torch.no_grad()
def continuation_logprobs(
    lm, prompts: Sequence[list[int]], conts: Sequence[list[int]], edits=None, *, batch_size=16
) -> Tensor:
    """[n] sum of log p(continuation token | everything before it) for each (prompt, cont)."""
    out = torch.empty(len(prompts), dtype=torch.float64)
    pad = lm.tokenizer.pad_token_id or 0
    for lo in range(0, len(prompts), batch_size):
        rows = [list(p) + list(c) for p, c in zip(prompts[lo : lo + batch_size], conts[lo:])]
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):  # right padding: positions stay 0..len-1 for every row
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        ids, mask = ids.to(lm.device), mask.to(lm.device)
        with lm.edit(edits or {}):  # the body only: the unembedding runs on the scored positions
            hidden = lm.model.base_model(ids, attention_mask=mask, use_cache=False)[0]
        chunk = list(zip(prompts[lo : lo + batch_size], conts[lo:]))
        sel = torch.cat(
            [hidden[i, len(p) - 1 : len(p) + len(c) - 1] for i, (p, c) in enumerate(chunk)]
        )
        logp = torch.log_softmax(_unembed(lm, sel).float(), -1)  # [scored positions, vocab]
        tgt = torch.tensor([t for _, c in chunk for t in c], device=logp.device)
        per = logp[torch.arange(len(tgt), device=logp.device), tgt].double().cpu()
        start = 0
        for i, (_, c) in enumerate(chunk):
            out[lo + i] = per[start : start + len(c)].sum()
            start += len(c)
    return out


def _unembed(lm, h: Tensor) -> Tensor:
    """The model's own head on final hidden states (with its final-logit soft-cap, if any)."""
    from ..models.logits import final_logit_softcap

    z = lm.model.get_output_embeddings()(h)
    c = final_logit_softcap(lm)
    return z if c is None else c * torch.tanh(z / c)


def pair_margins(lm, cases: Sequence[BugCase], edits=None) -> Tensor:
    """[n] log p(bad | prompt) - log p(good | prompt) per case (each prompt run once, its KV cache
    shared by the two continuations: shared_prompt_logprobs)."""
    prompts = [prompt_ids(lm, c) for c in cases]
    bad, good = shared_prompt_logprobs(
        lm,
        prompts,
        [
            [_continuation_ids(lm, c.bad) for c in cases],
            [_continuation_ids(lm, c.good) for c in cases],
        ],
        edits,
    )
    return bad - good


def _cache_key(lm) -> str:
    """transformers 5 renamed the cache argument `past_key_values` -> `cache`."""
    import inspect

    params = inspect.signature(lm.model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


@torch.no_grad()
def shared_prompt_logprobs(
    lm,
    prompts: Sequence[list[int]],
    conts: Sequence[Sequence[list[int]]],
    edits=None,
    *,
    batch_size: int = 16,
) -> list[Tensor]:
    """For each list of continuations in `conts` ([k][n]), [n] sums of log p(continuation token |
    everything before it): continuation_logprobs, with each batch of prompts run once and its KV
    cache shared by the k continuations (the prompt is most of the tokens of a chat bug file).

    The prompts are LEFT-padded (as generate.py does: position ids count real tokens only, the
    mask hides the pads), so the last column holds every prompt's last token, whose logits score
    the first continuation token; the continuations follow right-padded, at the positions they
    would have after their own prompt. The cache is cropped back to the prompt before the next
    continuation. Edits act on each position from its own activations (ProjectOut, AddVector,
    gated edits), so cached positions equal a full re-run's; equal to continuation_logprobs
    (tested)."""
    key = _cache_key(lm)
    outs = [torch.empty(len(prompts), dtype=torch.float64) for _ in conts]
    pad = lm.tokenizer.pad_token_id or 0
    dev = lm.device
    with lm.edit(edits or {}):
        for lo in range(0, len(prompts), batch_size):
            rows = [list(p) for p in prompts[lo : lo + batch_size]]
            n, width = len(rows), max(map(len, rows))
            ids = torch.full((n, width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, r in enumerate(rows):
                ids[i, width - len(r) :] = torch.tensor(r)
                mask[i, width - len(r) :] = 1
            ids, mask = ids.to(dev), mask.to(dev)
            pos = (mask.cumsum(-1) - 1).clamp(min=0)  # [batch, pos]
            o = lm.model.base_model(
                input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True
            )
            past = getattr(o, key, None)
            past = o.past_key_values if past is None else past
            first = torch.log_softmax(_unembed(lm, o[0][:, -1]).float(), -1)  # [batch, vocab]
            for k, cs in enumerate(conts):
                cs = [list(c) for c in cs[lo : lo + batch_size]]
                cw = max(map(len, cs))
                cid = torch.full((n, cw), pad, dtype=torch.long)
                cmask = torch.zeros_like(cid)
                for i, c in enumerate(cs):
                    cid[i, : len(c)] = torch.tensor(c)
                    cmask[i, : len(c)] = 1
                cid, cmask = cid.to(dev), cmask.to(dev)
                cpos = pos[:, -1:] + 1 + torch.arange(cw, device=dev)[None]  # [batch, cw]
                h = lm.model.base_model(
                    input_ids=cid,
                    attention_mask=torch.cat([mask, cmask], 1),
                    position_ids=cpos,
                    use_cache=True,
                    **{key: past},
                )[0]  # [batch, cw, d_model]
                past.crop(-cw)  # back to the prompt for the next continuation
                for i, c in enumerate(cs):
                    total = float(first[i, c[0]])
                    if len(c) > 1:
                        lp = torch.log_softmax(_unembed(lm, h[i, : len(c) - 1]).float(), -1)
                        tgt = torch.tensor(c[1:], device=lp.device)
                        total += float(
                            lp[torch.arange(len(c) - 1, device=lp.device), tgt].double().sum()
                        )
                    outs[k][lo + i] = total
    return outs


def generations(lm, cases: Sequence[BugCase], edits=None, *, max_new_tokens: int = 128):
    """Greedy continuations of the cases' prompts under `edits` (chat and plain prompts each
    in their own batches), in the cases' order."""
    from .generate import generate_batch

    out = [None] * len(cases)
    for chat in (False, True):
        idx = [i for i, c in enumerate(cases) if c.chat == chat]
        if idx:
            gens = generate_batch(
                lm, [cases[i].prompt for i in idx], edits, max_new_tokens=max_new_tokens, chat=chat
            )
            for i, g in zip(idx, gens):
                out[i] = g
    return out


def own_logprobs(lm, cases: Sequence[BugCase], gens, edits=None) -> Tensor:
    """[n] mean log p per token of each case's own (unedited) generation, teacher-forced under
    `edits`: how much an edit makes the model's earlier continuation less likely."""
    prompts = [prompt_ids(lm, c) for c in cases]
    conts = [list(g.ids) or [lm.tokenizer.eos_token_id or 0] for g in gens]
    lp = continuation_logprobs(lm, prompts, conts, edits)
    return lp / torch.tensor([len(c) for c in conts], dtype=torch.float64)


def rate(flags: Tensor, groups: Sequence[str], *, seed: int = 0) -> Score:
    """Share of True flags with a bootstrap interval over groups."""
    f = flags.double()
    return bootstrap(lambda idx: float(f[idx].mean()), list(groups), seed=seed)


KNOWLEDGE = ("cities", "arithmetic", "animal_class", "sp_en_trans")
"""Capability checks: the probe datasets' true/false statement pairs (lmscope/probe/datasets.py)."""


@torch.no_grad()
def statement_logprobs(lm, texts: Sequence[str], edits=None, *, batch_size: int = 32) -> Tensor:
    """[n] log p(text | BOS), summed over the text's tokens."""
    bos = [lm.bos_token_id] if lm.bos_token_id is not None else []
    ids = [lm.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    prompts = [bos or ids[i][:1] for i in range(len(ids))]
    conts = [x if bos else x[1:] for x in ids]
    return continuation_logprobs(lm, prompts, conts, edits, batch_size=batch_size)


def knowledge_pairs(
    name: str, splits: Sequence[str] | None = None
) -> tuple[list[str], list[tuple[int, int]], list[str]]:
    """(statements, (true index, false index) pairs within an entity, each pair's entity), from
    the dataset's `splits` (default: all)."""
    from ..probe.datasets import load_dataset

    ds = load_dataset(name)
    st = ds.all if splits is None else [x for s in splits for x in ds.split(s)]
    by: dict[str, dict[int, list[int]]] = {}
    for i, x in enumerate(st):
        by.setdefault(x.entity, {0: [], 1: []})[x.label].append(i)
    pairs, ents = [], []
    for e, d in by.items():
        for t in d[1]:
            for f in d[0]:
                pairs.append((t, f))
                ents.append(e)
    return [x.text for x in st], pairs, ents


def knowledge_accuracy(
    lm, edits=None, names: Sequence[str] = KNOWLEDGE, splits: Sequence[str] | None = None
) -> dict[str, Tensor]:
    """{dataset: [n_pairs] 1.0 where the model finds the true statement likelier than the false
    one of the same entity}: 2-choice knowledge, no probe involved (`splits`: entities read)."""
    out = {}
    for n in names:
        texts, pairs, _ = knowledge_pairs(n, splits)
        lp = statement_logprobs(lm, texts, edits)
        out[n] = torch.tensor([float(lp[t] > lp[f]) for t, f in pairs], dtype=torch.float64)
    return out


@dataclass(frozen=True)
class TextEffect:
    """Side effects of an edit on general (held-out) text."""

    tokens: int
    contexts: int
    loss_before: float
    loss_after: float
    added_nats: Score
    kl: Score
    accuracy_before: float
    accuracy_after: float

    def to_dict(self) -> dict:
        d = asdict(self)
        d["added_nats"], d["kl"] = self.added_nats.to_dict(), self.kl.to_dict()
        return d


@torch.no_grad()
def text_effect(lm, edits, contexts: Sequence[Tensor], *, batch_size: int = 8) -> TextEffect:
    """Added loss, KL and next-token accuracy of `edits` on contexts ([ctx_len] token tensors)."""
    ce0, ce1, kl, hit0, hit1, n = [], [], [], [], [], []
    for lo in range(0, len(contexts), batch_size):
        ids = torch.stack(list(contexts[lo : lo + batch_size])).to(lm.device)
        keep = token_mask(lm, ids)[:, 1:]
        tgt = ids[:, 1:]
        before = torch.log_softmax(lm.model(ids, use_cache=False).logits[:, :-1].float(), -1)
        with lm.edit(edits):
            after = torch.log_softmax(lm.model(ids, use_cache=False).logits[:, :-1].float(), -1)
        nll0 = -before.gather(-1, tgt[..., None])[..., 0]
        nll1 = -after.gather(-1, tgt[..., None])[..., 0]
        k = (before.exp() * (before - after)).sum(-1)
        for i in range(ids.shape[0]):
            m = keep[i]
            n.append(int(m.sum()))
            ce0.append(float(nll0[i][m].double().sum()))
            ce1.append(float(nll1[i][m].double().sum()))
            kl.append(float(k[i][m].double().sum()))
            hit0.append(float((before[i].argmax(-1) == tgt[i])[m].sum()))
            hit1.append(float((after[i].argmax(-1) == tgt[i])[m].sum()))
    N = torch.tensor(n, dtype=torch.float64)
    c0, c1, kk = (torch.tensor(v, dtype=torch.float64) for v in (ce0, ce1, kl))
    groups = list(range(len(n)))  # each context is its own unit (contexts never share a token)

    def per_token(v: Tensor):
        return lambda idx: float(v[idx].sum() / N[idx].sum())

    tokens = int(N.sum())
    return TextEffect(
        tokens=tokens,
        contexts=len(n),
        loss_before=float(c0.sum() / N.sum()),
        loss_after=float(c1.sum() / N.sum()),
        added_nats=bootstrap(per_token(c1 - c0), groups),
        kl=bootstrap(per_token(kk), groups),
        accuracy_before=float(sum(hit0) / tokens),
        accuracy_after=float(sum(hit1) / tokens),
    )


__all__ = [
    "TextEffect",
    "continuation_logprobs",
    "generations",
    "knowledge_accuracy",
    "knowledge_pairs",
    "statement_logprobs",
    "own_logprobs",
    "pair_margins",
    "prompt_ids",
    "rate",
    "shared_prompt_logprobs",
    "text_effect",
]
