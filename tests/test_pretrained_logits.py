"""Logit effects in bounded memory on large vocabularies (Gemma 3: 262,144 tokens).

Published dictionaries for Gemma 3 bring its 262k vocabulary into the atlas build; a fixed
4,096-row chunk would hold 4.3 GB of logits. The chunk now comes from a byte budget; these tests
pin the sizing by hand and check that any chunking gives exactly the unchunked top-k.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lmscope.atlas import logits as Lg


def test_chunk_comes_from_the_budget():
    # 256 MiB of float32 logits: 268,435,456 / (4 * 262,144) = 256 rows on Gemma 3's vocab,
    # 268,435,456 / (4 * 49,152) = 1365.3 -> 1,365 rows on SmolLM2's.
    assert Lg.LOGIT_BUDGET == 268_435_456
    assert Lg.logit_chunk(262_144) == 256
    assert Lg.logit_chunk(49_152) == 1365
    assert Lg.logit_chunk(10**12) == 1  # never zero rows


def _lm(vocab: int, d: int, dtype):
    gen = torch.Generator().manual_seed(0)
    emb = torch.nn.Embedding(vocab, d).to(dtype)
    emb.weight.data.copy_(torch.randn(vocab, d, generator=gen).to(dtype))
    model = SimpleNamespace(get_output_embeddings=lambda: emb)
    return SimpleNamespace(model=model, hooks=SimpleNamespace()), emb.weight.detach().float()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_equals_unchunked(dtype, monkeypatch):
    lm, W_U = _lm(600, 16, dtype)
    W_dec = torch.randn(40, 16, generator=torch.Generator().manual_seed(1))
    ref = W_dec @ W_U.t()  # [40, 600] float32, by hand
    monkeypatch.setattr(Lg, "LOGIT_BUDGET", 4 * 600 * 3)  # 3 rows per chunk
    assert Lg.logit_chunk(600) == 3
    small = Lg.logit_effects(lm, W_dec, k=5)
    whole = Lg.logit_effects(lm, W_dec, k=5, chunk=40)
    # the same tokens; values up to float32 rounding (BLAS blocks a 3-row and a 40-row product
    # differently)
    assert torch.equal(small.promoted_ids, whole.promoted_ids)
    assert torch.equal(small.suppressed_ids, whole.suppressed_ids)
    torch.testing.assert_close(small.promoted, whole.promoted, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(small.suppressed, whole.suppressed, atol=1e-5, rtol=1e-6)
    assert small.promoted_ids.tolist() == ref.topk(5, 1).indices.tolist()
    assert small.suppressed_ids.tolist() == ref.topk(5, 1, largest=False).indices.tolist()
    torch.testing.assert_close(small.promoted, ref.topk(5, 1).values, atol=1e-5, rtol=1e-5)
