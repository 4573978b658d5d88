"""Hook points: names found from module structure, and their values are the model's own."""

from __future__ import annotations

import pytest
import torch

from lmscope.errors import UserError
from lmscope.models.runtime import add, hooked, replace, run
from lmscope.models.tiny import FAMILIES, tiny_model

TEXT = "the cat saw a big red horse in the field ."


@pytest.mark.parametrize("family", FAMILIES)
def test_hook_points_match_hidden_states_and_add_up(family):
    lm = tiny_model(family, n_layers=3)
    toks = lm.to_tokens(TEXT)
    names = lm.hooks.resolve("blocks.*") + ["embed", "ln_final"]
    res = run(lm, toks, capture=names, logits=True)
    with torch.no_grad():
        ref = lm.model(toks, output_hidden_states=True, use_cache=False)
    hs, a = ref.hidden_states, res.acts
    torch.testing.assert_close(a["embed"], hs[0])
    for L in range(lm.n_layers):
        if L < lm.n_layers - 1:  # HF's last hidden state is after the final norm
            torch.testing.assert_close(a[f"blocks.{L}.resid_post"], hs[L + 1])
        torch.testing.assert_close(a[f"blocks.{L}.resid_pre"], hs[L])
        torch.testing.assert_close(
            a[f"blocks.{L}.resid_pre"] + a[f"blocks.{L}.attn_out"], a[f"blocks.{L}.resid_mid"]
        )
        torch.testing.assert_close(
            a[f"blocks.{L}.resid_mid"] + a[f"blocks.{L}.mlp_out"], a[f"blocks.{L}.resid_post"]
        )
    torch.testing.assert_close(a["ln_final"], hs[-1])
    torch.testing.assert_close(res.logits, ref.logits)  # capturing changes nothing


def test_gemma_sandwich_norms_found_structurally():
    lm = tiny_model("gemma2", n_layers=2)
    p = lm.hooks.parts[0]
    assert p.attn_out is not p.attn and "norm" in type(p.attn_out).__name__.lower()
    assert lm.hooks.module_name("blocks.1.mlp_out") == "model.layers.1.post_feedforward_layernorm"


def test_resolve_globs_order_and_errors(tiny_llama):
    hp = tiny_llama.hooks
    assert hp.resolve("blocks.2.resid_post,blocks.*.mlp_out") == [
        "blocks.0.mlp_out",
        "blocks.1.mlp_out",
        "blocks.2.mlp_out",
        "blocks.2.resid_post",
    ]
    with pytest.raises(UserError, match="did you mean: blocks.1.resid_post"):
        hp.resolve("blocks.1.resid_pots")
    with pytest.raises(UserError, match="matches no hook point"):
        hp.resolve("blocks.*.residual")


def test_capture_stops_after_deepest_hook(tiny_llama):
    lm = tiny_llama
    calls = []
    h = lm.hooks.parts[2].block.register_forward_hook(lambda *a: calls.append(1))
    head = lm.model.get_output_embeddings().register_forward_hook(lambda *a: calls.append("head"))
    try:
        with lm.capture(["blocks.1.resid_post"]) as acts:
            lm.model(lm.to_tokens(TEXT))
    finally:
        h.remove()
        head.remove()
    assert calls == []  # block 2 and the LM head never ran
    assert acts["blocks.1.resid_post"].shape == (1, len(lm.to_tokens(TEXT)[0]), lm.d_model)


def test_hooks_removed_on_exception(tiny_llama):
    lm = tiny_llama
    before = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in lm.model.modules())
    with pytest.raises(RuntimeError, match="boom"):
        with hooked(
            lm, ["blocks.0.resid_mid", "blocks.1.mlp_in"], {"blocks.0.resid_post": lambda x: x}
        ):
            raise RuntimeError("boom")
    after = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in lm.model.modules())
    assert before == after


@pytest.mark.parametrize(
    "kind", ["resid_pre", "attn_out", "resid_mid", "mlp_in", "mlp_out", "resid_post"]
)
def test_identity_edit_is_exact_and_add_edit_propagates(tiny_llama, kind):
    lm, toks = tiny_llama, tiny_llama.to_tokens(TEXT)
    name = f"blocks.1.{kind}"
    clean = run(lm, toks, capture=[name], logits=True)
    same = run(lm, toks, capture=[name], edits={name: lambda x: x}, logits=True)
    assert torch.equal(clean.logits, same.logits)
    v = torch.randn(lm.d_model)
    moved = run(lm, toks, capture=[name], edits={name: add(v)}, logits=True)
    # capture sees the edited value, and the edit changes the output
    torch.testing.assert_close(moved.acts[name], clean.acts[name] + v)
    assert not torch.allclose(moved.logits, clean.logits)


def test_resid_mid_edit_equals_attn_out_edit(tiny_llama):
    lm, toks = tiny_llama, tiny_llama.to_tokens(TEXT)
    v = torch.randn(lm.d_model)
    a = run(lm, toks, edits={"blocks.0.resid_mid": add(v)}, logits=True).logits
    b = run(lm, toks, edits={"blocks.0.attn_out": add(v)}, logits=True).logits
    torch.testing.assert_close(a, b)


def test_replace_at_resid_pre_makes_later_layers_ignore_input(tiny_llama):
    lm = tiny_llama
    t1, t2 = lm.to_tokens("the cat ran"), lm.to_tokens("a dog swam")
    fixed = torch.zeros(lm.d_model)
    r1 = run(lm, t1, edits={"blocks.0.resid_post": replace(fixed)}, logits=True).logits
    r2 = run(lm, t2, edits={"blocks.0.resid_post": replace(fixed)}, logits=True).logits
    torch.testing.assert_close(r1, r2)


def test_unknown_edit_hook_is_user_error(tiny_llama):
    with pytest.raises(UserError):
        run(tiny_llama, tiny_llama.to_tokens(TEXT), edits={"blocks.9.resid_post": lambda x: x})


def test_grad_flows_through_capture(tiny_llama):
    lm, toks = tiny_llama, tiny_llama.to_tokens(TEXT)
    res = run(lm, toks, capture=["blocks.0.resid_post"], logits=True, grad=True)
    res.logits[0, -1, 5].backward()
    assert res.acts["blocks.0.resid_post"].requires_grad
