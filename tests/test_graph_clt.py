"""Attribution graphs over a cross-layer transcoder (CLT) on a tiny real model: the replacement
forward is exact, every CLT feature's edges predict its intervention (through all the layers it
writes to), and the graph JSON and scores work."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from lmscope.dictionaries.clt import CLTConfig, CrossLayerTranscoder
from lmscope.errors import UserError
from lmscope.models.tiny import tiny_model
from lmscope.trace import build_graph, graph_json, graph_scores, prune, replacement
from lmscope.trace.graph import feature_input, logit_input

sys.path.insert(0, str(Path(__file__).parent))

PROMPT = "the cat sat on the big red house"


def random_clt(lm, d_sae=48, k=4, arch="topk"):
    clt = CrossLayerTranscoder(
        CLTConfig(n_layers=lm.n_layers, d_model=lm.d_model, d_sae=d_sae, arch=arch, k=k, seed=1)
    )
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        clt.W_enc.normal_(0, 1 / lm.d_model**0.5, generator=g)
        clt.b_enc.normal_(0, 0.1, generator=g)
        clt.b_dec.normal_(0, 0.01, generator=g)
        for w in clt.W_dec:
            w.mul_(0.3)
        clt.act_scale_in.fill_(1.3)  # raw units must be used, not the normalized ones
        clt.act_scale_out.fill_(0.7)
        if clt.threshold is not None:
            clt.threshold.fill_(0.05)
    return clt.eval()


@pytest.fixture(scope="module")
def setup():
    lm = tiny_model("llama", n_layers=3)
    clt = random_clt(lm)
    return lm, clt, build_graph(lm, clt, PROMPT, batch_size=16)


@pytest.mark.parametrize("arch", ["topk", "jumprelu"])
def test_clt_replacement_forward_is_exact(arch):
    lm = tiny_model("llama", n_layers=3)
    clt = random_clt(lm, arch=arch)
    toks = lm.to_tokens(PROMPT)
    ref = lm.model(toks).logits[0]
    with replacement(lm, clt, toks) as rep:
        out = rep.forward(1).logits[0]
        no_err = rep.forward(
            1, errors={L: torch.zeros_like(st.error) for L, st in rep.layers.items()}
        ).logits[0]
        # The error node of layer t is the real MLP output minus the CLT's reconstruction of it,
        # which sums the writes of every layer l <= t (by hand from decoder_to).
        st = rep.layers
        t = 2
        recon = clt.b_dec[t] / clt.act_scale_out[t]
        for s_ in range(t + 1):
            recon = recon + st[s_].acts @ clt.decoder_to(s_, t)
        mlp_out = st[t].error + recon
    assert (out - ref).abs().max() < 1e-4
    assert (no_err - ref).abs().max() > 1e-3
    assert torch.allclose(
        mlp_out, st[t].error + clt.decode(torch.stack([st[i].acts for i in range(3)]))[t], atol=1e-5
    )
    assert all(p.requires_grad for p in lm.model.parameters())


def test_every_clt_edge_predicts_its_intervention(setup):
    """Zeroing a CLT feature (an input of the replacement model) removes its writes to every
    later layer; each target's input moves by minus the edge, exactly (the frozen model is
    linear). Error nodes and tokens too."""
    lm, clt, g = setup
    A = g.adjacency
    tol = 1e-4 * float(A.abs().max()) + 1e-5
    toks = lm.to_tokens(PROMPT)
    with replacement(lm, clt, toks) as rep:
        base = rep.forward(1)

        def check(run, col):
            for li, tok in enumerate(g.logit_tokens):
                actual = float(logit_input(rep, run, tok) - logit_input(rep, base, tok))
                assert abs(actual + float(A[g.logit_start + li, col])) < tol
            for ti in range(g.n_features):
                L, p, f = g.features[ti].tolist()
                actual = float(feature_input(rep, run, L, p, f) - feature_input(rep, base, L, p, f))
                assert abs(actual + float(A[ti, col])) < tol, (ti, col)

        layer0 = [i for i in range(g.n_features) if g.features[i, 0] == 0]
        for si in layer0[::6] + list(range(0, g.n_features, 11)):
            L, p, f = g.features[si].tolist()
            acts = rep.layers[L].acts.clone()[None]
            acts[0, p, f] = 0.0
            check(rep.forward(1, acts={L: acts}), si)
        for L, p in [(0, 3), (2, 7)]:
            err = rep.layers[L].error.clone()
            err[p] = 0
            check(rep.forward(1, errors={L: err}), g.error_index(L, p))
        emb = rep.embed.clone()
        emb[2] = 0
        check(rep.forward(1, embed=emb), g.token_start + 2)
    # A layer-0 feature reaches a layer-2 feature at the same position directly (its decoder
    # into layer 1 and 2 is an edge, not a path through error nodes): some such edge is
    # non-zero, and it is not what its layer-0 write alone would give.
    l2 = [i for i in range(g.n_features) if g.features[i, 0] == 2]
    assert any(A[t, s] != 0 for t in l2 for s in layer0 if g.features[t, 1] == g.features[s, 1])


def test_clt_graph_json_and_scores(setup):
    lm, clt, g = setup
    pr = prune(g)
    data = graph_json(g, pr)
    assert data["metadata"]["lmscope"]["stats"]["dictionary"] == "clt"
    feats = [n for n in data["nodes"] if n["feature_type"] == "cross layer transcoder"]
    assert feats and all(n["lmscope_hook"] == f"blocks.{n['layer']}.mlp_in" for n in feats)
    ids = {n["node_id"] for n in data["nodes"]}
    assert all(link["source"] in ids and link["target"] in ids for link in data["links"])
    for s in (graph_scores(g), graph_scores(g, pr)):
        assert 0 <= s.replacement <= 1 and 0 <= s.completeness <= 1


def test_clt_of_another_model_is_refused():
    lm = tiny_model("llama", n_layers=3)
    clt = random_clt(tiny_model("llama", n_layers=2))
    with pytest.raises(UserError, match="this CLT has 2 layers"):
        build_graph(lm, clt, PROMPT)


def test_cli_graph_through_a_clt_folder(tmp_path, tiny_model_dir, capsys):
    """`lmscope graph ATLAS PROMPT --clt FOLDER`: the atlas gives the model, the CLT the features
    (saved and loaded in lmscope's CLT folder: raw units); the JSON says so."""
    import json

    from test_trace import make_atlas

    from lmscope.cli import main
    from lmscope.models import load_model

    model_dir = tiny_model_dir("llama", n_layers=3)
    lm = load_model(str(model_dir))
    root, _ = make_atlas(tmp_path, lm, model_dir, transcoders=False)
    clt = random_clt(lm)
    clt.save(tmp_path / "clt")
    out = tmp_path / "g.json"
    args = ["graph", str(root), PROMPT, "--clt", str(tmp_path / "clt"), "--out", str(out)]
    assert main([*args, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    meta = json.loads(out.read_text())["metadata"]["lmscope"]
    assert meta["stats"]["dictionary"] == "clt" and summary["nodes"] == meta["n_nodes"]
    # Same graph as in-process on the loaded CLT (the save folds the scales into the weights).
    g = build_graph(lm, CrossLayerTranscoder.load(tmp_path / "clt"), PROMPT)
    assert meta["active_features"] == g.stats["active_features"]
    assert summary["replacement_score"] == pytest.approx(graph_scores(g).replacement, abs=1e-5)
    assert main([*args, "--force", "--max-memory-gb", "0.000001"]) == 2
    assert "needs about" in capsys.readouterr().err
