"""Published dictionaries land at the right lmscope hook, on tiny Llama and Gemma 3 models.

Files are written in the publishers' exact layouts (by the real sae_lens package where it
writes them; by hand, as in test_pretrained_interop.py, for sparsify, Gemma Scope and Gemma
Scope 2), named the way their publishers name hooks, imported through the CLI, and checked three
ways: the atlas entry sits at the hook hand-mapped here, the imported dictionary computes what
the publisher's code computes, and every name or width that does not fit is refused in one
line (exit 2) that says why. Also: `lmscope pretrained list`, release names, SAELens release +
--sae-id, and the offline message for an uncached release.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from test_pretrained_interop import _fake_hf_cache, _rand

from lmscope.cli import main
from lmscope.dictionaries.folder import DictionaryFolder
from lmscope.errors import UserError

D, N = 32, 40  # the tiny models' d_model; features


@pytest.fixture(scope="module")
def tiny_gemma3():
    from lmscope.models.tiny import tiny_model

    return tiny_model("gemma3", n_layers=2)


def _cli(capfd, *argv) -> tuple[int, str]:
    capfd.readouterr()
    code = main(list(argv))
    return code, capfd.readouterr().err


def _one_line(code: int, err: str) -> str:
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err[-2000:]
    return lines[0]


def _atlas(out: Path, lm) -> dict:
    folder = DictionaryFolder.open(out)
    return folder.load(folder.select(), lm)


# --- SAELens (files written by the real package) ------------------------------------------
def _saelens_sae(folder: Path, hook: str, *, d_in=D, out_hook: str | None = None):
    sae_lens = pytest.importorskip("sae_lens", reason="install the extra: pip install sae-lens")
    if out_hook is None:
        sae = sae_lens.JumpReLUSAE(sae_lens.JumpReLUSAEConfig(d_in=d_in, d_sae=N))
    else:
        sae = sae_lens.JumpReLUSkipTranscoder(
            sae_lens.JumpReLUSkipTranscoderConfig(
                d_in=d_in, d_sae=N, d_out=d_in, apply_b_dec_to_input=False
            )
        )
    with torch.no_grad():
        for name, p in sae.named_parameters():
            scale = 0.5 if p.ndim == 1 else 0.3
            p.copy_(
                torch.rand_like(p) * 0.3 if "threshold" in name else torch.randn_like(p) * scale
            )
    sae.cfg.metadata.hook_name = hook
    sae.cfg.metadata.model_name = "somewhere/else"
    if out_hook is not None:
        sae.cfg.metadata.hook_name_out = out_hook
    sae.save_model(str(folder))
    return sae


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_saelens_names_import_at_lmscope_hooks(family, tmp_path, capfd, tiny_model_dir):
    """blocks.1.hook_resid_post -> blocks.1.resid_post; a transcoder on ln2.hook_normalized ->
    hook_mlp_out becomes mlp_in -> mlp_out; outputs equal sae_lens's on the same inputs."""
    model = str(tiny_model_dir(family, n_layers=2))
    sae = _saelens_sae(tmp_path / "sae", "blocks.1.hook_resid_post")
    tc = _saelens_sae(
        tmp_path / "tc", "blocks.0.ln2.hook_normalized", out_hook="blocks.0.hook_mlp_out"
    )
    x = torch.randn(50, D)
    for src, hook, ref in (("sae", "blocks.1.resid_post", sae), ("tc", "blocks.0.mlp_in", tc)):
        out = tmp_path / f"atlas-{src}"
        code, err = _cli(
            capfd,
            "atlas",
            "from-pretrained",
            str(tmp_path / src),
            "--out",
            str(out),
            "--model",
            model,
        )
        assert code == 0, err
        from lmscope.models import load_model

        got = _atlas(out, load_model(model))
        assert list(got) == [hook]
        d = got[hook]
        if src == "tc":
            assert d.cfg.out_hook_name == "blocks.0.mlp_out" and d.cfg.skip
        with torch.no_grad():
            torch.testing.assert_close(d.encode(x), ref.encode(x), atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(d(x), ref(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "hook,why",
    [
        ("blocks.1.attn.hook_z", "attention heads' outputs before o_proj"),
        ("blocks.1.hook_q", ""),
        ("blocks.9.hook_resid_post", "'blocks.9.resid_post' is not in this 2-layer model"),
    ],
)
def test_saelens_hook_without_equivalent_is_refused(hook, why, tmp_path, capfd, tiny_model_dir):
    _saelens_sae(tmp_path / "sae", hook)
    out = tmp_path / "atlas"
    line = _one_line(
        *_cli(
            capfd,
            "atlas",
            "from-pretrained",
            str(tmp_path / "sae"),
            "--out",
            str(out),
            "--model",
            str(tiny_model_dir("llama", n_layers=2)),
        )
    )
    assert why in line and (hook in line or "blocks.9" in line)
    assert not out.exists()


# --- width mismatches: one line naming both widths and the hook, for every layout ---------
def _sparsify(folder: Path, d: int, transcode: bool):
    folder.mkdir(parents=True)
    cfg = {"activation": "topk", "k": 4, "num_latents": N, "transcode": transcode, "d_in": d}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    st = {
        "encoder.weight": _rand(N, d, seed=1),  # [num_latents, d_in]: nn.Linear order
        "encoder.bias": _rand(N, seed=2) * 0.1,
        "W_dec": _rand(N, d, seed=3),
        "b_dec": _rand(d, seed=4),
    }
    save_file(st, str(folder / "sae.safetensors"))
    return st


def _gs2(folder: Path, d: int, kind: str, layer: int):
    folder.mkdir(parents=True)
    hooks = {
        "sae": ("model.layers.{L}.output", "model.layers.{L}.output"),
        "transcoder": (
            "model.layers.{L}.pre_feedforward_layernorm.output",
            "model.layers.{L}.post_feedforward_layernorm.output",
        ),
    }[kind]
    cfg = {
        "hf_hook_point_in": hooks[0].replace("{L}", str(layer)),
        "hf_hook_point_out": hooks[1].replace("{L}", str(layer)),
        "width": N,
        "model_name": "google/gemma-3-270m",
        "architecture": "jump_relu",
        "l0": 10,
        "affine_connection": False,
        "type": kind,
    }
    (folder / "config.json").write_text(json.dumps(cfg))
    st = {
        "w_enc": _rand(d, N, seed=11 + layer),
        "w_dec": _rand(N, d, seed=12 + layer),
        "b_enc": _rand(N, seed=13 + layer) * 0.1,
        "b_dec": _rand(d, seed=14 + layer),
        "threshold": _rand(N, seed=15 + layer).abs() * 0.3,
    }
    save_file(st, str(folder / "params.safetensors"))
    return st


def _circuit_tracer(folder: Path, d: int):
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(
        "model_name: x\nmodel_kind: transcoder_set\n"
        "feature_input_hook: mlp.hook_in\nfeature_output_hook: hook_mlp_out\n"
    )
    for i in range(2):
        st = {"W_enc": _rand(N, d, seed=i), "W_dec": _rand(N, d, seed=i + 1)}
        st.update(b_enc=torch.zeros(N), b_dec=torch.zeros(d))
        save_file(st, str(folder / f"layer_{i}.safetensors"))


@pytest.mark.parametrize("layout", ["saelens", "sparsify", "gemmascope2", "circuit-tracer"])
def test_width_mismatch_names_both_widths_and_the_hook(layout, tmp_path, capfd, tiny_model_dir):
    src = tmp_path / "src" / "layers.1"  # sparsify names the folder after its hookpoint
    if layout == "saelens":
        _saelens_sae(src, "blocks.1.hook_resid_post", d_in=24)
    elif layout == "sparsify":
        _sparsify(src, 24, transcode=False)
    elif layout == "gemmascope2":
        _gs2(src, 24, "sae", 1)
    else:
        _circuit_tracer(src, 24)
    hook = "blocks.0.mlp_in" if layout == "circuit-tracer" else "blocks.1.resid_post"
    line = _one_line(
        *_cli(
            capfd,
            "atlas",
            "from-pretrained",
            str(src),
            "--out",
            str(tmp_path / "o"),
            "--model",
            str(tiny_model_dir("llama", n_layers=2)),
        )
    )
    assert f"expects width 24 at {hook}" in line and "has 32" in line, line
    assert not (tmp_path / "o").exists()


# --- names whose tensor depends on the model ------------------------------------------------
def test_sparsify_module_hookpoint_resolved_by_the_model(tmp_path, capfd, tiny_model_dir):
    """A sparsify transcoder at `layers.1.mlp` reads the MLP's input and predicts its output:
    on Llama that output is mlp_out; on Gemma 3 it is the MLP's output before
    post_feedforward_layernorm, which no lmscope hook reads: refused, saying so."""
    st = _sparsify(tmp_path / "tc" / "layers.1.mlp", D, transcode=True)
    llama = str(tiny_model_dir("llama", n_layers=2))
    code, err = _cli(
        capfd,
        "atlas",
        "from-pretrained",
        str(tmp_path / "tc" / "layers.1.mlp"),
        "--out",
        str(tmp_path / "a"),
        "--model",
        llama,
    )
    assert code == 0, err
    from lmscope.models import load_model

    d = _atlas(tmp_path / "a", load_model(llama))["blocks.1.mlp_in"]
    assert d.cfg.out_hook_name == "blocks.1.mlp_out"
    x = torch.randn(30, D)
    pre = torch.relu(x @ st["encoder.weight"].t() + st["encoder.bias"])  # a transcoder: no b_dec
    v, i = pre.topk(4, dim=-1)
    want = torch.zeros_like(pre).scatter(-1, i, v) @ st["W_dec"] + st["b_dec"]
    with torch.no_grad():
        torch.testing.assert_close(d(x), want, atol=1e-5, rtol=1e-5)

    gemma = str(tiny_model_dir("gemma3", n_layers=2))
    line = _one_line(
        *_cli(
            capfd,
            "atlas",
            "from-pretrained",
            str(tmp_path / "tc" / "layers.1.mlp"),
            "--out",
            str(tmp_path / "g"),
            "--model",
            gemma,
        )
    )
    assert "layers.1.mlp" in line and "before its post-norm" in line


def test_circuit_tracer_mlp_hook_out(tmp_path, tiny_llama, tiny_gemma3):
    from lmscope.dictionaries.io import import_pretrained

    _circuit_tracer(tmp_path / "ct", D)
    cfg = (tmp_path / "ct" / "config.yaml").read_text().replace("hook_mlp_out", "mlp.hook_out")
    (tmp_path / "ct" / "config.yaml").write_text(cfg)
    pre, _ = import_pretrained(tmp_path / "ct", tmp_path / "a", tiny_llama)
    assert [d.cfg.out_hook_name for d in pre.dictionaries.values()] == [
        "blocks.0.mlp_out",
        "blocks.1.mlp_out",
    ]
    with pytest.raises(UserError, match="before its post-norm"):
        import_pretrained(tmp_path / "ct", tmp_path / "g", tiny_gemma3)


# --- Gemma Scope (1): the site comes from the release ---------------------------------------
def test_gemma_scope_npz_from_hf_cache(tmp_path, monkeypatch, tiny_gemma3):
    from lmscope.dictionaries.io import import_pretrained, load_pretrained

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    st = {
        "W_enc": _rand(D, N, seed=1),
        "W_dec": _rand(N, D, seed=2),
        "b_enc": _rand(N, seed=3) * 0.1,
        "b_dec": _rand(D, seed=4),
        "threshold": _rand(N, seed=5).abs() * 0.3,
    }
    npz = tmp_path / "params.npz"
    np.savez(npz, **{k: v.numpy() for k, v in st.items()})
    cache, path = tmp_path / "hub", "layer_1/width_16k/average_l0_71/params.npz"
    for site in ("res", "transcoders", "att"):
        _fake_hf_cache(cache, f"google/gemma-scope-2b-pt-{site}", {path: npz})
    x = torch.randn(20, D)
    p = x @ st["W_enc"] + st["b_enc"]  # Gemma Scope: nothing subtracted from x
    acts = p * (p > st["threshold"])
    ref = "google/gemma-scope-2b-pt-{}/layer_1/width_16k/average_l0_71"
    res = load_pretrained(ref.format("res"), cache_dir=cache).dictionaries
    assert list(res) == ["blocks.1.resid_post"]
    tc = load_pretrained(ref.format("transcoders"), cache_dir=cache).dictionaries
    d = tc["blocks.1.mlp_in"]
    assert d.cfg.out_hook_name == "blocks.1.mlp_out" and d.cfg.is_transcoder
    with torch.no_grad():
        torch.testing.assert_close(d.encode(x), acts, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(d(x), acts @ st["W_dec"] + st["b_dec"], atol=1e-5, rtol=1e-5)
    with pytest.raises(UserError, match="Gemma Scope attention SAEs read attn.hook_z"):
        import_pretrained(ref.format("att"), tmp_path / "o", tiny_gemma3, cache_dir=cache)


# --- releases: the list, release names, SAELens release + --sae-id, offline -----------------
def test_pretrained_list(capsys):
    assert main(["pretrained", "list", "--json", "--no-saelens", "--model", "gemma3-270m"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by = {r["name"]: r for r in rows}
    r = by["gemma-scope-2-270m-pt-transcoders-16k-small-affine"]
    assert r["source"] == (
        "google/gemma-scope-2-270m-pt/transcoder_all/layer_{layer}_width_16k_l0_small_affine"
    )
    assert r["kind"] == "skip transcoder" and r["loads"] and r["origin"] == "lmscope"
    assert r["command"] == (
        "lmscope atlas from-pretrained gemma-scope-2-270m-pt-transcoders-16k-small-affine "
        "--out atlas/ --model gemma3-270m"
    )
    assert all("gemma-3-270m" in r["model"] for r in rows)  # the filter
    assert not by["gemma-scope-2-270m-pt-att-16k-small"]["loads"]
    assert main(["pretrained", "list"]) == 0
    text = capsys.readouterr().out
    assert "sparsify-llama-3.1-8b-64x-mlp" in text and "circuit-tracer-gemma-2-2b-clt-426k" in text


def test_saelens_registry_rows_and_sae_id():
    pytest.importorskip("sae_lens")
    from lmscope.dictionaries.io.pretrained import resolve_source
    from lmscope.dictionaries.io.releases import list_releases

    rows = [r for r in list_releases("gemma3-270m") if r.origin == "sae_lens registry"]
    assert "gemma-scope-2-270m-pt-res" in {r.name for r in rows}
    src, model = resolve_source("gemma-scope-2-270m-pt-res", "layer_12_width_16k_l0_big")
    assert (src, model) == (
        "google/gemma-scope-2-270m-pt/resid_post/layer_12_width_16k_l0_big",
        "gemma3-270m",
    )
    with pytest.raises(UserError, match="pick one with --sae-id"):
        resolve_source("gemma-scope-2-270m-pt-res")
    with pytest.raises(UserError, match="has no SAE 'layer_12_width_16k_l0_bog'.*l0_big"):
        resolve_source("gemma-scope-2-270m-pt-res", "layer_12_width_16k_l0_bog")
    # SAELens scales this release's inputs from its registry (norm_scaling_factor), not its files
    with pytest.raises(UserError, match="SAELens sets .*norm_scaling_factor for gpt2-small-mlp-tm"):
        resolve_source("gpt2-small-mlp-tm", "blocks.0.hook_mlp_out")
    with pytest.raises(UserError, match="cannot be loaded by lmscope yet: an affine"):
        resolve_source("circuit-tracer-gemma-3-270m-clt-262k-medium-affine")


def test_release_offline_uncached_is_one_line(tmp_path, capfd, monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    line = _one_line(
        *_cli(
            capfd,
            "atlas",
            "from-pretrained",
            "gemma-scope-2-270m-pt-res-16k-small",
            "--out",
            str(tmp_path / "o"),
        )
    )
    assert "not in the local Hugging Face cache; connect" in line
    assert "hf download google/gemma-scope-2-270m-pt --include 'resid_post_all/layer_0" in line


def test_release_name_imports_from_the_hf_cache(tmp_path, capfd, monkeypatch, tiny_model_dir):
    """`from-pretrained RELEASE` reads the release's folders, one per layer, from the cache."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = tmp_path / "hub"
    files, sts = {}, {}
    for layer in range(2):
        src = tmp_path / "src" / str(layer)
        sts[layer] = _gs2(src, D, "sae", layer)
        for name in ("config.json", "params.safetensors"):
            files[f"resid_post_all/layer_{layer}_width_16k_l0_small/{name}"] = src / name
    _fake_hf_cache(cache, "google/gemma-scope-2-270m-pt", files)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    model = str(tiny_model_dir("gemma3", n_layers=2))
    code, err = _cli(
        capfd,
        "atlas",
        "from-pretrained",
        "gemma-scope-2-270m-pt-res-16k-small",
        "--out",
        str(tmp_path / "atlas"),
        "--model",
        model,
    )
    assert code == 0, err
    from lmscope.models import load_model

    got = _atlas(tmp_path / "atlas", load_model(model))
    assert sorted(got) == ["blocks.0.resid_post", "blocks.1.resid_post"]
    x, st = torch.randn(20, D), sts[1]
    p = x @ st["w_enc"] + st["b_enc"]
    want = (p.relu() * (p > st["threshold"])) @ st["w_dec"] + st["b_dec"]
    with torch.no_grad():
        torch.testing.assert_close(got["blocks.1.resid_post"](x), want, atol=1e-5, rtol=1e-5)


def test_gemma_scope_online_fetches_the_npz_folder(tmp_path, monkeypatch):
    """Online, a Gemma Scope folder (params.npz, no config) comes through the two-step fetch:
    the configs-only step finds nothing there, the second fetches the weights. A fake
    snapshot_download copies only the files its allow_patterns match, as the hub does."""
    import fnmatch
    import shutil

    import huggingface_hub

    from lmscope.dictionaries.io import load_pretrained

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    hub = tmp_path / "hub-repo"
    rel = "layer_1/width_16k/average_l0_71/params.npz"
    (hub / rel).parent.mkdir(parents=True)
    st = {"W_enc": _rand(D, N, seed=1), "W_dec": _rand(N, D, seed=2)}
    st.update(b_enc=torch.zeros(N), b_dec=torch.zeros(D), threshold=torch.full((N,), 0.1))
    np.savez(hub / rel, **{k: v.numpy() for k, v in st.items()})
    calls = []

    def fake_snapshot_download(repo_id, *, allow_patterns=None, local_files_only=False, **kw):
        calls.append(allow_patterns)
        local = tmp_path / "local"
        for f in hub.rglob("*"):
            name = str(f.relative_to(hub))
            if f.is_file() and any(fnmatch.fnmatch(name, p) for p in allow_patterns or ["*"]):
                (local / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(f, local / name)
        local.mkdir(exist_ok=True)
        return str(local)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    pre = load_pretrained("google/gemma-scope-2b-pt-mlp/layer_1/width_16k/average_l0_71")
    assert list(pre.dictionaries) == ["blocks.1.mlp_out"]
    assert len(calls) == 2 and calls[1][-1] == "layer_1/width_16k/average_l0_71/*.npz"
