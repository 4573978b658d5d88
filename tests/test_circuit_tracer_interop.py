"""The real circuit-tracer package reads what lmscope writes, and lmscope reads what it writes.

circuit-tracer (0.5) pins its own TransformerLens and transformers, so it lives in its own
virtual environment and runs here as a subprocess. The test looks for that environment's python
in $LMSCOPE_CIRCUIT_TRACER_PYTHON, else in .venv-ct/ at the repository root (bench/bench_graph.py
uses the same folder), and is skipped with that reason when neither exists. To run it:

    python3 -m venv .venv-ct && .venv-ct/bin/pip install torch==2.13.0 circuit-tracer

Both directions, on random weights with non-trivial activation scales (so folding them into the
files matters), per-layer JumpReLU skip transcoders and a JumpReLU CLT:
1. lmscope writes (export), circuit-tracer loads through its own cache loader (which reads our
   config.yaml) and through load_transcoder_set/load_clt; its encode and reconstruction must
   equal lmscope's on the same inputs.
2. circuit-tracer builds random transcoders and saves them with its own `to_safetensors`;
   lmscope loads those files; lmscope's encode/decode must equal circuit-tracer's.
3. A Gemma Scope 2 transcoder file, read by circuit-tracer's Gemma Scope 2 loader and by ours.
4. On a real forward of a tiny Llama, circuit-tracer's replacement model (nnsight backend) with
   lmscope's export fires the same features with the same values as lmscope's mlp_in hooks, and
   builds a graph. Its nnsight backend needs nnsight<0.8 (docs/benchmarks.md); with a newer one
   this part is skipped with that reason.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
L, D, N, B = 3, 16, 24, 7


def _ct_python() -> str | None:
    env = os.environ.get("LMSCOPE_CIRCUIT_TRACER_PYTHON")
    cand = Path(env) if env else ROOT / ".venv-ct" / "bin" / "python"
    return str(cand) if cand.is_file() else None


CT_PYTHON = _ct_python()
pytestmark = pytest.mark.skipif(
    CT_PYTHON is None,
    reason="circuit-tracer's venv not found: set LMSCOPE_CIRCUIT_TRACER_PYTHON or create .venv-ct "
    "(python3 -m venv .venv-ct && .venv-ct/bin/pip install torch==2.13.0 circuit-tracer)",
)

# Runs inside circuit-tracer's venv. Reads x.safetensors, writes ct_out.safetensors.
SCRIPT = r"""
import sys, torch
from pathlib import Path
from safetensors.torch import load_file, save_file
from circuit_tracer.utils.caching import load_transcoders_from_cache
from circuit_tracer.transcoder.single_layer_transcoder import (
    SingleLayerTranscoder, TranscoderSet, load_transcoder_set)
from circuit_tracer.transcoder.cross_layer_transcoder import CrossLayerTranscoder, load_clt
from circuit_tracer.transcoder.activation_functions import JumpReLU

tmp = Path(sys.argv[1]); L, D, N = map(int, sys.argv[2:5])
cpu = torch.device("cpu")
x = load_file(str(tmp / "x.safetensors"))["x"]
out = {}

def recon(tc, x):  # what the replacement model reconstructs (all positions, nothing zeroed)
    return tc.compute_attribution_components(x, zero_positions=slice(0, 0))["reconstruction"]

# 1. what lmscope wrote, through circuit-tracer's cache loader (reads config.yaml) and direct loads
tset, cfg = load_transcoders_from_cache("lmscope/tc-set", cache_dir=tmp / "cache", device=cpu)
assert isinstance(tset, TranscoderSet) and tset.feature_input_hook == "mlp.hook_in", cfg
assert tset.feature_output_hook == "hook_mlp_out" and tset.skip_connection
out["set_enc"] = tset.encode(x)
out["set_dec"] = tset.decode(out["set_enc"], x)
out["set_recon"] = recon(tset, x)
paths = {i: str(tmp / "cache/lmscope/tc-set" / f"layer_{i}.safetensors") for i in range(L)}
t2 = load_transcoder_set(paths, scan="t", feature_input_hook="mlp.hook_in",
                         feature_output_hook="hook_mlp_out", device=cpu, lazy_encoder=False,
                         lazy_decoder=False)
out["set_enc2"] = t2.encode(x)
clt, cfg = load_transcoders_from_cache("lmscope/tc-clt", cache_dir=tmp / "cache", device=cpu,
                                       lazy_decoder=False)
assert isinstance(clt, CrossLayerTranscoder) and clt.n_layers == L, cfg
out["clt_enc"] = clt.encode(x)
out["clt_recon"] = recon(clt, x)
clt2 = load_clt(str(tmp / "cache/lmscope/tc-clt"), device=cpu, dtype=torch.float32)
out["clt_recon2"] = recon(clt2, x)

# 2. circuit-tracer's own random transcoders, saved by its own writers
g = torch.Generator().manual_seed(0)
def rnd(*s): return torch.randn(*s, generator=g)
tcs = {}
for i in range(L):
    t = SingleLayerTranscoder(D, N, JumpReLU(rnd(N).abs() * 0.3, 0.1), i, skip_connection=True,
                              device=cpu, dtype=torch.float32)
    with torch.no_grad():
        for p in (t.W_enc, t.W_dec, t.b_enc, t.b_dec, t.W_skip):
            p.copy_(rnd(*p.shape) * 0.5)
    tcs[i] = t
own = TranscoderSet(tcs, feature_input_hook="mlp.hook_in", feature_output_hook="hook_mlp_out")
own.to_safetensors(str(tmp / "own_set"))
out["own_set_enc"] = own.encode(x)
out["own_set_dec"] = own.decode(out["own_set_enc"], x)
c = CrossLayerTranscoder(L, N, D, activation_function="jump_relu", lazy_decoder=False,
                         device=cpu, dtype=torch.float32)
with torch.no_grad():
    for p in (c.W_enc, c.b_enc, c.b_dec, *c.W_dec):
        p.copy_(rnd(*p.shape) * 0.5)
    c.activation_function.threshold.copy_(rnd(L, 1, N).abs() * 0.3)
c.to_safetensors(str(tmp / "own_clt"))
out["own_clt_enc"] = c.encode(x)
out["own_clt_recon"] = recon(c, x)
# 3. a Gemma Scope 2 transcoder file through circuit-tracer's own Gemma Scope 2 loader
from circuit_tracer.transcoder.single_layer_transcoder import load_gemma_scope_2_transcoder
gs = load_gemma_scope_2_transcoder(str(tmp / "gs2" / "params.safetensors"), 0, device=cpu)
out["gs2_enc"] = gs.encode(x[0])
out["gs2_fwd"] = gs(x[0])
save_file({k: v.detach().contiguous() for k, v in out.items()}, str(tmp / "ct_out.safetensors"))
print("OK")
"""


def _scramble(module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)


def test_circuit_tracer_reads_ours_and_we_read_its(tmp_path):
    from lmscope.dictionaries import build, transcoder_config
    from lmscope.dictionaries.clt import CLTConfig, CrossLayerTranscoder
    from lmscope.dictionaries.io import (
        load_pretrained,
        save_circuit_tracer_clt,
        save_circuit_tracer_transcoders,
    )

    tcs = {}
    for i in range(L):
        d = build(transcoder_config(i, D, N, arch="jumprelu", skip=True, seed=i))
        _scramble(d, i)
        with torch.no_grad():
            d.b_enc.add_(0.5)  # every position has active features (see recon() above)
            d.act_scale.fill_(1.0 + i)
            d.act_scale_out.fill_(0.5 + i)
        tcs[i] = d.eval()
    clt = CrossLayerTranscoder(CLTConfig(n_layers=L, d_model=D, d_sae=N, arch="jumprelu"))
    _scramble(clt, 10)
    with torch.no_grad():
        clt.b_enc.add_(0.5)
        clt.threshold.abs_()
        clt.act_scale_in.copy_(torch.tensor([1.5, 0.5, 2.0]))
        clt.act_scale_out.copy_(torch.tensor([0.7, 1.3, 3.0]))
    clt.eval()
    save_circuit_tracer_transcoders(tcs, tmp_path / "cache/lmscope/tc-set", model_name="tiny")
    save_circuit_tracer_clt(clt, tmp_path / "cache/lmscope/tc-clt", model_name="tiny")
    x = torch.randn(L, B, D, generator=torch.Generator().manual_seed(5))
    save_file({"x": x}, str(tmp_path / "x.safetensors"))
    g = torch.Generator().manual_seed(6)
    (tmp_path / "gs2").mkdir()
    save_file(  # Gemma Scope 2's keys and orientation (w_enc [d_in, n], x @ affine_skip)
        {
            "w_enc": torch.randn(D, N, generator=g),
            "w_dec": torch.randn(N, D, generator=g),
            "b_enc": torch.randn(N, generator=g) * 0.1,
            "b_dec": torch.randn(D, generator=g),
            "threshold": torch.rand(N, generator=g),
            "affine_skip_connection": torch.randn(D, D, generator=g) * 0.1,
        },
        str(tmp_path / "gs2" / "params.safetensors"),
    )
    (tmp_path / "gs2" / "config.json").write_text(
        '{"hf_hook_point_in": "model.layers.0.pre_feedforward_layernorm.output", '
        '"hf_hook_point_out": "model.layers.0.post_feedforward_layernorm.output", "width": 24, '
        '"model_name": "google/gemma-3-270m-pt", "architecture": "jump_relu", "l0": 10, '
        '"affine_connection": true, "type": "transcoder"}'
    )

    r = subprocess.run(
        [CT_PYTHON, "-c", SCRIPT, str(tmp_path), str(L), str(D), str(N)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""},
    )
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]
    ct = load_file(str(tmp_path / "ct_out.safetensors"))

    def close(a, b):
        torch.testing.assert_close(a.float(), b.float(), atol=2e-4, rtol=2e-4)

    with torch.no_grad():
        # 1. circuit-tracer on lmscope's export == lmscope
        enc = torch.stack([tcs[i].encode(x[i]) for i in range(L)])
        close(ct["set_enc"], enc)
        close(ct["set_enc2"], enc)
        want = torch.stack([tcs[i](x[i]) for i in range(L)])
        close(ct["set_dec"], want)
        close(ct["set_recon"], want)
        assert int((enc > 0).sum()) > 0 and int((enc == 0).sum()) > 0  # JumpReLU did cut
        close(ct["clt_enc"], clt.encode(x))
        close(ct["clt_recon"], clt(x))
        close(ct["clt_recon2"], clt(x))
        # 2. lmscope on circuit-tracer's own files == circuit-tracer
        own = load_pretrained(tmp_path / "own_set").dictionaries
        tc = [own[f"blocks.{i}.mlp_in"] for i in range(L)]
        close(ct["own_set_enc"], torch.stack([tc[i].encode(x[i]) for i in range(L)]))
        close(ct["own_set_dec"], torch.stack([tc[i](x[i]) for i in range(L)]))
        own_clt = load_pretrained(tmp_path / "own_clt").clt
        close(ct["own_clt_enc"], own_clt.encode(x))
        close(ct["own_clt_recon"], own_clt(x))
        # 3. the same Gemma Scope 2 file: circuit-tracer's loader == ours
        gs = load_pretrained(tmp_path / "gs2").dictionaries["blocks.0.mlp_in"]
        close(ct["gs2_enc"], gs.encode(x[0]))
        close(ct["gs2_fwd"], gs(x[0]))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))


GRAPH_SCRIPT = r"""
import sys, torch
from pathlib import Path
from safetensors.torch import load_file, save_file
try:
    from circuit_tracer.replacement_model.replacement_model_nnsight import NNSightReplacementModel
except Exception as e:  # its nnsight backend needs nnsight<0.8
    print(f"NO_NNSIGHT {type(e).__name__}: {e}")
    sys.exit(0)
from circuit_tracer import ReplacementModel, attribute
from circuit_tracer.utils.caching import load_transcoders_from_cache

tmp = Path(sys.argv[1]); cpu = torch.device("cpu")
tset, _ = load_transcoders_from_cache("lmscope/tiny", cache_dir=tmp / "cache", device=cpu,
                                      lazy_decoder=False)
model = ReplacementModel.from_pretrained_and_transcoders(
    str(tmp / "model"), tset, backend="nnsight", device=cpu, dtype=torch.float32)
toks = load_file(str(tmp / "toks.safetensors"))["toks"][0]
logits, acts = model.get_activations(toks)
g = attribute(toks, model, max_feature_nodes=100, batch_size=64, verbose=False)
save_file({"logits": logits[0].contiguous(), "acts": acts.to_dense().contiguous(),
           "n_active": torch.tensor(g.active_features.shape[0])}, str(tmp / "ct_out.safetensors"))
print("OK")
"""


def test_circuit_tracer_replacement_model_sees_our_features(tmp_path, tiny_llama, tiny_model_dir):
    """On a real (tiny Llama) forward, circuit-tracer's replacement model with lmscope's exported
    transcoders reads the same MLP inputs as lmscope's mlp_in hooks: the same features fire with
    the same values (position 0 aside: circuit-tracer zeroes BOS), and it builds a graph."""
    import json
    import shutil

    from lmscope.dictionaries import build, transcoder_config
    from lmscope.dictionaries.io import save_circuit_tracer_transcoders
    from lmscope.models.runtime import run

    lm = tiny_llama
    src = Path(tiny_model_dir("llama", n_layers=3))
    shutil.copytree(src, tmp_path / "model")
    tok_cfg = tmp_path / "model" / "tokenizer_config.json"  # transformers 4 (its pin) names it so
    fixed = {**json.loads(tok_cfg.read_text()), "tokenizer_class": "PreTrainedTokenizerFast"}
    tok_cfg.write_text(json.dumps(fixed))
    tcs = {}
    for i in range(lm.n_layers):
        d = build(transcoder_config(i, lm.d_model, 64, arch="jumprelu", skip=True, seed=i))
        _scramble(d, i)
        with torch.no_grad():
            d.log_threshold.fill_(-1.0)
        tcs[i] = d.eval()
    save_circuit_tracer_transcoders(tcs, tmp_path / "cache/lmscope/tiny", model_name=lm.name)
    toks = lm.to_tokens("hello world the cat")
    save_file({"toks": toks.cpu()}, str(tmp_path / "toks.safetensors"))
    res = run(lm, toks, capture=[f"blocks.{i}.mlp_in" for i in range(lm.n_layers)], logits=True)

    r = subprocess.run(
        [CT_PYTHON, "-c", GRAPH_SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    if "NO_NNSIGHT" in r.stdout:
        pytest.skip(f"circuit-tracer's nnsight backend does not import: {r.stdout.strip()[:200]}")
    ct = load_file(str(tmp_path / "ct_out.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(ct["logits"], res.logits[0].float(), atol=1e-4, rtol=1e-4)
        ours = torch.stack([tcs[i].encode(res.acts[f"blocks.{i}.mlp_in"][0]) for i in range(3)])
    assert int((ours[:, 1:] > 0).sum()) > 10
    torch.testing.assert_close(ct["acts"][:, 1:], ours[:, 1:], atol=1e-4, rtol=1e-4)
    assert int(ct["n_active"]) == int((ours[:, 1:] > 0).sum())
