"""correct/: edits gated on a probe or a dictionary feature, truth-probe candidates, and the
choice protocol when nothing passes (tiny models)."""

from __future__ import annotations

import pytest
import torch

from lmscope.correct.bugs import BugCase, BugSet
from lmscope.correct.edits import AddVector, FeatureGate, Gated, ProbeGate
from lmscope.errors import UserError


def _relu_sae(lm, hook: str):
    from lmscope.dictionaries.base import DictionaryConfig
    from lmscope.dictionaries.registry import build

    d = build(DictionaryConfig(d_in=lm.d_model, d_sae=8, arch="relu", hook_name=hook))
    with torch.no_grad():
        g = torch.Generator().manual_seed(6)
        d.W_enc.copy_(torch.randn(lm.d_model, 8, generator=g))
        d.W_dec.copy_(torch.randn(8, lm.d_model, generator=g))
        d.b_enc.zero_()
        d.b_dec.zero_()
        d.act_scale.fill_(1.0)
        d.act_scale_out.fill_(1.0)
    return d


def test_a_gate_that_never_fires_changes_nothing_and_one_that_always_fires_is_the_edit(
    tiny_llama,
):
    lm = tiny_llama
    g = torch.Generator().manual_seed(4)
    v = AddVector(2, 3 * torch.randn(lm.d_model, generator=g))
    ids = torch.tensor([[1, 7, 9, 30, 31, 44]])
    base = lm.run(ids, logits=True).logits
    ungated = lm.run(ids, edits=v.runtime(lm), logits=True).logits
    assert not torch.allclose(base, ungated)
    d, m = torch.randn(lm.d_model, generator=g), torch.randn(lm.d_model, generator=g)
    sae = _relu_sae(lm, "blocks.1.mlp_in")
    gates = {  # (never fires, always fires)
        "probe": (
            ProbeGate("blocks.1.resid_post", d, m, 0.0, -1e9),
            ProbeGate("blocks.1.resid_post", d, m, 0.0, 1e9),
        ),
        "feature": (
            FeatureGate("blocks.1.mlp_in", 0, sae, threshold=1e9),
            FeatureGate("blocks.1.mlp_in", 0, sae, threshold=-1.0),  # ReLU acts >= 0 > -1
        ),
    }
    for never, always in gates.values():
        out = lm.run(ids, edits=Gated(v, never).runtime(lm), logits=True).logits
        torch.testing.assert_close(out, base, atol=0, rtol=0)
        out = lm.run(ids, edits=Gated(v, always).runtime(lm), logits=True).logits
        torch.testing.assert_close(out, ungated)


def test_a_probe_gate_acts_from_the_positions_whose_score_is_below_its_threshold(tiny_llama):
    lm = tiny_llama
    g = torch.Generator().manual_seed(5)
    v = AddVector(2, 3 * torch.randn(lm.d_model, generator=g))
    d, m, b = torch.randn(lm.d_model, generator=g), torch.randn(lm.d_model, generator=g), 0.3
    ids = torch.tensor([[1, 7, 9, 30, 31, 44, 12]])
    x = lm.run(ids, capture=["blocks.1.resid_post"]).acts["blocks.1.resid_post"][0].float()
    score = torch.tensor(  # by hand, element by element
        [
            sum(float((x[p, i] - m[i]) * d[i]) for i in range(lm.d_model)) + b
            for p in range(x.shape[0])
        ]
    )
    gate = ProbeGate("blocks.1.resid_post", d, m, b, 0.0)
    torch.testing.assert_close(gate.score(x[None])[0], score.float(), atol=1e-4, rtol=1e-4)
    lowest = int(score.argmin())
    thr = float(score.sort().values[:2].mean())  # exactly one position below
    base = lm.run(ids, logits=True).logits
    one = Gated(v, ProbeGate("blocks.1.resid_post", d, m, b, thr)).runtime(lm)
    out = lm.run(ids, edits=one, logits=True).logits
    assert torch.equal(out[0, :lowest], base[0, :lowest])
    assert not torch.allclose(out[0, lowest], base[0, lowest])


def test_gated_edits_are_run_time_only_and_gates_must_read_before_the_edit(tiny_llama):
    from lmscope.correct.edits import edit_tensors
    from lmscope.correct.weights import fold

    lm = tiny_llama
    v = AddVector(1, torch.ones(lm.d_model))
    z = torch.zeros(lm.d_model)
    late = Gated(v, ProbeGate("blocks.1.resid_post", z + 1, z, 0.0, 0.0))
    with pytest.raises(UserError, match="runs after the edit"):
        late.runtime(lm)
    ok = Gated(v, ProbeGate("blocks.0.resid_post", z + 1, z, 0.0, 0.0))
    with pytest.raises(UserError, match="run time"):
        fold(lm, ok)
    with pytest.raises(UserError, match="run-time-only"):
        edit_tensors(ok)


def _moon_model():
    """A tied tiny Llama with two planted things: every prompt prefers ' dog' over ' cat' (a
    layer-1 MLP bias), and the token 'moon' carries a large component along a direction s (the
    'signature' a probe can read at layer 0)."""
    from test_correct_fix import _tied_llama

    from lmscope.correct.weights import fold

    lm = _tied_llama()
    tok = lm.tokenizer
    moon = tok.convert_tokens_to_ids("moon")
    s = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        E = lm.model.get_input_embeddings().weight
        E[moon] += 0.5 * s / s.norm()  # embedding rows have norm ~0.1
        w = E[tok.convert_tokens_to_ids("dog")] - E[tok.convert_tokens_to_ids("cat")]
    return fold(lm, AddVector(1, 0.5 * w.detach() / w.norm()))


def _words(g, n):
    from test_correct_fix import WORDS

    pool = [w for w in WORDS if w != "moon"]
    return " ".join(pool[j] for j in torch.randint(0, len(pool), (n,), generator=g).tolist())


def test_a_planted_probe_gated_fix_generalises_beats_its_control_and_spares_other_text():
    """The bug shows on prompts ending in 'moon'. A probe fitted on other texts (moon last =
    'false') gates a steering vector learned from the fit prompts; the threshold is chosen on the
    fit prompts. On held-out prompts it lowers the bad rate and the margin more than the same gate
    with a random vector of the same norm; on text without 'moon' it changes nothing."""
    from lmscope.correct.diagnose import contrastive_directions, direction_edits, score_edits
    from lmscope.correct.fix import control_of
    from lmscope.correct.measure import pair_margins, text_effect
    from lmscope.correct.truth import TruthProbe, probe_gated_edits
    from lmscope.probe.activations import last_token_acts
    from lmscope.probe.registry import fit

    lm = _moon_model()
    g = torch.Generator().manual_seed(2)
    cases = [BugCase(_words(g, 3) + " moon", " dog", " cat", group=f"g{i}") for i in range(24)]
    fit_set, held = BugSet(tuple(cases[:12]), "pairs"), BugSet(tuple(cases[12:]), "pairs")
    before = pair_margins(lm, held.cases)
    assert (before > 0).all()  # the planted bug is there
    # the probe: fitted on texts that are not bug prompts
    texts = [_words(g, 4) + (" moon" if i % 2 else "") for i in range(40)]
    y = torch.tensor([0 if t.endswith("moon") else 1 for t in texts])
    x = last_token_acts(lm, texts, ["blocks.0.resid_post"])["blocks.0.resid_post"]
    probe = fit("massmean", "blocks.0.resid_post", x, y)
    tp = TruthProbe(probe, 1.0, None, "planted")
    steer = direction_edits(contrastive_directions(lm, fit_set, [1]), (2.0, 4.0, 8.0))
    vectors = [(n, e) for n, _, e, _ in steer if isinstance(e, AddVector)]
    plain = [torch.tensor([1] + lm.tokenizer(_words(g, 15))["input_ids"]) for _ in range(6)]
    props = probe_gated_edits(lm, [tp], vectors, plain)
    assert len(props) == 3 * 3 and all(k == "gated: truth probe" for *_, k in props)
    best = score_edits(lm, fit_set, props)[0]  # vector and threshold chosen on the fit prompts
    vector = best.edit.vector
    after = pair_margins(lm, held.cases, best.edit.runtime(lm))
    control = pair_margins(lm, held.cases, control_of(best.edit, 0).runtime(lm))
    assert (after > 0).double().mean() < (before > 0).double().mean()
    assert float((after - before).mean()) < float((control - before).mean()) - 0.1
    # text without the signature: the gate stays off, the ungated vector does not
    gated_fx = text_effect(lm, best.edit.runtime(lm), plain)
    ungated_fx = text_effect(lm, vector.runtime(lm), plain)
    assert gated_fx.kl.value < 1e-3 < ungated_fx.kl.value


def test_choose_reports_the_best_failed_candidate_marked_when_none_passes():
    from lmscope.correct.diagnose import Candidate
    from lmscope.correct.fix import Behaviour, choose
    from lmscope.correct.fix_config import FixConfig

    beh = Behaviour(FixConfig(bugs="x.jsonl", scorer="missed_answer"))
    before = torch.tensor([1.0, 0.0, 0.0, 0.0])  # fit bad rate 0.25
    a = Candidate("a", None, 1, -1.0, 0.50, 0.01)  # worse on fit
    b = Candidate("b", None, 1, -0.5, 0.40, 0.90)  # worse, over budget
    c = Candidate("c", None, 1, -0.2, 0.20, 0.90)  # better on fit, over budget
    chosen, shown = choose([a, b, c], beh, before, 0.05)
    assert chosen is None and shown is c
    d = Candidate("d", None, 1, 0.0, 0.20, 0.04)  # better, within budget
    e = Candidate("e", None, 1, 0.0, 0.20, 0.02)  # as good, smaller added loss
    assert choose([a, c, d, e], beh, before, 0.05) == (e, e)
    assert choose([], beh, before, 0.05) == (None, None)


# --- the truth probe in diagnose and fix ----------------------------------------------------------
from test_correct_fix import buggy  # noqa: E402,F401  (the planted dog-over-cat model, a fixture)


def test_fix_tries_truth_probe_directions_and_gates_and_verifies_each_family(buggy):  # noqa: F811
    from lmscope.correct.fix import run_fix
    from lmscope.correct.fix_config import FixConfig
    from lmscope.models import load_model

    lm = load_model(str(buggy / "model"))
    cfg = FixConfig(
        bugs=str(buggy / "bugs.jsonl"),
        model=str(buggy / "model"),
        layers="0,1",
        corpus=str(buggy / "corpus.txt"),
        ctx_len=16,
        text_tokens=150,
        max_added_nats=5.0,
        knowledge=False,
        examples=0,
        top=2,
    )
    rep, _ = run_fix(lm, cfg, progress=False)
    assert [t["hook"] for t in rep.truth_probes] == ["blocks.0.resid_post", "blocks.1.resid_post"]
    assert all(t["val_acc"] is not None and "train split" in t["source"] for t in rep.truth_probes)
    kinds = {c["kind"] for c in rep.candidates}
    assert {"bug direction", "truth probe", "gated: truth probe", "gated: bug direction"} <= kinds
    for kind in ("truth probe", "gated: truth probe"):  # the best of each family is verified
        best = next(c for c in rep.candidates if c["kind"] == kind)
        assert best["fit_added_nats"] is not None
    assert rep.status == "chosen" and rep.fix is not None


def test_diagnose_reads_a_saved_truth_probe_and_refuses_a_folder_that_is_not_one(
    buggy,  # noqa: F811
    tmp_path,
    capsys,
):
    from lmscope.cli import main
    from lmscope.models import load_model
    from lmscope.probe.artifact import save_probe
    from lmscope.probe.registry import fit

    lm = load_model(str(buggy / "model"))
    from lmscope.probe.datasets import load_dataset
    from lmscope.probe.sweep import read_split

    tr = read_split(lm, [load_dataset("cities")], "train", ["blocks.0.resid_post"], contrast=False)
    probe = fit("massmean", "blocks.0.resid_post", tr.x["blocks.0.resid_post"], tr.y)
    saved = save_probe(
        probe, tmp_path / "probe", fingerprint=lm.fingerprint(), datasets=["cities"], metrics={}
    )
    base = ["diagnose", str(buggy / "bugs.jsonl"), "--model", str(buggy / "model")]
    base += ["--layers", "1", "--corpus", str(buggy / "corpus.txt"), "--ctx-len", "16"]
    base += ["--text-tokens", "100", "--screen", "0"]
    assert main([*base, "--truth-probe", str(saved), "--json"]) == 0
    import json

    out = json.loads(capsys.readouterr().out)
    assert [t["hook"] for t in out["truth_probes"]] == ["blocks.0.resid_post"]
    assert str(saved) in out["truth_probes"][0]["source"]
    kinds = [c["kind"] for c in out["candidates"]]
    assert "truth probe" in kinds and "gated: truth probe" in kinds
    assert main([*base, "--truth-probe", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is not a probe" in err and err.count("\n") == 1


def test_pair_margins_with_a_shared_prompt_cache_equal_the_full_reruns(tiny_llama):
    """Each prompt run once, its KV cache shared by bad and good: the same margins as running
    prompt + continuation in full for each, with and without (gated) edits."""
    from lmscope.correct.measure import (
        _continuation_ids,
        continuation_logprobs,
        pair_margins,
        prompt_ids,
    )

    lm = tiny_llama
    cases = [
        BugCase("the cat sees", " a red dog", " the sun"),
        BugCase("one two three four five six", " three", " moon river tree"),
        BugCase("a", " big house", " sun"),
    ]
    g = torch.Generator().manual_seed(8)
    v = AddVector(1, torch.randn(lm.d_model, generator=g))
    d, m = torch.randn(lm.d_model, generator=g), torch.zeros(lm.d_model)
    for edit in (None, v, Gated(v, ProbeGate("blocks.0.resid_post", d, m, 0.0, 0.0))):
        e = None if edit is None else edit.runtime(lm)
        p = [prompt_ids(lm, c) for c in cases]
        ref = continuation_logprobs(
            lm, p, [_continuation_ids(lm, c.bad) for c in cases], e
        ) - continuation_logprobs(lm, p, [_continuation_ids(lm, c.good) for c in cases], e)
        torch.testing.assert_close(pair_margins(lm, cases, e), ref, atol=1e-4, rtol=1e-4)


def test_feature_attribution_targets_the_token_where_bad_and_good_part(tiny_llama):
    from lmscope.correct.diagnose import fork
    from lmscope.correct.measure import prompt_ids

    lm = tiny_llama
    c = BugCase("the cat sees", " a red dog", " a red cat")
    tok = lm.tokenizer.convert_tokens_to_ids
    assert fork(lm, c) == (prompt_ids(lm, c) + [tok("a"), tok("red")], tok("dog"), tok("cat"))
    assert fork(lm, BugCase("one", " dog", " cat"))[1:] == (tok("dog"), tok("cat"))
    assert fork(lm, BugCase("one", " a", " a red")) is None


def test_atlas_hooks_need_an_atlas():
    from lmscope.correct.fix_config import FixConfig

    with pytest.raises(ValueError, match="--atlas"):
        FixConfig(bugs="b.jsonl", atlas_hooks="blocks.1*")
    assert FixConfig(bugs="b.jsonl", atlas="a", atlas_hooks="blocks.1*").atlas_hooks
