"""Hook names as publishers write them <-> lmscope's (lmscope/models/hook_names.py).

Every expected pair below is written by hand from the publisher's own definition (TransformerLens
source, SAELens's loaders, Gemma Scope 2's config.json, sparsify's hookpoints), on a tiny Llama
(no post-norms: a module's output is what it adds) and a tiny Gemma 3 (post-norms: it is not).
The module-path tests also check the tensor: the module named really carries the activation of
the lmscope hook it maps to, in a real forward pass.
"""

from __future__ import annotations

import pytest
import torch

from lmscope.errors import UserError
from lmscope.models import hook_names as hn


@pytest.fixture(scope="module")
def tiny_gemma3():
    from lmscope.models.tiny import tiny_model

    return tiny_model("gemma3", n_layers=2)


# Names whose meaning is the same on every family: (foreign, lmscope).
FIXED = [
    ("blocks.1.resid_post", "blocks.1.resid_post"),
    ("blocks.1.hook_resid_pre", "blocks.1.resid_pre"),
    ("blocks.1.hook_resid_mid", "blocks.1.resid_mid"),
    ("blocks.1.hook_resid_post", "blocks.1.resid_post"),
    ("blocks.1.hook_attn_out", "blocks.1.attn_out"),
    ("blocks.1.hook_mlp_out", "blocks.1.mlp_out"),
    ("blocks.1.mlp.hook_in", "blocks.1.mlp_in"),
    ("blocks.1.ln2.hook_normalized", "blocks.1.mlp_in"),
    ("blocks.1.hook_mlp_in", "blocks.1.resid_mid"),  # TransformerLens: before ln2
    ("blocks.{layer}.hook_mlp_out", "blocks.{layer}.mlp_out"),
    ("model.layers.1", "blocks.1.resid_post"),
    ("model.layers.1.output", "blocks.1.resid_post"),
    ("model.layers.1:input", "blocks.1.resid_pre"),
    ("model.layers.1.mlp:input", "blocks.1.mlp_in"),
    ("model.layers.1.mlp.input", "blocks.1.mlp_in"),
    ("model.layers.1.self_attn:output+resid_pre", "blocks.1.resid_mid"),
    ("layers.1.mlp:input", "blocks.1.mlp_in"),  # sparsify, relative to the base model
    ("resid_post/layer_1_width_16k_l0_small", "blocks.1.resid_post"),
    ("google/gemma-scope-2-270m-pt/mlp_out_all/layer_1_width_16k_l0_big", "blocks.1.mlp_out"),
    ("transcoder_all/layer_1_width_16k_l0_small_affine", "blocks.1.mlp_in"),
    ("clt/width_262k_l0_medium", "blocks.{layer}.mlp_in"),
]


@pytest.mark.parametrize("foreign,ours", FIXED)
def test_fixed_names_without_a_model(foreign, ours):
    assert hn.to_lmscope(foreign) == ours


def test_gemma_scope_needs_its_site():
    path = "layer_1/width_16k/average_l0_71"
    assert hn.to_lmscope(path, site="res") == "blocks.1.resid_post"
    assert hn.to_lmscope(path, site="mlp") == "blocks.1.mlp_out"
    assert hn.to_lmscope(path, site="transcoders") == "blocks.1.mlp_in"
    with pytest.raises(UserError, match="does not say its site"):
        hn.to_lmscope(path)
    with pytest.raises(UserError, match="no lmscope equivalent .Gemma Scope attention"):
        hn.to_lmscope(path, site="att")


@pytest.mark.parametrize(
    "name,why",
    [
        ("blocks.1.attn.hook_z", "before o_proj"),
        ("hook_embed", "before any scaling"),
        ("attn_out/layer_1_width_16k_l0_small", "o_proj's input"),
        ("model.layers.1.self_attn.o_proj.input", "hook_z"),
        ("blocks.1.hook_q", ""),
        ("something.else", ""),
    ],
)
def test_names_without_equivalent_are_refused_listing_the_supported(name, why):
    with pytest.raises(UserError) as e:
        hn.to_lmscope(name)
    msg = str(e.value)
    assert "\n" not in msg and "no lmscope equivalent" in msg and why in msg
    assert "hook_resid_post" in msg and "model.layers.L" in msg  # the supported kinds listed


def test_module_outputs_need_the_model():
    for name in ("model.layers.1.mlp", "blocks.1.mlp.hook_out"):
        with pytest.raises(hn.NeedsModel):
            hn.to_lmscope(name)
        assert hn.normalize(name) == name  # left for import_pretrained to resolve with the model
    assert hn.normalize("blocks.1.hook_resid_post") == "blocks.1.resid_post"


def test_llama_module_outputs(tiny_llama):
    h = tiny_llama.hooks  # no post-norms: the MLP's and attention's outputs are what they add
    assert hn.to_lmscope("model.layers.1.mlp", h) == "blocks.1.mlp_out"
    assert hn.to_lmscope("model.layers.1.mlp.output", h) == "blocks.1.mlp_out"
    assert hn.to_lmscope("blocks.1.mlp.hook_out", h) == "blocks.1.mlp_out"
    assert hn.to_lmscope("model.layers.1.self_attn", h) == "blocks.1.attn_out"
    assert hn.to_lmscope("model.norm", h) == "ln_final"
    with pytest.raises(UserError, match="has no module 'pre_feedforward_layernorm'"):
        hn.to_lmscope("model.layers.1.pre_feedforward_layernorm.output", h)
    msg = "'blocks.7.hook_resid_post' .blocks.7.resid_post in lmscope's names. is not in this 3-l"
    with pytest.raises(UserError, match=msg):
        hn.to_lmscope("blocks.7.hook_resid_post", h)
    for name in ("blocks.7.mlp.hook_out", "model.layers.7.mlp", "model.layers.7.mlp:input"):
        with pytest.raises(UserError, match="is not in this 3-layer model"):  # not an IndexError
            hn.to_lmscope(name, h)


def test_gemma3_module_outputs(tiny_gemma3):
    h = tiny_gemma3.hooks  # post-norms: the MLP's own output is not what the block adds
    assert hn.to_lmscope("model.layers.1.post_feedforward_layernorm", h) == "blocks.1.mlp_out"
    assert hn.to_lmscope("model.layers.1.post_attention_layernorm", h) == "blocks.1.attn_out"
    got = hn.to_lmscope("model.layers.1.pre_feedforward_layernorm.output", h)
    assert got == "blocks.1.mlp_in"
    for name in ("model.layers.1.mlp", "blocks.1.mlp.hook_out"):
        with pytest.raises(UserError, match="before its post-norm"):
            hn.to_lmscope(name, h)
    with pytest.raises(UserError, match="before its post-norm"):
        hn.to_lmscope("model.layers.1.self_attn", h)


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_both_directions_round_trip(family, tiny_llama, tiny_gemma3):
    lm = tiny_llama if family == "llama" else tiny_gemma3
    for hook in lm.hooks.names():
        if hook in ("embed", "ln_final"):
            continue
        assert hn.to_lmscope(hn.to_transformer_lens(hook), lm.hooks) == hook
        assert hn.to_lmscope(hn.to_module(hook, lm.hooks), lm.hooks) == hook
    assert hn.to_transformer_lens("blocks.2.mlp_in") == "blocks.2.mlp.hook_in"
    assert hn.to_transformer_lens("embed") == "blocks.0.hook_resid_pre"
    assert hn.to_block_relative("blocks.{layer}.mlp_out") == "hook_mlp_out"
    assert hn.to_gemmascope2("blocks.1.mlp_in") == "model.layers.1.pre_feedforward_layernorm.output"
    assert hn.to_gemmascope2("blocks.{layer}.mlp_out") == (
        "model.layers.{all}.post_feedforward_layernorm.output"
    )
    with pytest.raises(UserError, match="no Gemma Scope 2 name"):
        hn.to_gemmascope2("blocks.1.resid_mid")


@torch.no_grad()
@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_module_paths_carry_the_mapped_activation(family, tiny_llama, tiny_gemma3):
    """A module path maps to the lmscope hook whose activation IS that module's output (or input),
    in a real forward pass: the mapping is about tensors, not spellings."""
    lm = tiny_llama if family == "llama" else tiny_gemma3
    names = {
        "llama": ["model.layers.1", "model.layers.1.mlp", "model.layers.1.self_attn"],
        "gemma3": [
            "model.layers.1",
            "model.layers.1.pre_feedforward_layernorm.output",
            "model.layers.1.post_feedforward_layernorm",
            "model.layers.1.post_attention_layernorm",
        ],
    }[family]
    seen, handles = {}, []
    for name in names:
        path = name.removesuffix(".output")
        mod = lm.model.get_submodule(path)
        handles.append(
            mod.register_forward_hook(
                lambda m, a, o, n=name: seen.__setitem__(n, o[0] if isinstance(o, tuple) else o)
            )
        )
    hooks = {name: hn.to_lmscope(name, lm.hooks) for name in names}
    try:
        acts = lm.run(torch.tensor([[3, 5, 7, 9]]), capture=sorted(set(hooks.values()))).acts
    finally:
        for hd in handles:
            hd.remove()
    for name, hook in hooks.items():
        torch.testing.assert_close(acts[hook].float(), seen[name].float(), msg=name)
