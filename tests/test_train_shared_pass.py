"""Many dictionaries from one pass: the same result as one at a time, and a shuffle buffer
whose memory is set by --buffer-mb, not by the number of hook points."""

from __future__ import annotations

import random

import pytest
import torch

from lmscope.dictionaries.sources import StreamSource, TensorSource, buffer_batches_for
from lmscope.dictionaries.train_config import TrainConfig
from lmscope.dictionaries.trainer import train
from lmscope.errors import UserError

HOOKS = ["blocks.0.resid_post", "blocks.1.resid_post", "blocks.2.resid_post"]


def _contexts(lm, n: int = 400, ctx_len: int = 16, seed: int = 0):
    """A fresh iterator of random packed contexts (BOS first) over the tiny vocabulary."""
    from lmscope.models.tiny import WORDS

    r = random.Random(seed)
    text = " ".join(r.choice(WORDS) for _ in range(n * ctx_len))
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    body = ctx_len - 1
    ctxs = [
        torch.tensor([lm.bos_token_id, *ids[i : i + body]]) for i in range(0, len(ids) - body, body)
    ]
    return lambda: iter(ctxs)


def test_shared_pass_equals_each_dictionary_alone(tiny_llama, tmp_path):
    lm = tiny_llama
    g = torch.Generator().manual_seed(0)
    acts = {h: torch.randn(2048, lm.hooks[h].d, generator=g) * (i + 1) for i, h in enumerate(HOOKS)}
    kw = dict(
        width="4x",
        k=4,
        tokens=2048,
        batch_size=256,
        dead_tokens=512,
        progress=False,
        checkpoint_every=0,
        model="tiny",
    )

    def run(hooks: list[str], out: str):
        src = TensorSource({h: acts[h] for h in hooks}, batch_size=256, seed=3)
        res = train(
            TrainConfig(hooks=",".join(hooks), out=str(tmp_path / out), **kw), lm=lm, source=src
        )
        return {h: _weights(p) for h, p in res.dictionaries.items()}

    together = run(HOOKS, "all")
    for h in HOOKS:
        alone = run([h], h)[h]
        for name, w in alone.items():
            # Same tokens, same order, same seed: the other dictionaries must not leak in (no
            # shared optimizer state, RNG draws or gradient buffers).
            torch.testing.assert_close(together[h][name], w, rtol=1e-5, atol=1e-6)


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(folder / "sae_weights.safetensors")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_buffer_bytes_bounded_by_budget_not_hooks(tiny_llama, dtype):
    lm = tiny_llama
    saved = lm.model.dtype
    lm.model.to(dtype)
    try:
        points = [h for h in lm.hooks.points if h.startswith("blocks.")]
        assert len(points) >= 9
        budget_mb, batch = 0.25, 64
        sizes = {}
        for n_hooks in (1, 3, 9):
            src = StreamSource(
                lm,
                points[:n_hooks],
                corpus="unused",
                ctx_len=16,
                batch_size=batch,
                buffer_mb=budget_mb,
                model_batch=4,
                contexts=_contexts(lm),
            )
            b = next(src.batches())
            assert {h: tuple(v.shape) for h, v in b.items()} == {
                h: (batch, lm.hooks[h].d) for h in points[:n_hooks]
            }
            assert all(v.dtype == dtype for v in b.values())  # kept in the model's dtype
            # The buffer's real tensor bytes stay within the budget whatever the hook count.
            assert 0 < src.buffer_nbytes <= budget_mb * 2**20
            per_token = sum(lm.hooks[h].d for h in points[:n_hooks]) * dtype.itemsize
            # ...and it is as full as whole batches allow (never more than a batch short).
            assert src.buffer_nbytes > budget_mb * 2**20 - per_token * batch
            sizes[n_hooks] = src.buffer_batches
        assert sizes[1] > sizes[3] > sizes[9] >= 1  # more hooks: fewer tokens, same bytes
    finally:
        lm.model.to(saved)


def test_buffer_budget_arithmetic_and_too_small():
    # 2 hooks x 576 wide x 2 bytes = 2,304 bytes a token; 1 MiB / (2304 x 64) = 7.1 -> 7 batches.
    assert buffer_batches_for(1, [576, 576], 64, 2) == 7
    # 60 hooks: 69,120 bytes a token; 8 MiB / (69120 x 64) = 1.9 -> 1 batch.
    assert buffer_batches_for(8, [576] * 60, 64, 2) == 1
    with pytest.raises(UserError, match="--buffer-mb"):
        buffer_batches_for(1, [576] * 60, 4096, 2)  # 60 hooks of one 4096 batch need 270 MiB


def test_whole_model_defaults(tiny_llama):
    from lmscope.dictionaries.train_config import (
        WHOLE_MODEL_LR_MULT,
        default_lr,
        whole_model_defaults,
    )

    cfg = whole_model_defaults(tiny_llama, out="x")
    d = tiny_llama.d_model
    assert cfg.transcode and cfg.skip and cfg.hooks == "blocks.*.mlp_in" and cfg.out == "x"
    assert int(cfg.width) == 4 * d and cfg.k == 32
    # 8 x 2e-4 / sqrt(4d / 2^14), worked out by hand for this width
    assert cfg.lr == pytest.approx(WHOLE_MODEL_LR_MULT * 2e-4 / (4 * d / 16384) ** 0.5)
    assert cfg.lr == pytest.approx(WHOLE_MODEL_LR_MULT * default_lr(4 * d))
    assert cfg.dtype == cfg.model_dtype and cfg.dtype in ("bfloat16", "float32")
