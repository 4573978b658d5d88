"""Logit effects: which output tokens a feature's decoder direction promotes and suppresses.

effect[f, v] = (W_dec[f] * g) . W_U[v], where g is the final norm's weight (Gemma-style norms
scale by 1 + weight). The norm's 1/rms factor depends on the whole residual, so it is frozen to
1: this is the direct path of the feature through the unembedding as in SAEDashboard and
Neuronpedia ("logit weight distribution"), up to the positive per-token scale, which changes no
ranking within a feature. Transcoders write to mlp_out, which is also residual space.

One batched matmul over chunks of features: [chunk, d] @ [d, vocab] -> topk on both sides. The
chunk is sized from a memory budget (LOGIT_BUDGET bytes of float32 logits), not a fixed row
count: a fixed 4,096 rows is 0.8 GB of logits on SmolLM2's 49k vocabulary but 4.3 GB on Gemma
3's 262k, so peak memory would grow with the vocabulary. Measured on a 262,144 x 640 float32
unembedding with 2,304 rows (bench/bench_logit_memory.py, bench/results/logit_memory.txt, two
runs each, shared machine): the budget adds 524 MB of RSS, 4,096 rows added 2,312-2,317 MB, same
top tokens, CPU 13.0-13.6 s against 12.1-12.7 s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

if TYPE_CHECKING:
    from ..models import LanguageModel


class LogitEffects(NamedTuple):
    promoted_ids: Tensor  # [F, k] token ids, largest effect first
    promoted: Tensor  # [F, k]
    suppressed_ids: Tensor  # [F, k] most negative first
    suppressed: Tensor  # [F, k]


def final_norm_gain(lm: LanguageModel) -> Tensor | None:
    """[d_model] the final norm's multiplicative weight (None when the model has none)."""
    norm = getattr(lm.hooks, "final_norm", None)
    w = getattr(norm, "weight", None)
    if w is None:
        return None
    w = w.detach().float()
    if "gemma" in type(norm).__name__.lower():  # Gemma RMSNorm multiplies by (1 + weight)
        w = 1.0 + w
    return w


SCREEN = 64
"""Candidates per row kept by the bfloat16 screen before the exact float32 top-k."""
LOGIT_BUDGET = 256 * 2**20
"""Bytes of [chunk, vocab] float32 logits held at once (the bfloat16 screen holds half)."""


def logit_chunk(vocab: int, budget: int | None = None) -> int:
    """Feature rows per chunk so that [rows, vocab] float32 logits fit in `budget` bytes
    (default LOGIT_BUDGET)."""
    return max(1, (budget or LOGIT_BUDGET) // (4 * max(1, vocab)))


@torch.no_grad()
def logit_effects(
    lm: LanguageModel, W_dec: Tensor, k: int = 10, chunk: int | None = None
) -> LogitEffects | None:
    """Top-k promoted and suppressed tokens for every decoder row W_dec [F, d_model].

    With a bfloat16 model the [F, vocab] product is screened in bfloat16 (the product alone takes
    1/4.7 of the float32 time for 2,304 rows x 49k tokens on an AVX-512-bf16 CPU) and only the
    SCREEN best candidates per row and side are scored again in float32: values are float32, and
    a true top-k token is missed only if bf16 rounding moves it past SCREEN - k others.
    chunk: feature rows per matmul (default: logit_chunk(vocab), LOGIT_BUDGET of logits)."""
    W_out = lm.model.get_output_embeddings().weight.detach()  # [vocab, d_model]
    vocab = W_out.shape[0]
    if W_dec.shape[1] != W_out.shape[1]:
        return None
    gain = final_norm_gain(lm)
    k = min(k, vocab)
    screen = W_out.dtype == torch.bfloat16 and vocab > SCREEN
    # float32 unembedding: the weights themselves for a float32 model; a bf16 model's screen
    # gathers float32 rows of its candidates only (no float32 copy of a 262k x d matrix).
    W_U = None if screen else W_out.float()
    chunk = chunk or logit_chunk(vocab)
    outs = []
    for s in range(0, W_dec.shape[0], chunk):
        rows = W_dec[s : s + chunk].detach().float().to(W_out.device)  # [c, d]
        if gain is not None:
            rows = rows * gain.to(rows.device)
        if screen:
            rough = rows.bfloat16() @ W_out.t()  # [c, vocab] bf16
            cand = torch.cat(
                [
                    rough.topk(SCREEN, dim=1).indices,
                    rough.topk(SCREEN, dim=1, largest=False).indices,
                ],
                1,
            )  # [c, 2 * SCREEN]
            exact = torch.cat(  # float32 on the candidates, 256 rows at a time (bounded memory)
                [
                    torch.einsum("cd,cjd->cj", rows[i : i + 256], W_out[cand[i : i + 256]].float())
                    for i in range(0, len(rows), 256)
                ]
            )  # [c, 2 * SCREEN]
            up = exact[:, :SCREEN].topk(k, dim=1)
            down = exact[:, SCREEN:].topk(k, dim=1, largest=False)
            outs.append(
                (
                    cand[:, :SCREEN].gather(1, up.indices).cpu(),
                    up.values.cpu(),
                    cand[:, SCREEN:].gather(1, down.indices).cpu(),
                    down.values.cpu(),
                )
            )
            continue
        eff = rows @ W_U.t()  # [c, vocab]
        up, down = eff.topk(k, dim=1), eff.topk(k, dim=1, largest=False)
        outs.append((up.indices.cpu(), up.values.cpu(), down.indices.cpu(), down.values.cpu()))
    return LogitEffects(*(torch.cat(x) for x in zip(*outs)))
