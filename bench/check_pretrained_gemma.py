"""Real gemma3-270m: (1) the module paths Gemma Scope 2 names carry the mapped lmscope activations
in a real forward, and the MLP's own output is refused; (2) 18 Gemma Scope 2 layout skip
transcoders (random weights, exact layout and widths, 256 features) in a Hugging Face cache
import through `lmscope atlas from-pretrained RELEASE` (the release name, offline).

    PYTHONPATH=. python bench/check_pretrained_gemma.py OUT_DIR   # needs gemma3-270m installed
    then: lmscope scan OUT_DIR/atlas "The capital of France is"   (the atlas every command opens)

Output: bench/results/pretrained_gemma.txt. It checks equality and refusals, not speed.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

import huggingface_hub.constants as hf_constants
import torch
from safetensors.torch import save_file

from lmscope.cli import main as cli
from lmscope.errors import UserError
from lmscope.models import hook_names as hn
from lmscope.models import load_model

RELEASE = "gemma-scope-2-270m-pt-transcoders-16k-small-affine"


def check_module_paths(lm) -> None:
    names = [
        "model.layers.7.pre_feedforward_layernorm.output",
        "model.layers.7.post_feedforward_layernorm",
        "model.layers.7.post_attention_layernorm",
        "model.layers.7",
    ]
    seen, handles = {}, []
    for n in names:
        mod = lm.model.get_submodule(n.removesuffix(".output"))
        handles.append(
            mod.register_forward_hook(
                lambda m, a, o, n=n: seen.__setitem__(n, o[0] if isinstance(o, tuple) else o)
            )
        )
    hooks = {n: hn.to_lmscope(n, lm.hooks) for n in names}
    try:
        ids = lm.to_tokens("The capital of France is")
        acts = lm.run(ids, capture=sorted(set(hooks.values())), logits=True).acts
    finally:
        for h in handles:
            h.remove()
    for n, h in hooks.items():
        err = (acts[h].float() - seen[n].float()).abs().max().item()
        print(f"{n} -> {h}: max |diff| {err:.2e}")
    for bad in ("model.layers.7.mlp", "blocks.7.mlp.hook_out"):
        try:
            hn.to_lmscope(bad, lm.hooks)
            print("NOT refused", bad)
        except UserError as e:
            print("refused:", str(e)[:140])


def write_release(cache: Path, n_layers: int, d: int, n: int = 256) -> None:
    """The release's folders as huggingface_hub caches them (refs/main -> snapshot)."""
    sha = "0" * 39 + "1"
    repo = cache / "models--google--gemma-scope-2-270m-pt"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(sha)
    g = torch.Generator().manual_seed(0)
    for L in range(n_layers):
        f = repo / "snapshots" / sha / f"transcoder_all/layer_{L}_width_16k_l0_small_affine"
        f.mkdir(parents=True, exist_ok=True)
        cfg = {
            "hf_hook_point_in": f"model.layers.{L}.pre_feedforward_layernorm.output",
            "hf_hook_point_out": f"model.layers.{L}.post_feedforward_layernorm.output",
            "width": n,
            "model_name": "google/gemma-3-270m",
            "architecture": "jump_relu",
            "l0": 10,
            "affine_connection": True,
            "type": "transcoder",
        }
        (f / "config.json").write_text(json.dumps(cfg))
        st = {
            "w_enc": torch.randn(d, n, generator=g) * 0.05,
            "w_dec": torch.randn(n, d, generator=g) * 0.05,
            "b_enc": torch.zeros(n),
            "b_dec": torch.zeros(d),
            "threshold": torch.full((n,), 0.5),
            "affine_skip_connection": torch.randn(d, d, generator=g) * 0.01,
        }
        save_file(st, str(f / "params.safetensors"))


def main(root: Path) -> None:
    torch.set_num_threads(1)
    root.mkdir(parents=True, exist_ok=True)
    os.environ["HF_HUB_OFFLINE"] = "1"
    hf_constants.HF_HUB_CACHE = str(root / "hub")
    t0 = time.perf_counter()
    lm = load_model("gemma3-270m")
    print("model", lm.name, lm.n_layers, lm.d_model, f"{time.perf_counter() - t0:.1f}s")
    check_module_paths(lm)
    write_release(root / "hub", lm.n_layers, lm.d_model)
    t, c = time.perf_counter(), time.process_time()
    rc = cli(["atlas", "from-pretrained", RELEASE, "--out", str(root / "atlas"), "--force"])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"from-pretrained rc {rc} wall {time.perf_counter() - t:.1f}s "
        f"cpu {time.process_time() - c:.1f}s peak RSS {peak:.0f} MB"
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
