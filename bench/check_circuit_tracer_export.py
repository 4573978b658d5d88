"""Real-model check of the circuit-tracer export: on SmolLM2-135M, circuit-tracer's replacement
model loaded with lmscope's exported transcoders fires the same features, with the same values,
as lmscope's own mlp_in hooks, and its logits equal lmscope's.

    .venv/bin/python bench/check_circuit_tracer_export.py --ct-python .venv-ct/bin/python

Step 1 (this venv): 30 random JumpReLU skip transcoders (2,304 features, thresholds at the
pre-activation quantile that leaves ~32 active per token on the prompt, input scale != 1 so the
folding into the files matters), exported with `save_circuit_tracer_transcoders` into a
circuit-tracer cache folder; lmscope's encodes of the prompt are saved. Step 2 (circuit-tracer's
venv, nnsight backend, which needs nnsight<0.8): load the transcoders through circuit-tracer's
cache loader and the model from lmscope's dequantized model folder, then compare.

The model folder is written by transformers 5, which stores the rotary base under
`rope_parameters`; transformers 4 (circuit-tracer's pin) reads only a top-level `rope_theta` and
would silently use 10,000 instead of SmolLM2's 100,000 (logits off by up to 3.6 on a 14-token
prompt). The compat folder below copies it to the top level.
Writes bench/results/circuit_tracer_export.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "The capital of France is Paris, and the capital of Italy is"
K_TARGET, D_SAE = 32, 2304


def compat_folder(src: Path, dst: Path) -> Path:
    """The model folder as transformers 4.x reads it: weights linked, the tokenizer class and the
    rotary base spelled the old way."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if (dst / f.name).exists() or (dst / f.name).is_symlink():
            continue
        if f.name == "tokenizer_config.json":
            cfg = json.loads(f.read_text())
            cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
            (dst / f.name).write_text(json.dumps(cfg))
        elif f.name == "config.json":
            cfg = json.loads(f.read_text())
            rope = cfg.get("rope_parameters") or {}
            if "rope_theta" in rope:
                cfg["rope_theta"] = rope["rope_theta"]
            (dst / f.name).write_text(json.dumps(cfg))
        else:
            (dst / f.name).symlink_to(f)
    return dst


def step_lmscope(work: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from lmscope.dictionaries import build, transcoder_config
    from lmscope.dictionaries.io import save_circuit_tracer_transcoders
    from lmscope.models import load_model
    from lmscope.models.load import _gguf_cache_folder
    from lmscope.models.runtime import run

    lm = load_model("smollm2-135m")
    toks = lm.to_tokens(PROMPT)
    res = run(lm, toks, capture=[f"blocks.{i}.mlp_in" for i in range(lm.n_layers)], logits=True)
    tcs, enc = {}, {}
    for i in range(lm.n_layers):
        d = build(transcoder_config(i, lm.d_model, D_SAE, arch="jumprelu", skip=True, seed=i))
        x = res.acts[f"blocks.{i}.mlp_in"][0]
        with torch.no_grad():
            d.act_scale.fill_(float(lm.d_model**0.5 / x[1:].norm(dim=-1).mean()))
            pre = d.pre_acts_normalized(x * d.act_scale)
            q = 1 - K_TARGET / D_SAE
            d.log_threshold.fill_(float(pre[1:].flatten().quantile(q).log()))
        tcs[i] = d.eval()
        enc[f"enc_{i}"] = d.encode(x).detach().contiguous()
    save_circuit_tracer_transcoders(tcs, work / "cache/lmscope/smollm2", model_name=lm.name)
    save_file(
        {"toks": toks, "logits": res.logits[0].float().contiguous(), **enc},
        str(work / "lmscope.safetensors"),
    )
    src = lm.source.path if lm.source.kind != "gguf" else _gguf_cache_folder(lm.source)
    (work / "model_path").write_text(str(compat_folder(Path(src), work / "hf_model_v4")))


def step_circuit_tracer(work: Path) -> dict:
    import time

    import torch
    from circuit_tracer import ReplacementModel
    from circuit_tracer.utils.caching import load_transcoders_from_cache
    from safetensors.torch import load_file

    cpu = torch.device("cpu")
    t = time.perf_counter()
    tset, _ = load_transcoders_from_cache(
        "lmscope/smollm2", cache_dir=work / "cache", device=cpu, lazy_decoder=False
    )
    model = ReplacementModel.from_pretrained_and_transcoders(
        (work / "model_path").read_text(), tset, backend="nnsight", device=cpu, dtype=torch.float32
    )
    ref = load_file(str(work / "lmscope.safetensors"))
    logits, acts = model.get_activations(ref["toks"][0])
    theirs = acts.to_dense()[:, 1:]  # circuit-tracer zeroes BOS
    ours = torch.stack([ref[f"enc_{i}"] for i in range(theirs.shape[0])])[:, 1:]
    both = (theirs > 0) & (ours > 0)
    return {
        "prompt": PROMPT,
        "positions_compared": int(ours.shape[1]),
        "layers": int(ours.shape[0]),
        "features_per_layer": int(ours.shape[2]),
        "active_lmscope": int((ours > 0).sum()),
        "active_circuit_tracer": int((theirs > 0).sum()),
        "flipped": int(((theirs > 0) != (ours > 0)).sum()),
        "max_abs_diff_both_active": float((theirs - ours).abs()[both].max()),
        "max_activation": float(ours.abs().max()),
        "logits_max_abs_diff": float((logits[0] - ref["logits"]).abs().max()),
        "seconds_load_and_forward": time.perf_counter() - t,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ct-python", default=str(ROOT / ".venv-ct" / "bin" / "python"))
    ap.add_argument("--work", default=str(ROOT / "bench" / ".cache" / "ct-export"))
    ap.add_argument("--step", choices=["all", "circuit-tracer"], default="all")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.step == "circuit-tracer":
        print("RESULT " + json.dumps(step_circuit_tracer(work)))
        return
    step_lmscope(work)
    r = subprocess.run(
        [args.ct_python, __file__, "--step", "circuit-tracer", "--work", str(work)],
        capture_output=True,
        text=True,
        # its own venv: our PYTHONPATH (this checkout) must not shadow its packages
        env={**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "HF_HUB_OFFLINE": "1"},
    )
    line = next((x for x in r.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        sys.exit(f"circuit-tracer step failed:\n{r.stderr[-3000:]}")
    row = json.loads(line[len("RESULT ") :])
    print(json.dumps(row, indent=2))
    out = ROOT / "bench" / "results" / "circuit_tracer_export.json"
    out.write_text(json.dumps(row, indent=2) + "\n")


if __name__ == "__main__":
    main()
