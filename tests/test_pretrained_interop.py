"""Published transcoder layouts (circuit-tracer, Gemma Scope 2) read and written exactly.

Every fixture here is written BY HAND in the published layout (file names, key names, shapes,
dtypes, config fields; see docs/formats.md), never by lmscope's writers, and every expected
output is computed by hand from the file's tensors with the publisher's formula, so a reader
that transposed a matrix, dropped a skip, subtracted b_dec or kept the wrong decoder slice
fails. The real circuit-tracer package is exercised in test_circuit_tracer_interop.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lmscope.dictionaries.io import load_pretrained
from lmscope.dictionaries.io.circuit_tracer import (
    read_circuit_tracer_clt,
    save_circuit_tracer_transcoders,
    write_circuit_tracer_clt,
)
from lmscope.dictionaries.io.gemmascope2 import read_gemmascope2_clt, write_gemmascope2_clt
from lmscope.errors import UserError

D, N = 8, 6  # d_model, features per layer


def _rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _x(L=None, B=5, d=D, seed=99):
    return _rand(B, d, seed=seed) if L is None else _rand(L, B, d, seed=seed)


# --- reference formulas, as the publishers write them -------------------------------------
def _jump(pre, thr):
    return pre * (pre > thr)


def _clt_reference(x, W_enc_nd, b_enc, thr, W_dec, b_dec):
    """circuit-tracer: acts[l] = jumprelu(x[l] @ W_enc_l.T + b_enc_l); out[t] = sum_{l<=t}
    acts[l] @ W_dec_l[:, t-l] + b_dec[t]."""
    L = len(W_enc_nd)
    acts = [_jump(x[i] @ W_enc_nd[i].t() + b_enc[i], thr[i]) for i in range(L)]
    out = []
    for t in range(L):
        o = b_dec[t].expand(x.shape[1], -1).clone()
        for src in range(t + 1):
            o = o + acts[src] @ W_dec[src][:, t - src]
        out.append(o)
    return torch.stack(acts), torch.stack(out)


# --- circuit-tracer per-layer transcoder set -----------------------------------------------
def _write_ct_set(folder: Path, n_layers=2, *, relu=False, skip=True, dtype=torch.float32):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(
        "model_name: tiny-llama\nmodel_kind: transcoder_set\n"
        "feature_input_hook: mlp.hook_in\nfeature_output_hook: hook_mlp_out\n"
    )
    files = {}
    for i in range(n_layers):
        st = {
            "W_enc": _rand(N, D, seed=10 * i),  # [d_transcoder, d_model]: nn.Linear order
            "W_dec": _rand(N, D, seed=10 * i + 1),
            "b_enc": _rand(N, seed=10 * i + 2) * 0.1,
            "b_dec": _rand(D, seed=10 * i + 3),
        }
        if not relu:
            st["activation_function.threshold"] = _rand(N, seed=10 * i + 4).abs() * 0.5
        if skip:
            st["W_skip"] = _rand(D, D, seed=10 * i + 5) * 0.1
        st = {k: v.to(dtype) for k, v in st.items()}
        save_file(st, str(folder / f"layer_{i}.safetensors"))
        files[i] = {k: v.float() for k, v in st.items()}
    return files


@pytest.mark.parametrize("relu,dtype", [(False, torch.float32), (True, torch.bfloat16)])
def test_circuit_tracer_transcoder_set_outputs(tmp_path, relu, dtype):
    files = _write_ct_set(tmp_path / "ct", relu=relu, dtype=dtype)
    pre = load_pretrained(tmp_path / "ct")
    assert pre.fmt == "circuit-tracer" and pre.clt is None and pre.model_name == "tiny-llama"
    assert list(pre.dictionaries) == ["blocks.0.mlp_in", "blocks.1.mlp_in"]
    x = _x()
    for i, st in files.items():
        d = pre.dictionaries[f"blocks.{i}.mlp_in"]
        assert d.cfg.out_hook_name == f"blocks.{i}.mlp_out" and d.cfg.skip
        assert d.cfg.arch == ("relu" if relu else "jumprelu")
        p = x @ st["W_enc"].t() + st["b_enc"]
        acts = p.relu() if relu else _jump(p, st["activation_function.threshold"])
        want = acts @ st["W_dec"] + st["b_dec"] + x @ st["W_skip"].t()
        torch.testing.assert_close(d.encode(x), acts, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(d(x), want, atol=1e-5, rtol=1e-5)


def test_circuit_tracer_set_refuses_gaps_and_bad_hooks(tmp_path):
    _write_ct_set(tmp_path / "gap", n_layers=3)
    (tmp_path / "gap" / "layer_1.safetensors").unlink()
    with pytest.raises(UserError, match="without gaps; missing 1"):
        load_pretrained(tmp_path / "gap")
    _write_ct_set(tmp_path / "hook")
    cfg = (tmp_path / "hook" / "config.yaml").read_text().replace("mlp.hook_in", "attn.hook_z")
    (tmp_path / "hook" / "config.yaml").write_text(cfg)
    with pytest.raises(UserError, match="feature_input_hook 'attn.hook_z' has no lmscope hook"):
        load_pretrained(tmp_path / "hook")


# --- circuit-tracer CLT --------------------------------------------------------------------
def _write_ct_clt(folder: Path, L=3, *, relu=False, d=D):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(
        "model_name: tiny-llama\nmodel_kind: cross_layer_transcoder\n"
        "feature_input_hook: mlp.hook_in\nfeature_output_hook: hook_mlp_out\n"
    )
    W_enc, b_enc, thr, W_dec, b_dec = [], [], [], [], []
    for i in range(L):
        W_enc.append(_rand(N, d, seed=100 + i))
        b_enc.append(_rand(N, seed=200 + i) * 0.1)
        b_dec.append(_rand(d, seed=300 + i))
        thr.append(torch.zeros(N) if relu else _rand(N, seed=400 + i).abs() * 0.3)
        W_dec.append(_rand(N, L - i, d, seed=500 + i))
        enc = {f"W_enc_{i}": W_enc[i], f"b_enc_{i}": b_enc[i], f"b_dec_{i}": b_dec[i]}
        if not relu:
            enc[f"threshold_{i}"] = thr[i]
        save_file(enc, str(folder / f"W_enc_{i}.safetensors"))
        save_file({f"W_dec_{i}": W_dec[i]}, str(folder / f"W_dec_{i}.safetensors"))
    return W_enc, b_enc, thr, W_dec, torch.stack(b_dec)


@pytest.mark.parametrize("relu", [False, True])
def test_circuit_tracer_clt_outputs(tmp_path, relu):
    W_enc, b_enc, thr, W_dec, b_dec = _write_ct_clt(tmp_path / "clt", relu=relu)
    pre = load_pretrained(tmp_path / "clt")
    assert pre.fmt == "circuit-tracer-clt" and not pre.dictionaries
    clt = pre.clt
    assert (clt.cfg.n_layers, clt.cfg.d_model, clt.cfg.d_sae) == (3, D, N)
    assert clt.cfg.hook_in == "blocks.{layer}.mlp_in"
    assert clt.cfg.hook_out == "blocks.{layer}.mlp_out"
    x = _x(L=3)
    acts, out = _clt_reference(x, W_enc, b_enc, thr, W_dec, b_dec)
    torch.testing.assert_close(clt.encode(x), acts, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(clt(x), out, atol=1e-5, rtol=1e-5)


def test_circuit_tracer_clt_refuses_bad_shapes(tmp_path):
    _write_ct_clt(tmp_path / "clt")
    save_file({"W_dec_1": torch.zeros(N, 3, D)}, str(tmp_path / "clt" / "W_dec_1.safetensors"))
    with pytest.raises(UserError, match=r"W_dec_1 has shape \(6, 3, 8\), expected \(6, 2, 8\)"):
        load_pretrained(tmp_path / "clt")


# --- Gemma Scope 2 -------------------------------------------------------------------------
def _gs2_cfg(kind, layer="1", affine=False, width=N):
    hooks = {
        "sae": ("model.layers.{L}.output", "model.layers.{L}.output"),
        "transcoder": (
            "model.layers.{L}.pre_feedforward_layernorm.output",
            "model.layers.{L}.post_feedforward_layernorm.output",
        ),
        "clt": (
            "model.layers.{L}.pre_feedforward_layernorm.output",
            "model.layers.{L}.post_feedforward_layernorm.output",
        ),
    }[kind]
    return {
        "hf_hook_point_in": hooks[0].replace("{L}", layer),
        "hf_hook_point_out": hooks[1].replace("{L}", layer),
        "width": width,
        "model_name": "google/gemma-3-270m-pt",
        "architecture": "jump_relu",
        "l0": 10,
        "affine_connection": affine,
        "type": kind,
    }


def _write_gs2(folder: Path, kind: str, affine: bool):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(_gs2_cfg(kind, affine=affine)))
    st = {
        "w_enc": _rand(D, N, seed=1),  # [d_in, width]
        "w_dec": _rand(N, D, seed=2),
        "b_enc": _rand(N, seed=3) * 0.1,
        "b_dec": _rand(D, seed=4),
        "threshold": _rand(N, seed=5).abs() * 0.5,
    }
    if affine:
        st["affine_skip_connection"] = _rand(D, D, seed=6) * 0.1  # [d_in, d_out], x @ A
    save_file(st, str(folder / "params.safetensors"))
    return st


def test_gemmascope2_transcoder_and_sae_outputs(tmp_path):
    x = _x()
    st = _write_gs2(tmp_path / "layer_1_width_16k_l0_small_affine", "transcoder", True)
    pre = load_pretrained(tmp_path / "layer_1_width_16k_l0_small_affine")
    assert pre.fmt == "gemmascope2" and list(pre.dictionaries) == ["blocks.1.mlp_in"]
    d = pre.dictionaries["blocks.1.mlp_in"]
    assert d.cfg.out_hook_name == "blocks.1.mlp_out" and d.cfg.skip
    p = x @ st["w_enc"] + st["b_enc"]
    acts = p.relu() * (p > st["threshold"])  # Gemma Scope 2's own formula
    torch.testing.assert_close(d.encode(x), acts, atol=1e-5, rtol=1e-5)
    want = acts @ st["w_dec"] + st["b_dec"] + x @ st["affine_skip_connection"]
    torch.testing.assert_close(d(x), want, atol=1e-5, rtol=1e-5)

    st = _write_gs2(tmp_path / "layer_1_width_16k_l0_small", "sae", False)
    d = load_pretrained(tmp_path / "layer_1_width_16k_l0_small").dictionaries["blocks.1.resid_post"]
    assert not d.cfg.is_transcoder
    p = x @ st["w_enc"] + st["b_enc"]  # nothing subtracted from x
    acts = p.relu() * (p > st["threshold"])
    torch.testing.assert_close(d(x), acts @ st["w_dec"] + st["b_dec"], atol=1e-5, rtol=1e-5)


def _write_gs2_clt(folder: Path, L=3, *, leak=False):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(_gs2_cfg("clt", "{all}", width=L * N)))
    W_enc, b_enc, thr, W_dec, b_dec = [], [], [], [], []
    for i in range(L):
        w_dec = _rand(N, L, D, seed=60 + i)  # decoders into EVERY layer
        if not (leak and i == 2):
            w_dec[:, :i] = 0  # causality lives in the weights
        st = {
            "w_enc": _rand(D, N, seed=10 + i),
            "w_dec": w_dec,
            "b_enc": _rand(N, seed=20 + i) * 0.1,
            "b_dec": _rand(D, seed=30 + i),
            "threshold": _rand(N, seed=40 + i).abs() * 0.3,
        }
        save_file(st, str(folder / f"params_layer_{i}.safetensors"))
        W_enc.append(st["w_enc"].t())
        b_enc.append(st["b_enc"])
        thr.append(st["threshold"])
        W_dec.append(w_dec[:, i:])
        b_dec.append(st["b_dec"])
    return W_enc, b_enc, thr, W_dec, torch.stack(b_dec)


def test_gemmascope2_clt_outputs_and_refusals(tmp_path):
    W_enc, b_enc, thr, W_dec, b_dec = _write_gs2_clt(tmp_path / "clt" / "width_262k_l0_medium")
    pre = load_pretrained(tmp_path / "clt" / "width_262k_l0_medium")
    assert pre.fmt == "gemmascope2-clt" and pre.model_name == "google/gemma-3-270m-pt"
    x = _x(L=3)
    acts, out = _clt_reference(x, W_enc, b_enc, thr, W_dec, b_dec)
    torch.testing.assert_close(pre.clt.encode(x), acts, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pre.clt(x), out, atol=1e-5, rtol=1e-5)

    _write_gs2_clt(tmp_path / "leak", leak=True)
    with pytest.raises(UserError, match="layer-2 features decode into earlier layers"):
        load_pretrained(tmp_path / "leak")
    _write_gs2_clt(tmp_path / "affine")
    cfg = json.loads((tmp_path / "affine" / "config.json").read_text())
    (tmp_path / "affine" / "config.json").write_text(json.dumps({**cfg, "affine_connection": True}))
    with pytest.raises(UserError, match="affine .skip. CLT"):
        load_pretrained(tmp_path / "affine")


# --- writers: the published layouts, and back ------------------------------------------------
def test_export_transcoders_in_circuit_tracer_layout(tmp_path):
    from lmscope.dictionaries import build, transcoder_config

    dicts = {}
    for i, arch in enumerate(["jumprelu", "batchtopk"]):
        d = build(transcoder_config(i, D, N, arch=arch, k=2, skip=True, seed=i))
        with torch.no_grad():
            for p in d.parameters():
                p.add_(_rand(*p.shape, seed=7 + i) * 0.1)
            d.act_scale.fill_(1.7)
            d.act_scale_out.fill_(0.6)
            if arch == "batchtopk":
                d.topk_threshold.fill_(0.2)
        dicts[i] = d
    save_circuit_tracer_transcoders(dicts, tmp_path / "ct", model_name="tiny-llama")
    import yaml

    cfg = yaml.safe_load((tmp_path / "ct" / "config.yaml").read_text())
    assert cfg == {
        "model_kind": "transcoder_set",
        "model_name": "tiny-llama",
        "feature_input_hook": "mlp.hook_in",
        "feature_output_hook": "hook_mlp_out",
    }
    st = load_file(str(tmp_path / "ct" / "layer_1.safetensors"))
    assert {k: tuple(v.shape) for k, v in st.items()} == {
        "W_enc": (N, D),
        "W_dec": (N, D),
        "b_enc": (N,),
        "b_dec": (D,),
        "activation_function.threshold": (N,),
        "W_skip": (D, D),
    }
    assert all(v.dtype == torch.float32 for v in st.values())
    x = _x()
    back = load_pretrained(tmp_path / "ct").dictionaries
    for i, d in dicts.items():
        torch.testing.assert_close(back[f"blocks.{i}.mlp_in"](x), d(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(back[f"blocks.{i}.mlp_in"].encode(x), d.encode(x))
    with pytest.raises(UserError, match="TopK transcoder"):
        save_circuit_tracer_transcoders(
            {0: build(transcoder_config(0, D, N, arch="topk", k=2))}, tmp_path / "topk"
        )


def test_clt_writers_roundtrip(tmp_path):
    from lmscope.dictionaries.clt import CLTConfig, CrossLayerTranscoder
    from lmscope.dictionaries.io.clt_state import clt_to_state

    clt = CrossLayerTranscoder(CLTConfig(n_layers=3, d_model=D, d_sae=N, arch="jumprelu"))
    with torch.no_grad():
        clt.b_enc.add_(0.3)
        clt.threshold.copy_(_rand(3, N, seed=1).abs() * 0.1)
        clt.act_scale_in.copy_(torch.tensor([1.5, 0.5, 2.0]))
        clt.act_scale_out.copy_(torch.tensor([0.7, 1.3, 3.0]))
    x = _x(L=3)
    fields, st = clt_to_state(clt)
    write_circuit_tracer_clt(fields, st, tmp_path / "ct", model_name="tiny-llama")
    names = sorted(p.name for p in (tmp_path / "ct").iterdir())
    assert names == [
        "W_dec_0.safetensors",
        "W_dec_1.safetensors",
        "W_dec_2.safetensors",
        "W_enc_0.safetensors",
        "W_enc_1.safetensors",
        "W_enc_2.safetensors",
        "config.yaml",
    ]
    e1 = load_file(str(tmp_path / "ct" / "W_enc_1.safetensors"))
    assert {k: tuple(v.shape) for k, v in e1.items()} == {
        "W_enc_1": (N, D),
        "b_enc_1": (N,),
        "b_dec_1": (D,),
        "threshold_1": (N,),
    }
    assert tuple(load_file(str(tmp_path / "ct" / "W_dec_1.safetensors"))["W_dec_1"].shape) == (
        N,
        2,
        D,
    )
    write_gemmascope2_clt(fields, st, tmp_path / "gs2")
    p1 = load_file(str(tmp_path / "gs2" / "params_layer_1.safetensors"))
    assert {k: tuple(v.shape) for k, v in p1.items()} == {
        "w_enc": (D, N),
        "w_dec": (N, 3, D),
        "b_enc": (N,),
        "b_dec": (D,),
        "threshold": (N,),
    }
    assert json.loads((tmp_path / "gs2" / "config.json").read_text())["type"] == "clt"
    for read, folder in ((read_circuit_tracer_clt, "ct"), (read_gemmascope2_clt, "gs2")):
        pre = load_pretrained(tmp_path / folder)
        torch.testing.assert_close(pre.clt(x), clt(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(pre.clt.encode(x), clt.encode(x), atol=1e-5, rtol=1e-5)
        assert read(tmp_path / folder)[0]["n_layers"] == 3


# --- the Hugging Face cache (offline) --------------------------------------------------------
def _fake_hf_cache(cache: Path, repo: str, files: dict[str, Path]) -> None:
    """A Hugging Face hub cache entry as huggingface_hub lays it out (refs/main -> snapshot)."""
    sha = "0" * 39 + "1"
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(sha)
    for rel, src in files.items():
        dst = root / "snapshots" / sha / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(src.read_bytes())


def test_loads_from_hf_cache_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # circuit-tracer style: a config.yaml whose transcoders are hf:// Gemma Scope 2 files in
    # another repository (as mwhanna/gemma-scope-2-* point at google/gemma-scope-2-*).
    src = tmp_path / "src"
    gs = {}
    for i in range(2):
        _write_gs2(src / f"layer_{i}", "transcoder", True)
        gs[f"transcoder_all/layer_{i}_width_16k_l0_small_affine/params.safetensors"] = (
            src / f"layer_{i}" / "params.safetensors"
        )
    cache = tmp_path / "hub"
    _fake_hf_cache(cache, "google/gemma-scope-2-270m-pt", gs)
    uris = "".join(f"- hf://google/gemma-scope-2-270m-pt/{k}\n" for k in gs)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        "model_name: google/gemma-3-270m\nmodel_kind: transcoder_set\n"
        "feature_input_hook: mlp.hook_in\nfeature_output_hook: hook_mlp_out\n"
        f"transcoders:\n{uris}"
    )
    _fake_hf_cache(cache, "mwhanna/gemma-scope-2-270m-pt", {"transcoder_all/config.yaml": cfg})
    pre = load_pretrained("mwhanna/gemma-scope-2-270m-pt/transcoder_all", cache_dir=cache)
    assert pre.fmt == "circuit-tracer"
    assert list(pre.dictionaries) == ["blocks.0.mlp_in", "blocks.1.mlp_in"]
    assert pre.dictionaries["blocks.1.mlp_in"].cfg.skip
    with pytest.raises(UserError, match="local Hugging Face cache.*unset HF_HUB_OFFLINE"):
        load_pretrained("nobody/nothing-here", cache_dir=cache)


# --- into an atlas, checked against the model; the CLI ----------------------------------------
def test_import_into_atlas_and_export_back(tmp_path, tiny_llama, tiny_model_dir, capsys):
    from lmscope.cli import main
    from lmscope.dictionaries.folder import DictionaryFolder
    from lmscope.dictionaries.io import import_pretrained

    lm = tiny_llama
    files = {}
    src = tmp_path / "ct"
    src.mkdir()
    (src / "config.yaml").write_text(
        "model_name: tiny\nmodel_kind: transcoder_set\n"
        "feature_input_hook: mlp.hook_in\nfeature_output_hook: hook_mlp_out\n"
    )
    d = lm.d_model
    for i in range(lm.n_layers):
        files[i] = {
            "W_enc": _rand(N, d, seed=i),
            "W_dec": _rand(N, d, seed=i + 10),
            "b_enc": torch.zeros(N),
            "b_dec": _rand(d, seed=i + 20),
            "activation_function.threshold": torch.full((N,), 0.1),
        }
        save_file(files[i], str(src / f"layer_{i}.safetensors"))
    import_pretrained(src, tmp_path / "atlas", lm)
    folder = DictionaryFolder.open(tmp_path / "atlas")
    assert folder.model == lm.name and len(folder.select()) == lm.n_layers
    loaded = folder.load(folder.select(), lm)  # check_fits against the model passes
    x = _x(d=d)
    st = files[1]
    want = _jump(x @ st["W_enc"].t(), 0.1) @ st["W_dec"] + st["b_dec"]
    torch.testing.assert_close(loaded["blocks.1.mlp_in"](x), want, atol=1e-5, rtol=1e-5)

    # the CLI: export the atlas back to circuit-tracer's files (identical tensors) ...
    argv = ["export", str(tmp_path / "atlas"), "--format", "circuit-tracer", "--out"]
    assert main([*argv, str(tmp_path / "out")]) == 0
    back = load_file(str(tmp_path / "out" / "layer_1.safetensors"))
    for k, v in st.items():
        torch.testing.assert_close(back[k], v)
    # ... and refuse, in one line with exit 2, files whose width is not the model's
    bad = tmp_path / "bad"
    _write_ct_set(bad)  # d_model 8, the tiny model has 32
    model_dir = str(tiny_model_dir("llama", n_layers=3))
    capsys.readouterr()
    argv = ["atlas", "from-pretrained", str(bad), "--out", str(tmp_path / "a2")]
    assert main([*argv, "--model", model_dir]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "expects width 8" in err and "has 32" in err
    assert not (tmp_path / "a2").exists()  # nothing written before the check


def test_gemmascope2_from_hf_cache_equals_saelens(tmp_path, monkeypatch):
    """The same Gemma Scope 2 files through SAELens' own Gemma Scope 2 loader and through ours."""
    sae_lens = pytest.importorskip("sae_lens", reason="install the extra: pip install '.[saelens]'")
    import huggingface_hub.constants as hf_constants
    import sae_lens.loading.pretrained_sae_loaders as sl_loaders

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo, cache = "google/gemma-scope-2-270m-pt", tmp_path / "hub"
    folder = "transcoder_all/layer_{layer}_width_16k_l0_small_affine"
    files = {}
    for i in range(2):
        src = tmp_path / "src" / f"layer_{i}"
        _write_gs2(src, "transcoder", True)
        cfg = _gs2_cfg("transcoder", layer=str(i), affine=True)
        (src / "config.json").write_text(json.dumps(cfg))
        for name in ("config.json", "params.safetensors"):
            files[f"{folder.format(layer=i)}/{name}"] = src / name
    _fake_hf_cache(cache, repo, files)
    ours = load_pretrained(f"{repo}/{folder}", n_layers=2, cache_dir=cache).dictionaries

    # SAELens fetches tensor shapes with an HTTP range request; read the cached file's instead.
    snap = next((cache / f"models--{repo.replace('/', '--')}" / "snapshots").iterdir())
    monkeypatch.setattr(
        sl_loaders,
        "get_safetensors_tensor_shapes",
        lambda repo_id, fn: {k: list(v.shape) for k, v in load_file(str(snap / fn)).items()},
    )
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    x = _x()
    for i in range(2):
        cfg, st, _ = sl_loaders.gemma_3_sae_huggingface_loader(repo, folder.format(layer=i))
        sae = sae_lens.SAE.from_dict(cfg)
        sae.load_state_dict(st)
        d = ours[f"blocks.{i}.mlp_in"]
        assert cfg["hook_name"] == f"blocks.{i}.hook_mlp_in" and d.cfg.skip
        with torch.no_grad():
            torch.testing.assert_close(d.encode(x), sae.encode(x), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(d(x), sae(x), atol=1e-5, rtol=1e-5)


def test_import_clt_checks_the_model(tmp_path, tiny_llama):
    from lmscope.dictionaries.clt import CrossLayerTranscoder
    from lmscope.dictionaries.io import import_pretrained

    lm = tiny_llama  # 3 layers, d_model 32
    _write_ct_clt(tmp_path / "small", L=3)  # d_model 8
    with pytest.raises(UserError, match="expects width 8 at blocks.0.mlp_in but model .* has 32"):
        import_pretrained(tmp_path / "small", tmp_path / "o1", lm)
    _write_ct_clt(tmp_path / "short", L=2)
    with pytest.raises(UserError, match="has 2 layers but model .* has 3"):
        import_pretrained(tmp_path / "short", tmp_path / "o2", lm)
    W_enc, b_enc, thr, W_dec, b_dec = _write_ct_clt(tmp_path / "fits", L=3, d=lm.d_model)
    pre, out = import_pretrained(tmp_path / "fits", tmp_path / "clt", lm)
    clt = CrossLayerTranscoder.load(out)  # lmscope's own CLT folder
    assert clt.cfg.model_name == lm.name
    x = _x(L=3, d=lm.d_model)
    want = _clt_reference(x, W_enc, b_enc, thr, W_dec, b_dec)[1]
    torch.testing.assert_close(clt(x), want, atol=1e-5, rtol=1e-5)
    # and back out through the CLI: a CLT folder exports to circuit-tracer's files unchanged
    from lmscope.cli import main

    assert main(["export", str(out), "--format", "circuit-tracer", "--out", f"{tmp_path}/b"]) == 0
    for i in range(3):
        back = load_file(str(tmp_path / "b" / f"W_dec_{i}.safetensors"))[f"W_dec_{i}"]
        torch.testing.assert_close(back, W_dec[i])
        enc = load_file(str(tmp_path / "b" / f"W_enc_{i}.safetensors"))
        torch.testing.assert_close(enc[f"W_enc_{i}"], W_enc[i])
        torch.testing.assert_close(enc[f"threshold_{i}"], thr[i])


def _damage(kind: str, root: Path) -> Path:
    """A source folder damaged one way (what users download half of, or point at by mistake)."""
    if kind == "empty_dir":
        root.mkdir()
    elif kind == "truncated_layer":
        _write_ct_set(root)
        p = root / "layer_1.safetensors"
        p.write_bytes(p.read_bytes()[:100])
    elif kind == "binary_config_yaml":
        _write_ct_set(root)
        (root / "config.yaml").write_bytes(bytes(range(256)) * 4)
    elif kind == "config_yaml_list":
        _write_ct_set(root)
        (root / "config.yaml").write_text("- a\n- b\n")
    elif kind == "missing_w_dec_file":
        _write_ct_clt(root)
        (root / "W_dec_2.safetensors").unlink()
    elif kind == "gs2_binary_config":
        _write_gs2(root, "transcoder", False)
        (root / "config.json").write_bytes(b"\xff\xfe\x00garbage")
    elif kind == "ct_negative_threshold":  # x * (x > t) < 0 for t < x < 0: not a JumpReLU of ours
        st = _write_ct_set(root)[0]
        st["activation_function.threshold"] = -st["activation_function.threshold"]
        save_file(st, str(root / "layer_0.safetensors"))
    return root


@pytest.mark.parametrize(
    "kind",
    [
        "empty_dir",
        "truncated_layer",
        "binary_config_yaml",
        "config_yaml_list",
        "missing_w_dec_file",
        "gs2_binary_config",
        "ct_negative_threshold",
    ],
)
def test_damaged_sources_are_one_line_exit_2(kind, tmp_path, capfd):
    from lmscope.cli import main

    src = _damage(kind, tmp_path / "src")
    capfd.readouterr()
    code = main(["atlas", "from-pretrained", str(src), "--out", str(tmp_path / "o")])
    err = capfd.readouterr().err
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 2 and "Traceback" not in err, err[-2000:]
    assert len(lines) == 1 and lines[0].startswith("lmscope: error: "), err[-2000:]
    assert not (tmp_path / "o").exists()


def test_hub_download_fetches_configs_then_only_the_named_weights(tmp_path, monkeypatch):
    """Online, a hub folder is fetched in two steps (configs, then the weights its layout names),
    so pointing at a folder with hundreds of dictionaries below it never downloads them all."""
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    repo_root = tmp_path / "repo"
    _write_ct_set(repo_root / "sub")
    calls = []

    def fake_snapshot_download(repo_id, *, allow_patterns=None, local_files_only=False, **kw):
        calls.append((repo_id, allow_patterns, local_files_only, kw.get("revision")))
        return str(repo_root)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    pre = load_pretrained("org/repo/sub@v1")
    assert list(pre.dictionaries) == ["blocks.0.mlp_in", "blocks.1.mlp_in"]
    assert calls == [
        ("org/repo", ["sub/config.yaml", "sub/config.json", "sub/cfg.json"], False, "v1"),
        ("org/repo", ["sub/layer_*.safetensors"], False, "v1"),
    ]


def test_gemmascope2_negative_threshold_is_exactly_zero(tmp_path):
    """relu(pre) * (pre > t) for t < 0 is relu(pre): loaded as threshold 0, same outputs."""
    st = _write_gs2(tmp_path / "layer_1_x", "transcoder", False)
    thr = st["threshold"] - 0.4  # some negative, some positive
    save_file({**st, "threshold": thr}, str(tmp_path / "layer_1_x" / "params.safetensors"))
    d = load_pretrained(tmp_path / "layer_1_x").dictionaries["blocks.1.mlp_in"]
    x = _x()
    p = x @ st["w_enc"] + st["b_enc"]
    acts = p.relu() * (p > thr)
    assert bool((thr < 0).any()) and bool((acts > 0).any())
    torch.testing.assert_close(d.encode(x), acts, atol=1e-5, rtol=1e-5)
