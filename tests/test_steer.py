"""Steering: feature interventions keep the error term, vectors add what they should, generation."""

from __future__ import annotations

import json

import pytest
import torch

from lmscope.cli import main
from lmscope.dictionaries import DictionaryConfig, build, transcoder_config
from lmscope.dictionaries.dictmath import decoder_rows, encoder_affine
from lmscope.errors import UserError
from lmscope.models.runtime import hooked, run
from lmscope.models.tiny import tiny_model
from lmscope.steer import (
    compare,
    feature_edits,
    generate,
    parse_interventions,
    steering_vector,
    vector_edits,
)

PROMPT = "the cat sat on the big red"
HOOK = "blocks.1.resid_post"


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama", n_layers=3)


@pytest.fixture(scope="module")
def dicts(lm):
    sae = build(
        DictionaryConfig(d_in=lm.d_model, d_sae=96, arch="relu", hook_name=HOOK, seed=3)
    ).eval()
    with torch.no_grad():
        sae.b_enc.fill_(0.01)
    tc = build(transcoder_config(0, lm.d_model, 64, arch="topk", k=4, seed=1)).eval()
    return {HOOK: sae, tc.cfg.hook_name: tc}


def logits_with(lm, edits):
    return run(lm, lm.to_tokens(PROMPT), edits=edits, logits=True).logits


def test_empty_intervention_is_the_identity(lm, dicts):
    ref = logits_with(lm, {})
    assert feature_edits([], dicts) == {}
    for spec in (f"{HOOK}/5=*1", f"{HOOK}/5=+0", "blocks.0.mlp_in/7=*1"):
        out = logits_with(lm, feature_edits(parse_interventions([spec], dicts), dicts))
        assert torch.equal(out, ref), spec  # error term kept: x + 0 exactly


def test_add_changes_the_feature_by_the_expected_amount(lm, dicts):
    """+c on feature f moves its pre-activation (re-encoded) by c * <decoder row, encoder
    column>."""
    sae, f, c = dicts[HOOK], 11, 8.0
    toks = lm.to_tokens(PROMPT)
    edits = feature_edits(parse_interventions([f"{HOOK}/{f}=+{c}"], dicts), dicts)
    before = run(lm, toks, capture=[HOOK]).acts[HOOK][0]
    after = run(lm, toks, capture=[HOOK], edits=edits).acts[HOOK][0]  # captured after the edit
    aff = encoder_affine(sae)
    row = decoder_rows(sae)[f]
    assert torch.allclose(after - before, (c * row).expand_as(before), atol=1e-5)
    d_pre = (after - before) @ aff.weight[:, f]
    assert torch.allclose(
        d_pre, torch.full_like(d_pre, c * float(row @ aff.weight[:, f])), atol=1e-4
    )


def test_clamp_scale_ablate_keep_the_error(lm, dicts):
    sae = dicts[HOOK]
    toks = lm.to_tokens(PROMPT)
    x = run(lm, toks, capture=[HOOK]).acts[HOOK][0]
    a = sae.encode(x).detach()
    f = int(a.sum(0).argmax())  # an active feature
    row = decoder_rows(sae)[f]
    for spec, new in (
        (f"{HOOK}/{f}=3", torch.full_like(a[:, f], 3.0)),
        (f"{HOOK}/{f}=*2", 2 * a[:, f]),
        (f"{HOOK}/{f}=0", torch.zeros_like(a[:, f])),
    ):
        edits = feature_edits(parse_interventions([spec], dicts), dicts)
        y = run(lm, toks, capture=[HOOK], edits=edits).acts[HOOK][0]
        assert torch.allclose(y - x, (new - a[:, f])[:, None] * row, atol=1e-5), spec
        # Re-encoding gives the intended value where the SAE is linear around it (ReLU active).
        if spec.endswith("=0"):
            err_before = x - sae.decode(a)
            a2 = a.clone()
            a2[:, f] = 0
            assert torch.allclose(y, sae.decode(a2) + err_before, atol=1e-5)


def test_transcoder_intervention_writes_to_mlp_out(lm, dicts):
    toks = lm.to_tokens(PROMPT)
    tc = dicts["blocks.0.mlp_in"]
    x = run(lm, toks, capture=["blocks.0.mlp_in"]).acts["blocks.0.mlp_in"][0]
    f = int(tc.encode(x).sum(0).argmax())
    edits = feature_edits(parse_interventions([f"blocks.0.mlp_in/{f}=+2"], dicts), dicts)
    base = run(lm, toks, capture=["blocks.0.mlp_out"]).acts["blocks.0.mlp_out"][0]
    out = run(lm, toks, capture=["blocks.0.mlp_out"], edits=edits).acts["blocks.0.mlp_out"][0]
    assert torch.allclose(out - base, (2 * decoder_rows(tc)[f]).expand_as(base), atol=1e-5)


def test_actadd_vector_adds_coeff_times_difference(lm, dicts):
    sv = steering_vector(lm, "love", "hate", layer=1)
    hook = "blocks.1.resid_pre"
    a = run(lm, lm.to_tokens("love"), capture=[hook]).acts[hook][0]
    b = run(lm, lm.to_tokens("hate"), capture=[hook]).acts[hook][0]
    assert torch.allclose(sv.vector, a - b) and sv.vector[0].abs().max() == 0  # BOS rows cancel
    toks = lm.to_tokens(PROMPT)
    x = run(lm, toks, capture=[hook]).acts[hook][0]
    y = run(lm, toks, capture=[hook], edits=vector_edits(sv, 5.0)).acts[hook][0]
    n = sv.vector.shape[0]
    assert torch.allclose(y[:n] - x[:n], 5.0 * sv.vector, atol=1e-5)
    assert torch.equal(y[n:], x[n:])
    # The steered feature of an SAE at that hook moves by coeff * <v, encoder column>.
    sae = build(DictionaryConfig(d_in=lm.d_model, d_sae=32, arch="relu", hook_name=hook, seed=5))
    aff = encoder_affine(sae)
    d_pre = (y - x) @ aff.weight
    assert torch.allclose(d_pre[1], 5.0 * sv.vector[1] @ aff.weight, atol=1e-5)
    mean = steering_vector(lm, "love", "hate", layer=1, mode="mean")
    assert mean.vector.shape == (lm.d_model,)


def test_generation_matches_hf_greedy_and_steering_changes_it(lm, dicts):
    toks = lm.to_tokens(PROMPT)
    hf = lm.model.generate(toks, max_new_tokens=6, do_sample=False, pad_token_id=0)
    text, probs = generate(lm, PROMPT, max_new_tokens=6)
    full = lm.tokenizer.decode(hf[0].tolist(), skip_special_tokens=True)
    head = lm.tokenizer.decode(toks[0].tolist(), skip_special_tokens=True)
    assert head + text == full and text.startswith(
        " "
    )  # the space between prompt and continuation kept
    assert text.strip() == lm.tokenizer.decode(hf[0, toks.shape[1] :].tolist())
    assert probs.sum() == pytest.approx(1.0, abs=1e-4)
    edits = feature_edits(parse_interventions([f"{HOOK}/11=+40"], dicts), dicts)
    cmp = compare(lm, PROMPT, edits, max_new_tokens=6, targets=[4])
    assert cmp.unsteered == text and cmp.targets[0]["p_unsteered"] == pytest.approx(float(probs[4]))
    assert cmp.targets[0]["p_steered"] != cmp.targets[0]["p_unsteered"]
    s1 = compare(lm, PROMPT, edits, max_new_tokens=5, temperature=1.0, seed=7)
    s2 = compare(lm, PROMPT, edits, max_new_tokens=5, temperature=1.0, seed=7)
    assert s1 == s2


def test_bad_feature_specs(dicts):
    with pytest.raises(UserError, match="did you mean: blocks.1.resid_post"):
        parse_interventions(["blocks.1.resid_pst/3=+8"], dicts)
    with pytest.raises(UserError, match="has 96 features"):
        parse_interventions([f"{HOOK}/96=+8"], dicts)
    with pytest.raises(UserError, match="cannot read feature intervention"):
        parse_interventions([f"{HOOK}/3=+x"], dicts)


def test_cli_steer(lm, tmp_path, capsys, tiny_model_dir):
    from test_trace import make_atlas

    root, _ = make_atlas(tmp_path, lm, tiny_model_dir("llama", n_layers=3), transcoders=False)
    assert (
        main(
            [
                "steer",
                str(root),
                PROMPT,
                "--feature",
                "blocks.2.resid_post/3=+5",
                "--vector",
                "love",
                "hate",
                "--layer",
                "1",
                "--coeff",
                "4",
                "--generate",
                "5",
                "--target",
                "cat",
                "--json",
            ]
        )
        == 0
    )
    d = json.loads(capsys.readouterr().out)
    assert (
        len(d["interventions"]) == 2
        and d["targets"][0]["token"] == "cat"
        and d["vector"]["coeff"] == 4
    )
    assert (
        main(
            ["steer", str(root), PROMPT, "--feature", "blocks.2.resid_post/3=+5", "--generate", "3"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "unsteered:" in out and "steered:" in out
    assert main(["steer", str(root), PROMPT, "--feature", "blocks.7.resid_post/3=+5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no dictionary at" in err
    assert main(["steer", str(root), PROMPT, "--vector", "love", "hate"]) == 2
    assert "--layer" in capsys.readouterr().err


def test_hooked_is_the_only_mechanism(lm, dicts):
    """Interventions are plain edits: they compose with captures in one hooked context."""
    edits = feature_edits(parse_interventions([f"{HOOK}/2=+1"], dicts), dicts)
    with torch.no_grad(), hooked(lm, [HOOK], edits) as acts:
        lm.model(lm.to_tokens(PROMPT))
    assert acts[HOOK].shape[-1] == lm.d_model


def test_cli_steer_vector_without_atlas(lm, capsys, tiny_model_dir):
    """--vector needs only a model: `lmscope steer --model DIR PROMPT --vector A B --layer L`."""
    model_dir = tiny_model_dir("llama", n_layers=3)  # the weights of `lm`
    argv = [
        "steer",
        "--model",
        str(model_dir),
        PROMPT,
        "--vector",
        "love",
        "hate",
        "--layer",
        "1",
        "--coeff",
        "4",
        "--generate",
        "4",
        "--target",
        "cat",
        "--json",
    ]
    assert main(argv) == 0
    d = json.loads(capsys.readouterr().out)
    sv = steering_vector(lm, "love", "hate", layer=1)
    ref = compare(
        lm, PROMPT, vector_edits(sv, 4.0), max_new_tokens=4, targets=[d["targets"][0]["id"]]
    )
    assert d["steered"] == ref.steered and d["unsteered"] == ref.unsteered
    assert d["targets"] == json.loads(json.dumps(ref.targets))
    assert d["vector"]["hook"] == "blocks.1.resid_pre" and d["vector"]["coeff"] == 4
    assert (
        d["next_tokens"] == json.loads(json.dumps(ref.next_tokens)) and len(d["next_tokens"]) >= 5
    )
    # Without an atlas: features are refused, and the model is required; one line each.
    for bad, needle in (
        (
            ["steer", "--model", str(model_dir), PROMPT, "--feature", f"{HOOK}/3=+5"],
            "needs an atlas",
        ),
        (["steer", PROMPT, "--vector", "love", "hate", "--layer", "1"], "--model"),
        (["steer", "a", "b", "c", "--vector", "x", "y", "--layer", "1"], "quote the prompt"),
        (
            [
                "steer",
                "--model",
                str(model_dir),
                PROMPT,
                "--vector",
                "love",
                "hate",
                "--layer",
                "9",
            ],
            "out of range",
        ),
    ):
        assert main(bad) == 2, bad
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and needle in err, err


def test_steer_is_the_shared_engine(lm, dicts):
    """steer() (what the CLI and the viewer call) == feature_edits + vector_edits + compare."""
    from lmscope.steer import VectorSpec, steer

    spec = f"{HOOK}/11=+8"
    res = steer(
        lm,
        dicts,
        PROMPT,
        features=[spec],
        vector=VectorSpec("love", "hate", 1, coeff=3.0),
        max_new_tokens=4,
        targets=["cat"],
        top=3,
    )
    edits = feature_edits(parse_interventions([spec], dicts), dicts)
    sv = steering_vector(lm, "love", "hate", layer=1)
    vec = vector_edits(sv, 3.0)["blocks.1.resid_pre"]
    edits["blocks.1.resid_pre"] = vec
    ref = compare(lm, PROMPT, edits, max_new_tokens=4, targets=[res.targets[0]["id"]], top=3)
    assert (res.unsteered, res.steered, res.targets) == (ref.unsteered, ref.steered, ref.targets)
    assert res.next_tokens == ref.next_tokens and 3 <= len(res.next_tokens) <= 6
    probs = [max(r["p_unsteered"], r["p_steered"]) for r in res.next_tokens]
    assert probs == sorted(probs, reverse=True)
    assert res.interventions == [spec, "3 x ('love' - 'hate') at blocks.1.resid_pre [actadd]"]
    with pytest.raises(UserError, match="nothing to steer"):
        steer(lm, dicts, PROMPT)
    with pytest.raises(UserError, match="need an atlas"):
        steer(lm, {}, PROMPT, features=[spec])
    with pytest.raises(UserError, match="not a token id"):
        steer(lm, dicts, PROMPT, features=[spec], targets=["99999999"])
    with pytest.raises(UserError, match="finite"):
        VectorSpec("a", "b", 1, coeff=float("nan"))
