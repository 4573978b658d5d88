"""Residual-stream activations at each statement's last token, batched with right padding.

Statements are tokenized with BOS, right-padded into batches with an
attention mask, and each row's activation is gathered at its last real token.
Right padding leaves positions and causal attention of the real tokens
unchanged, so a batched read equals one-statement-at-a-time reads (tested).
One forward per batch captures every requested hook (`models.runtime.run`
stops after the deepest one). `span_acts` reads a span of positions per row the
same way (the tokens of a generated answer).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from ..errors import UserError
from ..models.runtime import run

if TYPE_CHECKING:
    from ..models import LanguageModel


def tokenize(lm: LanguageModel, texts: Sequence[str]) -> list[list[int]]:
    """Token ids per text (BOS first); a text that tokenizes to nothing is a one-line UserError."""
    rows = []
    for t in texts:
        ids = lm.tokenizer(t, add_special_tokens=False)["input_ids"]
        if not ids:
            raise UserError(f"statement {t!r} tokenizes to nothing; give a non-empty statement")
        bos = lm.bos_token_id
        rows.append(([bos] if bos is not None else []) + list(ids))
    return rows


def pad_batch(
    rows: list[list[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(tokens [batch, pos], attention_mask [batch, pos], lengths [batch]), right-padded."""
    n = max(len(r) for r in rows)
    toks = torch.full((len(rows), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    for i, r in enumerate(rows):
        toks[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return toks, mask, torch.tensor([len(r) for r in rows])


def pad_id(lm: LanguageModel) -> int:
    tok = lm.tokenizer
    for attr in ("pad_token_id", "eos_token_id", "bos_token_id"):
        v = getattr(tok, attr, None)
        if v is not None:
            return int(v)
    return 0


def batches(
    rows: list[list[int]],
    order: Sequence[int],
    batch_size: int,
    pid: int,
    *,
    progress: bool = False,
    desc: str = "activations",
):
    """Yield (row indices, tokens, mask, lengths) of right-padded batches taken in `order`."""
    starts = range(0, len(order), batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc=desc, unit="batch", leave=False)
    for s in starts:
        idx = list(order[s : s + batch_size])
        yield (idx, *pad_batch([rows[i] for i in idx], pid))


@torch.no_grad()
def last_token_acts(
    lm: LanguageModel,
    texts: Sequence[str],
    hooks: Sequence[str],
    *,
    batch_size: int = 32,
    progress: bool = False,
    edits: dict | None = None,
) -> dict[str, torch.Tensor]:
    """{hook: [n_texts, d_model]} float32 activations at each text's last token."""
    rows = tokenize(lm, texts)
    # Sort by length so batches carry little padding; restore the order at the end.
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    out: dict[str, list[torch.Tensor]] = {h: [] for h in hooks}
    pid = pad_id(lm)
    for idx, toks, mask, lens in batches(rows, order, batch_size, pid, progress=progress):
        res = run(
            lm,
            toks.to(lm.device),
            capture=list(hooks),
            edits=edits,
            attention_mask=mask.to(lm.device),
        )
        last = (lens - 1).to(lm.device)
        for h in hooks:
            a = res.acts[h]  # [batch, pos, d_model]
            out[h].append(
                a[torch.arange(len(idx), device=a.device), last].float().cpu()
            )  # [batch, d_model]
    inv = torch.empty(len(order), dtype=torch.long)
    inv[torch.tensor(order)] = torch.arange(len(order))
    return {h: torch.cat(v)[inv] for h, v in out.items()}


@torch.no_grad()
def token_acts(lm: LanguageModel, ids: list[int], hook: str) -> torch.Tensor:
    """[pos, d_model] activations of one token sequence at one hook."""
    res = run(lm, torch.tensor([ids], device=lm.device), capture=[hook])
    return res.acts[hook][0].float().cpu()


@torch.no_grad()
def span_acts(
    lm: LanguageModel,
    rows: Sequence[list[int]],
    spans: Sequence[tuple[int, int]],
    hook: str,
    *,
    batch_size: int = 16,
    progress: bool = False,
) -> list[torch.Tensor]:
    """Activations of token spans: row i's positions spans[i][0]:spans[i][1] -> [span_len, d_model].

    Right-padded batches with an attention mask (real tokens keep their positions and causal
    context), equal to `token_acts(lm, rows[i], hook)[a:b]` one row at a time (tested)."""
    rows = [list(r) for r in rows]
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    out: list[torch.Tensor | None] = [None] * len(rows)
    for idx, toks, mask, _ in batches(
        rows, order, batch_size, pad_id(lm), progress=progress, desc="answer tokens"
    ):
        a = run(lm, toks.to(lm.device), capture=[hook], attention_mask=mask.to(lm.device)).acts[
            hook
        ]
        for j, i in enumerate(idx):  # a: [batch, pos, d_model]
            lo, hi = spans[i]
            out[i] = a[j, lo:hi].float().cpu()  # [span_len, d_model]
    return out  # type: ignore[return-value]
