"""The metrics bench/bench_clt_vs_layers.py adds (path depth of a pruned graph, pooled held-out
FVU from per-context sums, the paired median difference), each against a hand-worked case."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from bench_clt_vs_layers import _fvu, depth, paired  # noqa: E402


def _graph():
    """2 layers, 1 position. Nodes: f0 (layer 0), f1 (layer 1), e0, e1, token t, logit l."""
    g = SimpleNamespace(
        n_layers=2,
        n_pos=1,
        n_features=2,
        n_errors=2,
        error_start=2,
        token_start=4,
        logit_start=5,
        n_nodes=6,
        features=torch.tensor([[0, 0, 7], [1, 0, 3]]),
        logit_probs=torch.tensor([1.0]),
    )
    A = torch.zeros(6, 6)  # rows = targets
    A[5, 1], A[5, 4] = 2.0, -2.0  # l <- f1, l <- t (signs do not matter: |A|)
    A[1, 0], A[1, 2] = 3.0, 1.0  # f1 <- f0, f1 <- e0
    A[0, 4] = 1.0  # f0 <- t
    return g, A


def test_depth_by_hand():
    g, A = _graph()
    d = depth(g, A)
    # Row-normalized: l: f1 .5, t .5; f1: f0 .75, e0 .25; f0: t 1.
    # Paths from l to the token: l->t (1 edge, weight .5), l->f1->f0->t (3 edges, .5*.75 = .375).
    assert d["mean_hops"] == pytest.approx((1 * 0.5 + 3 * 0.375) / (0.5 + 0.375))
    # Influence I: f1 .5, f0 .375, e0 .125, t .875; edge score B[t, s] (I_t + w_t), w_l = 1:
    # l<-f1 .5 (span 2-1), l<-t .5 (span 2-(-1)), f1<-f0 .375 (1), f1<-e0 .125 (1), f0<-t .375 (1)
    want = (0.5 * 1 + 0.5 * 3 + 0.375 + 0.125 + 0.375) / (0.5 + 0.5 + 0.375 + 0.125 + 0.375)
    assert d["mean_layer_span"] == pytest.approx(want)
    # Edges from features: l<-f1 (.5, span 1) and f1<-f0 (.375, span 1).
    assert d["feature_edge_span"] == pytest.approx(1.0)
    A[5, 0] = 2.0  # l <- f0 as well: l's row becomes f1 1/3, t 1/3, f0 1/3
    d = depth(g, A)
    # I: f1 1/3, f0 1/3 + 1/3 * .75 = .5833, t 1/3 + .5833 = .9167, e0 1/3 * .25
    # feature edges: l<-f1 1/3 (span 1), l<-f0 1/3 (span 2), f1<-f0 .75 * 1/3 (span 1)
    want = (1 / 3 + 2 / 3 + 0.25) / (1 / 3 + 1 / 3 + 0.25)
    assert d["feature_edge_span"] == pytest.approx(want)


def test_pooled_fvu_from_context_sums_by_hand():
    # One layer, d = 1. Context A holds tokens 1 and 3, context B the token 2: mean 2,
    # sum of squared deviations 1 + 1 + 0 = 2; squared errors 0.5 + 0.5 -> FVU 0.5.
    r = {
        "tok": torch.tensor([2.0, 1.0], dtype=torch.float64),
        "sq": torch.tensor([[10.0], [4.0]], dtype=torch.float64),
        "sum": torch.tensor([[[4.0]], [[2.0]]], dtype=torch.float64),
        "err_x": torch.tensor([[0.5], [0.5]], dtype=torch.float64),
    }
    assert _fvu(r, np.arange(2), "x")[0] == pytest.approx(0.5)
    # A bootstrap sample that draws context A twice: tokens 1, 3, 1, 3 -> var 4, errors 1.
    assert _fvu(r, np.array([0, 0]), "x")[0] == pytest.approx(0.25)


def test_paired_median_difference_by_hand():
    s = paired([0.5, 0.6, 0.7], [0.6, 0.9, 0.6])  # differences .1, .3, -.1 -> median .1
    assert s["median_diff_clt_minus_layers"] == pytest.approx(0.1)
    assert s["median_layers"] == pytest.approx(0.6) and s["median_clt"] == pytest.approx(0.6)
    assert s["clt_higher_count"] == 2
    assert -0.1 - 1e-9 <= s["ci95"][0] <= s["ci95"][1] <= 0.3 + 1e-9


def test_clt_splice_equals_the_clt_on_clean_inputs():
    """The bench's layer-by-layer CLT splice, fed the clean inputs, gives CrossLayerTranscoder's
    own reconstruction at every layer (non-unit scales, topk)."""
    from bench_clt_vs_layers import _CLTSplice

    from lmscope.dictionaries.clt import CLTConfig, CrossLayerTranscoder

    L, d = 4, 6
    clt = CrossLayerTranscoder(CLTConfig(n_layers=L, d_model=d, d_sae=10, k=3, seed=2))
    x = torch.randn(L, 2, 5, d) * torch.tensor([1.0, 7.0, 0.2, 3.0])[:, None, None, None]
    t = torch.randn(L, 10, d) * 4
    clt.init_from_data(x.flatten(1, 2), t)
    with torch.no_grad():
        clt.W_enc.mul_(30)
        want = clt(x.flatten(1, 2)).view(L, 2, 5, d)
        sp = _CLTSplice(clt)
        got = torch.stack([sp.out(i, x[i]) for i in range(L)])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
