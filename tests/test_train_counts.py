"""Firing frequencies (sparsity.safetensors) are counted from the codes the training steps used:
a bincount of the top-k indices already at hand, no second encode per step."""

from __future__ import annotations

import torch

from lmscope.dictionaries.io.saelens import read_sparsity
from lmscope.dictionaries.sources import TensorSource
from lmscope.dictionaries.topk import TopKDictionary, fire_counts
from lmscope.dictionaries.train_config import TrainConfig
from lmscope.dictionaries.trainer import train


def test_fire_counts_by_hand():
    # 3 tokens, k 2, 5 latents; a zero (ReLU'd) value does not fire.
    values = torch.tensor([[1.0, 0.5], [2.0, 0.0], [0.3, 0.1]])
    indices = torch.tensor([[0, 3], [3, 1], [4, 0]])
    # latent 0: tokens 0 and 2; latent 1: value 0, not fired; latent 3: tokens 0 and 1; 4: token 2
    assert fire_counts(values, indices, 5).tolist() == [2, 0, 0, 2, 1]


def test_frequencies_are_those_of_the_training_codes(tiny_llama, tmp_path, monkeypatch):
    lm = tiny_llama
    hook = "blocks.1.resid_post"
    acts = torch.randn(1024, lm.hooks[hook].d, generator=torch.Generator().manual_seed(0)) * 2
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    select = TopKDictionary._select

    def recording(self, pre):  # the code each training step selects
        codes = select(self, pre)
        seen.append((codes.values.detach().clone(), codes.indices.clone()))
        return codes

    monkeypatch.setattr(TopKDictionary, "_select", recording)
    cfg = TrainConfig(
        hooks=hook,
        width="4x",
        k=4,
        tokens=1024,
        batch_size=128,
        dead_tokens=256,  # AuxK on from step 2: its codes must not be counted
        progress=False,
        checkpoint_every=0,
        model="tiny",
        out=str(tmp_path / "run"),
    )
    res = train(cfg, lm=lm, source=TensorSource({hook: acts}, batch_size=128, seed=1))
    d_sae = 4 * lm.hooks[hook].d
    assert len(seen) == 8  # one selection per step (AuxK ranks the dead columns elsewhere)
    expect = torch.zeros(d_sae)
    for v, i in seen:  # by hand: +1 per (token, latent) with a positive value
        for tok in range(v.shape[0]):
            for j in range(v.shape[1]):
                if v[tok, j] > 0:
                    expect[i[tok, j]] += 1
    log_freq = read_sparsity(res.dictionaries[hook])  # log10(frequency + 1e-10), as SAELens
    torch.testing.assert_close(log_freq, torch.log10(expect / 1024 + 1e-10))
    assert res.metrics[hook].l0 > 0
