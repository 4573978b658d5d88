"""The native TopK kernels (lmscope/dictionaries/native.c) against torch's own ops."""

from __future__ import annotations

import pytest
import torch

from lmscope.dictionaries import native
from lmscope.dictionaries.kernels import _sparse_t_matmul

pytestmark = pytest.mark.skipif(native.lib() is None, reason="no C compiler to build the kernels")


def _check_topk(pre: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    got = native.topk(pre, k)
    assert got is not None
    v, i = got
    assert v.dtype == pre.dtype and i.dtype == torch.int64 and v.shape == i.shape == (len(pre), k)
    ref = pre.float().topk(k, dim=1).values
    # the same values (as a multiset), each read from the index it names, no index twice
    assert torch.equal(v.float().sort(1, descending=True).values, ref)
    assert torch.equal(pre.gather(1, i), v)
    assert all(len(set(r)) == k for r in i.tolist())
    return v, i


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "rows,n,k",
    [(64, 2304, 32), (33, 4608, 288), (7, 100, 3), (5, 37, 20), (4, 16, 16), (3, 9, 1), (0, 50, 4)],
)
def test_topk_equals_torch(dtype, rows, n, k):
    torch.manual_seed(rows * n + k)
    _check_topk(torch.randn(rows, n).to(dtype), k)


def test_topk_strided_rows_ties_and_special_values():
    torch.manual_seed(0)
    wide = torch.randn(16, 700)
    _check_topk(wide[:, 13:613], 40)  # row stride 700, a view
    _check_topk(torch.zeros(4, 300), 10)  # all tied
    _check_topk(torch.randint(-3, 3, (8, 500)).float(), 50)  # many ties across the bound
    # real-activation-like rows: a few huge latents in one chunk, the rest tiny
    x = torch.randn(8, 2304) * 1e-3
    x[:, 100:140] = 50 + torch.randn(8, 40)
    _check_topk(x, 32)
    ninf = torch.full((3, 200), float("-inf"))
    ninf[:, 5] = 1.0
    v, i = native.topk(ninf, 4)
    assert (i == 5).any(1).all() and torch.isinf(v).sum() == 9
    # NaN ranks above everything, as in torch.topk
    x = torch.randn(4, 300)
    x[1, 77] = x[2, 3] = float("nan")
    v, i = native.topk(x, 5)
    assert 77 in i[1].tolist() and 3 in i[2].tolist()
    assert torch.isnan(v[1]).sum() == 1 and not torch.isnan(v[0]).any()


def test_topk_same_for_any_thread_count():
    torch.manual_seed(1)
    pre = torch.randn(257, 1000).to(torch.bfloat16)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = native.topk(pre, 16)
        torch.set_num_threads(2)
        b = native.topk(pre, 16)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_topk_declines_what_it_does_not_cover():
    x = torch.randn(4, 50)
    assert native.topk(x.double(), 3) is None
    assert native.topk(x.t(), 3) is None  # columns not contiguous
    assert native.topk(x, 51) is None and native.topk(x, 0) is None
    assert native.topk(x.requires_grad_(), 3) is None


def test_sparse_products_equal_torch():
    torch.manual_seed(2)
    idx = torch.randint(0, 300, (512, 24))
    idx[0, :4] = 7  # duplicates add
    w, dense = torch.randn(512, 24), torch.randn(512, 70)
    got = native.sparse_t_matmul(idx, w, dense, 300)
    before = native._state.get("lib")
    native._state["lib"] = None  # the torch path
    try:
        ref = _sparse_t_matmul(idx, w, dense, 300)
    finally:
        native._state["lib"] = before
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert got[299].abs().sum() == 0 or (idx == 299).any()
    W, g = torch.randn(300, 70), torch.randn(512, 70)
    torch.testing.assert_close(
        native.rowdot(idx, g, W), (W[idx] * g[:, None]).sum(-1), rtol=1e-5, atol=1e-4
    )
    with pytest.raises(IndexError):
        native.sparse_t_matmul(idx, w, dense, 200)
    with pytest.raises(IndexError):
        native.rowdot(idx, g, W[:200])


def test_training_step_same_with_and_without_kernels(monkeypatch):
    """A few TopK transcoder steps (AuxK on) give the same losses and weights either way."""
    from lmscope.dictionaries.base import DictionaryConfig
    from lmscope.dictionaries.topk import TopKDictionary

    def run() -> tuple[list, torch.Tensor]:
        torch.manual_seed(3)
        d = TopKDictionary(DictionaryConfig(d_in=48, d_sae=192, k=8, d_out=40, skip=True, aux_k=16))
        opt = torch.optim.Adam(d.parameters(), lr=1e-3)
        x, y = torch.randn(256, 48), torch.randn(256, 40)
        dead = torch.zeros(192, dtype=torch.bool)
        dead[::3] = True
        losses = []
        for _ in range(4):
            t = d._train_terms(x, y, dead)
            loss = (t.recon - y).pow(2).sum(-1).mean() + t.aux_loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses, d.W_enc.detach().clone()

    a = run()
    monkeypatch.setenv("LMSCOPE_NATIVE", "0")
    assert native.topk(torch.randn(2, 9), 2) is None
    b = run()
    assert a[0] == pytest.approx(b[0], rel=1e-5)
    torch.testing.assert_close(a[1], b[1], rtol=1e-4, atol=1e-6)


def test_no_compiler_falls_back_with_one_line(monkeypatch, tmp_path, capfd):
    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setenv("LMSCOPE_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    assert native.lib() is None and native.topk(torch.randn(3, 10), 2) is None
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "training uses torch ops" in err[0]
    assert not list((tmp_path / "native").glob("*.so"))  # nothing half-built left behind


def test_decoder_upkeep_equals_torch():
    torch.manual_seed(4)
    W, g = torch.randn(300, 70), torch.randn(300, 70)
    W[5] = 0.0  # a zero row: the 1e-8 floor, no NaN
    ref_g = g.clone()
    w = W / W.norm(dim=1, keepdim=True).clamp_min(1e-8)
    ref_g -= (ref_g * w).sum(1, keepdim=True) * w
    got_g = g.clone()
    assert native.remove_parallel_(W, got_g)
    torch.testing.assert_close(got_g, ref_g, rtol=1e-5, atol=1e-5)
    assert (got_g * W).sum(1).abs().max() < 1e-4  # orthogonal to every row
    ref_W = W / W.norm(dim=1, keepdim=True).clamp_min(1e-8)
    got_W = W.clone()
    assert native.normalize_rows_(got_W)
    torch.testing.assert_close(got_W, ref_W, rtol=1e-6, atol=1e-6)
    assert not native.normalize_rows_(W.t()) and not native.remove_parallel_(W.double(), g)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_topk_with_bias_equals_the_sum(dtype):
    torch.manual_seed(5)
    pre, bias = torch.randn(50, 1000).to(dtype), torch.randn(1000) * 3
    v, i = native.topk(pre, 24, bias)
    s = pre.float() + bias
    assert v.dtype == torch.float32
    assert torch.equal(v.sort(1, descending=True).values, s.topk(24, dim=1).values)
    assert torch.equal(s.gather(1, i), v)
    assert native.topk(pre, 24, bias.double()) is None and native.topk(pre, 24, bias[:-1]) is None
