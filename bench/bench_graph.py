"""Attribution-graph build time and peak memory on the default model, side by side with
circuit-tracer.

Same model (SmolLM2-135M-Instruct, fp32, CPU), same 30 per-layer JumpReLU transcoders
mlp_in -> mlp_out (random, d_sae 4096, thresholds set so ~32 features fire per token on
the prompt), same prompt, same max_feature_nodes / batch size. Each measurement runs in a
fresh process (peak RSS = ru_maxrss of that process).

    .venv/bin/python bench/bench_graph.py                       # lmscope rows + circuit-tracer if
    .venv-ct exists
    .venv/bin/python bench/bench_graph.py --lengths 6,16,32     # graph time vs prompt length

circuit-tracer 0.5 runs in its own venv (python3 -m venv .venv-ct && .venv-ct/bin/pip install
torch==2.13.0 circuit-tracer) through its nnsight backend on the same HF model folder, with
the transcoders written in its local format (layer_{i}.safetensors: W_enc [d_tc, d_model],
W_dec [d_tc, d_model], b_enc, b_dec, activation_function.threshold).
Writes bench/results/graph.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "The capital of France is"
FILLER = (
    " a city that has been the seat of kings, the home of painters and writers, and a place"
    " where rivers, bridges and old streets meet the new parts of town where people live and work"
)


def prompt_of_length(tokenizer, n: int) -> str:
    """PROMPT extended with filler words until it has about n tokens (BOS included)."""
    words = (PROMPT + FILLER * 4).split(" ")
    text = PROMPT
    for k in range(len(PROMPT.split(" ")), len(words) + 1):
        text = " ".join(words[:k])
        if len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1 >= n:
            break
    return text


def make_transcoders(out: Path, d_sae: int, k_target: int) -> None:
    """Random JumpReLU transcoders in lmscope (SAELens) and circuit-tracer formats."""
    import torch
    from safetensors.torch import save_file

    from lmscope.dictionaries import build, transcoder_config
    from lmscope.models import load_model
    from lmscope.models.runtime import run

    lm = load_model("smollm2-135m")
    toks = lm.to_tokens(PROMPT)
    acts = run(lm, toks, capture=[f"blocks.{L}.mlp_in" for L in range(lm.n_layers)]).acts
    (out / "ct").mkdir(parents=True, exist_ok=True)
    for L in range(lm.n_layers):
        tc = build(transcoder_config(L, lm.d_model, d_sae, arch="jumprelu", seed=L))
        with torch.no_grad():
            pre = acts[f"blocks.{L}.mlp_in"][0] @ tc.W_enc + tc.b_enc  # [pos, d_sae]
            q = 1 - k_target / d_sae
            tc.log_threshold.fill_(math.log(max(float(pre[1:].flatten().quantile(q)), 1e-6)))
        tc.save(out / "lmscope" / f"blocks.{L}.mlp_in")
        save_file(
            {
                "W_enc": tc.W_enc.detach().t().contiguous(),
                "W_dec": tc.W_dec.detach().contiguous(),
                "b_enc": tc.b_enc.detach().clone(),
                "b_dec": tc.b_dec.detach().clone(),
                "activation_function.threshold": tc.threshold.detach().clone(),
            },
            str(out / "ct" / f"layer_{L}.safetensors"),
        )
    (out / "model_path").write_text(
        str(lm.source.path if lm.source.kind != "gguf" else _model_folder(lm))
    )


def _model_folder(lm) -> str:
    from lmscope.models.load import _gguf_cache_folder

    return str(_gguf_cache_folder(lm.source))


def run_lmscope(tc_dir: Path, prompt: str, max_feature_nodes: int, batch_size: int) -> dict:
    import torch

    from lmscope.dictionaries import load_dictionary
    from lmscope.models import load_model
    from lmscope.trace import build_graph, graph_scores, prune
    from lmscope.trace.prune import circuit_tracer_scores

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    lm = load_model("smollm2-135m")
    tcs = {
        L: load_dictionary(tc_dir / "lmscope" / f"blocks.{L}.mlp_in").eval()
        for L in range(lm.n_layers)
    }
    t = time.perf_counter()
    g = build_graph(lm, tcs, prompt, max_feature_nodes=max_feature_nodes, batch_size=batch_size)
    pr = prune(g)
    seconds = time.perf_counter() - t
    # Side by side with circuit-tracer, the scores are computed its way (the unexpanded active
    # features dropped); lmscope's own scores count them as error.
    s, ct = graph_scores(g), circuit_tracer_scores(g)
    return {
        "tool": "lmscope",
        "n_pos": g.n_pos,
        "seconds": seconds,
        "active_features": g.stats["active_features"],
        "feature_nodes": g.n_features,
        "backward_seconds": g.stats["backward_seconds"],
        "forward_seconds": g.stats["forward_seconds"],
        "influence_seconds": g.stats["influence_seconds"],
        "replacement_score": ct["replacement_score"],
        "completeness_score": ct["completeness_score"],
        "lmscope_replacement_score": s.replacement,
        "lmscope_completeness_score": s.completeness,
        "kept_nodes": int(pr.node_mask.sum()),
    }


def run_circuit_tracer(tc_dir: Path, prompt: str, max_feature_nodes: int, batch_size: int) -> dict:
    import torch
    from circuit_tracer import ReplacementModel, attribute
    from circuit_tracer.graph import compute_graph_scores, prune_graph
    from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    from check_circuit_tracer_export import compat_folder  # bench/ is on sys.path (script dir)

    # transformers 4.x reads a top-level rope_theta only: without it SmolLM2 ran at base 10,000
    # instead of 100,000 (a different model; fixed 2026-12-03, the older rows were rerun)
    model_path = str(
        compat_folder(Path((tc_dir / "model_path").read_text()), tc_dir / "hf_model_v4_rope")
    )
    n_layers = len(list((tc_dir / "ct").glob("layer_*.safetensors")))
    paths = {L: str(tc_dir / "ct" / f"layer_{L}.safetensors") for L in range(n_layers)}
    tset = load_transcoder_set(
        paths,
        scan="bench",
        feature_input_hook="mlp.hook_in",
        feature_output_hook="mlp.hook_out",
        device=torch.device("cpu"),
        lazy_encoder=False,
        lazy_decoder=False,
    )
    model = ReplacementModel.from_pretrained_and_transcoders(
        model_path, tset, backend="nnsight", device=torch.device("cpu")
    )
    t = time.perf_counter()
    g = attribute(prompt, model, max_feature_nodes=max_feature_nodes, batch_size=batch_size)
    prune_graph(g, 0.8, 0.98)
    seconds = time.perf_counter() - t
    rs, cs = compute_graph_scores(g)
    return {
        "tool": "circuit-tracer 0.5 (nnsight)",
        "n_pos": len(g.input_tokens),
        "seconds": seconds,
        "active_features": int(g.active_features.shape[0]),
        "feature_nodes": int(len(g.selected_features)),
        "replacement_score": rs,
        "completeness_score": cs,
    }


def child(args) -> None:
    fn = run_lmscope if args.tool == "lmscope" else run_circuit_tracer
    row = fn(Path(args.tc_dir), args.prompt, args.max_feature_nodes, args.batch_size)
    row["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print("RESULT " + json.dumps(row))


def spawn(python: str, tool: str, tc_dir: Path, prompt: str, mfn: int, bs: int) -> dict | None:
    cmd = [
        python,
        __file__,
        "--child",
        tool,
        "--tc-dir",
        str(tc_dir),
        "--prompt",
        prompt,
        "--max-feature-nodes",
        str(mfn),
        "--batch-size",
        str(bs),
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    print(f"{tool} failed:\n{p.stderr[-3000:]}", file=sys.stderr)
    return None


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--tool", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--tc-dir", default="/tmp/lmscope-bench-graph")
    ap.add_argument("--prompt", default=PROMPT)
    ap.add_argument(
        "--lengths", default="", help="also time prompts of about these token counts, e.g. 16,32"
    )
    ap.add_argument("--d-sae", type=int, default=4096)
    ap.add_argument(
        "--k", type=int, default=32, help="features firing per token (threshold set to match)"
    )
    ap.add_argument("--max-feature-nodes", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument(
        "--all-features", action="store_true", help="also build the graph over every active feature"
    )
    ap.add_argument("--no-peer", action="store_true", help="skip circuit-tracer")
    args = ap.parse_args()
    if args.child:
        args.tool = args.child
        child(args)
        return
    tc_dir = Path(args.tc_dir)
    if not (tc_dir / "model_path").exists():
        make_transcoders(tc_dir, args.d_sae, args.k)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained((tc_dir / "model_path").read_text())
    prompts = [args.prompt] + [prompt_of_length(tok, int(n)) for n in args.lengths.split(",") if n]
    peer = ROOT / ".venv-ct" / "bin" / "python"
    rows = []
    for prompt in prompts:
        for mfn in sorted({args.max_feature_nodes} | ({100_000} if args.all_features else set())):
            r = spawn(sys.executable, "lmscope", tc_dir, prompt, mfn, args.batch_size)
            if r:
                r["max_feature_nodes"] = mfn
                rows.append(r)
                print(json.dumps(r))
            if peer.exists() and not args.no_peer:
                r = spawn(str(peer), "circuit-tracer", tc_dir, prompt, mfn, args.batch_size)
                if r:
                    r["max_feature_nodes"] = mfn
                    rows.append(r)
                    print(json.dumps(r))
    out = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_avg": os.getloadavg(),
        },
        "args": {k: v for k, v in vars(args).items() if k not in ("child", "tool")},
        "rows": rows,
    }
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "graph.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
