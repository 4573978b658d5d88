"""Interop with the real SAELens package (extra `saelens`), both directions, plus sparsify and
Gemma Scope files.

- lmscope -> SAELens: a trained lmscope dictionary saved with `save()` opens with
  `sae_lens.SAE.load_from_disk` and gives the same encode/decode/forward outputs.
- SAELens -> lmscope: an SAE built and saved by SAELens (`save_model`) loads with
  `load_dictionary` and gives the same outputs; also SAELens' pre-6.0 flat configs.
- sparsify / Gemma Scope: folders written exactly as those tools lay them out, checked
  against the tools' encoding formulas.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from lmscope.dictionaries import DictionaryConfig, build, load_dictionary

sae_lens = pytest.importorskip("sae_lens", reason="install the extra: pip install -e '.[saelens]'")
from sae_lens import SAE  # noqa: E402

D_IN, D_SAE, D_OUT = 24, 80, 16


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _trained(cfg: DictionaryConfig, steps: int = 25) -> tuple:
    """A dictionary after a few real optimizer steps on offset, scaled data (non-trivial
    everything)."""
    x = torch.randn(2048, cfg.d_in) * 30 + 5
    target = torch.randn(2048, cfg.output_dim) * 3 - 1 if cfg.is_transcoder else None
    d = build(cfg)
    d.init_from_data(x, target)
    opt = torch.optim.Adam(d.parameters(), lr=1e-2)
    for s in range(steps):
        i = slice(s * 64, (s + 1) * 64)
        out = d.loss(
            x[i], None if target is None else target[i], dead_mask=torch.rand(cfg.d_sae) < 0.2
        )
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        d.normalize_decoder_()
    return d, x[-300:]


LMSCOPE_CASES = {
    "topk": dict(arch="topk", k=6),
    "batchtopk": dict(arch="batchtopk", k=6),
    "jumprelu": dict(arch="jumprelu", l0_coeff=0.05),
    "relu": dict(arch="relu"),
    "relu-transcoder": dict(arch="relu", d_out=D_OUT, out_hook_name="blocks.2.mlp_out"),
    "relu-skip-transcoder": dict(
        arch="relu", d_out=D_OUT, skip=True, out_hook_name="blocks.2.mlp_out"
    ),
    "jumprelu-skip-transcoder": dict(
        arch="jumprelu", d_out=D_OUT, skip=True, out_hook_name="blocks.2.mlp_out", l0_coeff=0.05
    ),
}


@pytest.mark.parametrize("name", list(LMSCOPE_CASES))
def test_lmscope_dictionary_opens_in_saelens(tmp_path, name):
    cfg = DictionaryConfig(
        d_in=D_IN,
        d_sae=D_SAE,
        hook_name="blocks.2.mlp_in",
        model_name="tiny-llama",
        **LMSCOPE_CASES[name],
    )
    d, x = _trained(cfg)
    path = d.save(
        tmp_path / name,
        sparsity=torch.rand(D_SAE),
        metadata={"hook_name": "model.layers.2.mlp", "context_size": 128},
    )
    sae = SAE.load_from_disk(str(path))
    with torch.no_grad():
        ours_acts = d.encode(x)
        theirs_acts = sae.encode(x)
        assert (ours_acts > 0).any()
        torch.testing.assert_close(theirs_acts, ours_acts, rtol=1e-4, atol=1e-4)
        if cfg.skip:  # SAELens' skip transcoders add W_skip in forward()
            torch.testing.assert_close(sae(x), d(x), rtol=1e-4, atol=1e-3)
        else:
            torch.testing.assert_close(
                sae.decode(ours_acts), d.decode(ours_acts), rtol=1e-4, atol=1e-3
            )
            torch.testing.assert_close(sae(x), d(x), rtol=1e-4, atol=1e-3)
    assert sae.cfg.metadata.hook_name == "model.layers.2.mlp"
    assert sae.cfg.metadata.model_name == "tiny-llama"
    assert sae.cfg.metadata.lmscope_hook_name == "blocks.2.mlp_in"
    from safetensors.torch import load_file

    sparsity = load_file(str(path / "sparsity.safetensors"))["sparsity"]
    assert sparsity.shape == (D_SAE,) and float(sparsity.max()) <= 0.0


def _randomize(sae) -> None:
    with torch.no_grad():
        for name, p in sae.named_parameters():
            if name == "threshold":
                p.copy_(torch.rand_like(p) * 0.5)
            elif name == "log_threshold":
                p.copy_(torch.log(torch.rand_like(p) * 0.5 + 0.01))
            else:
                p.copy_(torch.randn_like(p) * (0.3 if p.ndim > 1 else 0.5))


def _saelens_cases():
    from sae_lens import (
        JumpReLUSAE,
        JumpReLUSAEConfig,
        JumpReLUSkipTranscoder,
        JumpReLUSkipTranscoderConfig,
        SkipTranscoder,
        SkipTranscoderConfig,
        StandardSAE,
        StandardSAEConfig,
        TopKSAE,
        TopKSAEConfig,
        Transcoder,
        TranscoderConfig,
    )

    return {
        "standard": lambda: StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=D_SAE)),
        "standard-no-bdec-in": lambda: StandardSAE(
            StandardSAEConfig(d_in=D_IN, d_sae=D_SAE, apply_b_dec_to_input=False)
        ),
        "topk": lambda: TopKSAE(TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=7)),
        "topk-rescaled": lambda: TopKSAE(
            TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=7, rescale_acts_by_decoder_norm=True)
        ),
        "jumprelu": lambda: JumpReLUSAE(JumpReLUSAEConfig(d_in=D_IN, d_sae=D_SAE)),
        "transcoder": lambda: Transcoder(
            TranscoderConfig(d_in=D_IN, d_sae=D_SAE, d_out=D_OUT, apply_b_dec_to_input=False)
        ),
        "skip-transcoder": lambda: SkipTranscoder(
            SkipTranscoderConfig(d_in=D_IN, d_sae=D_SAE, d_out=D_OUT, apply_b_dec_to_input=False)
        ),
        "jumprelu-skip-transcoder": lambda: JumpReLUSkipTranscoder(
            JumpReLUSkipTranscoderConfig(
                d_in=D_IN, d_sae=D_SAE, d_out=D_OUT, apply_b_dec_to_input=False
            )
        ),
    }


@pytest.mark.parametrize("name", list(_saelens_cases()))
def test_saelens_sae_loads_into_lmscope(tmp_path, name):
    sae = _saelens_cases()[name]()
    _randomize(sae)
    sae.cfg.metadata.hook_name = "blocks.3.hook_resid_post"
    sae.cfg.metadata.model_name = "gpt2"
    sae.save_model(str(tmp_path / name))
    d = load_dictionary(tmp_path / name)
    x = torch.randn(200, D_IN) * 2
    with torch.no_grad():
        theirs = sae.encode(x)
        assert (theirs > 0).any()
        torch.testing.assert_close(d.encode(x), theirs, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(d(x), sae(x), rtol=1e-4, atol=1e-4)
        if "skip" not in name:
            torch.testing.assert_close(d.decode(theirs), sae.decode(theirs), rtol=1e-4, atol=1e-4)
    # SAELens names the hook in TransformerLens terms; lmscope reads it in its own
    assert d.cfg.hook_name == "blocks.3.resid_post" and d.cfg.model_name == "gpt2"


def test_pre_6_0_flat_config_loads_in_both(tmp_path):
    """SAELens < 6 wrote one flat cfg.json (hook_point, activation_fn_str, ...)."""
    W_enc, b_enc = torch.randn(D_IN, D_SAE) * 0.3, torch.randn(D_SAE) * 0.2
    W_dec, b_dec = torch.randn(D_SAE, D_IN) * 0.3, torch.randn(D_IN)
    folder = tmp_path / "old"
    folder.mkdir()
    save_file(
        {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec},
        str(folder / "sae_weights.safetensors"),
    )
    (folder / "cfg.json").write_text(
        json.dumps(
            {
                "model_name": "gpt2-small",
                "hook_point": "blocks.8.hook_resid_pre",
                "hook_point_layer": 8,
                "hook_point_head_index": None,
                "d_in": D_IN,
                "d_sae": D_SAE,
                "dtype": "float32",
                "device": "cpu",
                "activation_fn_str": "relu",
                "apply_b_dec_to_input": True,
                "context_size": 128,
                "prepend_bos": True,
                "normalize_activations": "none",
                "sae_lens_version": "3.5.0",
            }
        )
    )
    d = load_dictionary(folder)
    sae = SAE.load_from_disk(str(folder))
    x = torch.randn(100, D_IN)
    with torch.no_grad():
        torch.testing.assert_close(d.encode(x), sae.encode(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(d(x), sae(x), rtol=1e-5, atol=1e-5)
        manual = torch.relu((x - b_dec) @ W_enc + b_enc) @ W_dec + b_dec
        torch.testing.assert_close(d(x), manual, rtol=1e-5, atol=1e-5)
    assert d.cfg.arch == "relu" and d.cfg.hook_name == "blocks.8.resid_pre"


def test_sparsify_folder_loads_with_its_formula(tmp_path):
    """cfg.json + sae.safetensors as sparsify 1.x writes them; encode = topk(relu(enc(x -
    b_dec)))."""
    n, k = D_SAE, 5
    enc_w, enc_b = torch.randn(n, D_IN) * 0.3, torch.randn(n) * 0.1
    W_dec, b_dec = torch.randn(n, D_IN), torch.randn(D_IN)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    folder = tmp_path / "layers.4"
    folder.mkdir()
    save_file(
        {"encoder.weight": enc_w, "encoder.bias": enc_b, "W_dec": W_dec, "b_dec": b_dec},
        str(folder / "sae.safetensors"),
    )
    (folder / "cfg.json").write_text(
        json.dumps(
            {
                "activation": "topk",
                "expansion_factor": 32,
                "normalize_decoder": True,
                "num_latents": n,
                "k": k,
                "multi_topk": False,
                "skip_connection": False,
                "transcode": False,
                "d_in": D_IN,
            }
        )
    )
    d = load_dictionary(folder)
    x = torch.randn(100, D_IN) * 2
    pre = torch.relu((x - b_dec) @ enc_w.t() + enc_b)
    v, i = pre.topk(k, dim=-1)
    manual = torch.zeros_like(pre).scatter(-1, i, v) @ W_dec + b_dec
    with torch.no_grad():
        torch.testing.assert_close(d(x), manual, rtol=1e-5, atol=1e-5)
        codes = d.encode_topk(x)
        torch.testing.assert_close(
            codes.values.sort(-1).values, v.sort(-1).values, rtol=1e-5, atol=1e-5
        )
    # the hookpoint layers.4 (a block output) is our blocks.4.resid_post
    assert d.cfg.arch == "topk" and d.cfg.k == k and d.cfg.hook_name == "blocks.4.resid_post"


def test_gemmascope_params_npz_loads_with_its_formula(tmp_path):
    """Gemma Scope JumpReLU: acts = relu(x W_enc + b_enc) * (pre > threshold), no b_dec
    subtraction."""
    p = {
        "W_enc": np.random.randn(D_IN, D_SAE).astype(np.float32) * 0.3,
        "b_enc": np.random.randn(D_SAE).astype(np.float32) * 0.1,
        "W_dec": np.random.randn(D_SAE, D_IN).astype(np.float32) * 0.3,
        "b_dec": np.random.randn(D_IN).astype(np.float32),
        "threshold": np.random.rand(D_SAE).astype(np.float32) * 0.5,
    }
    folder = tmp_path / "layer_5" / "width_16k" / "average_l0_71"
    folder.mkdir(parents=True)
    np.savez(folder / "params.npz", **p)
    d = load_dictionary(folder / "params.npz")
    t = {k: torch.from_numpy(v) for k, v in p.items()}
    x = torch.randn(100, D_IN) * 2
    pre = x @ t["W_enc"] + t["b_enc"]
    acts = torch.relu(pre) * (pre > t["threshold"])
    with torch.no_grad():
        torch.testing.assert_close(d.encode(x), acts, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(d(x), acts @ t["W_dec"] + t["b_dec"], rtol=1e-4, atol=1e-4)
    assert load_dictionary(folder).cfg.arch == "jumprelu"
