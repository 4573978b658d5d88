"""Attribution graphs of long prompts on CPU: time and peak RSS against prompt length, lmscope
(under a memory limit, 8 GB by default: a laptop) next to circuit-tracer 0.5 on the same model and
the same transcoders.

Model: SmolLM2-135M-Instruct (fp32, CPU). Transcoders: the whole-model run's 30 TopK (k=32) skip
transcoders blocks.L.mlp_in -> mlp_out, 2,304 latents each (read-only; exported once to
circuit-tracer's single-layer layout: W_enc [d_sae, d_model], W_dec, b_enc, b_dec, W_skip, all
in raw units, loaded with `load_relu_transcoder` and given circuit-tracer's `TopK(32)` followed by a
ReLU, as lmscope's TopK).
Each row runs in a fresh process (peak RSS = ru_maxrss of that process, model and transcoders
included), niced, one at a time; a row that does not finish within --timeout is reported so.

    python bench/bench_graph_long.py --ct-python /work/scratch/ct-venv/bin/python
    python bench/bench_graph_long.py --lengths 16 --row-edges 4096     # top-edges vs dense

Prompt of n tokens: a fixed English paragraph repeated and cut at n tokens (BOS included); the
target is the model's top next token. Writes bench/results/graph_long.json (--out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
DICTS = "/work/scratch/wholerun/smollm2-135m/atlas/dictionaries"
TEXT = (
    "The river runs past the old mill, under three stone bridges, and out through the fields"
    " where farmers grow wheat and barley. In the spring the water rises and the children watch"
    " it from the bank, counting the boats that come down from the hills. Their grandmother"
    " tells them that the town was built by people who came from the north to trade wool and"
    " salt, and that the market square is older than the church. "
)


def prompt_of_length(tokenizer, n: int) -> str:
    """TEXT repeated, cut to the longest prefix with at most n tokens (BOS included)."""
    ids = tokenizer((TEXT * (n // 60 + 2)), add_special_tokens=False)["input_ids"][: n - 1]
    return tokenizer.decode(ids)


def export_ct(dicts: Path, out: Path) -> None:
    """The lmscope transcoders in circuit-tracer's single-layer layout (raw units)."""
    import torch
    from safetensors.torch import save_file

    from lmscope.dictionaries import load_dictionary
    from lmscope.dictionaries.dictmath import (
        decoder_bias,
        decoder_rows,
        encoder_affine,
        skip_term,
    )

    out.mkdir(parents=True, exist_ok=True)
    for L in range(30):
        tc = load_dictionary(dicts / f"blocks.{L}.mlp_in").eval()
        with torch.no_grad():
            aff = encoder_affine(tc)
            t = {
                "W_enc": aff.weight.t().contiguous(),
                "b_enc": aff.bias.contiguous(),
                "W_dec": decoder_rows(tc).contiguous(),
                "b_dec": decoder_bias(tc).contiguous(),
            }
            eye = torch.eye(tc.cfg.d_in)
            sk = skip_term(tc, eye)  # [d_in, d_out] = I @ W_skip_raw^T
            if sk is not None:
                t["W_skip"] = sk.t().contiguous()
        save_file({k: v.float().clone() for k, v in t.items()}, str(out / f"layer_{L}.safetensors"))
    (out / "k").write_text(str(tc.cfg.k))


def run_lmscope(args) -> dict:
    import torch

    from lmscope.dictionaries import load_dictionary
    from lmscope.models import load_model
    from lmscope.trace import build_graph, graph_json, graph_scores, prune
    from lmscope.trace.prune import circuit_tracer_scores

    torch.set_num_threads(args.threads)
    lm = load_model("smollm2-135m")
    tcs = {
        L: load_dictionary(Path(args.dictionaries) / f"blocks.{L}.mlp_in").eval()
        for L in range(lm.n_layers)
    }
    prompt = prompt_of_length(lm.tokenizer, args.n)
    lines: list[str] = []
    t, c = time.perf_counter(), time.process_time()
    g = build_graph(
        lm,
        tcs,
        prompt,
        max_feature_nodes=args.max_feature_nodes,
        batch_size=args.batch_size,
        max_memory_gb=args.max_memory_gb,
        row_edges=args.row_edges,
        log=lines.append,
    )
    pr = prune(g)
    full, pruned = graph_scores(g), graph_scores(g, pr)
    graph_json(g, pr)
    seconds, cpu = time.perf_counter() - t, time.process_time() - c
    ct = circuit_tracer_scores(g)
    return {
        "tool": "lmscope",
        "n_pos": g.n_pos,
        "seconds": seconds,
        "graph_cpu_seconds": cpu,
        "estimate": lines[0] if lines else None,
        "estimated_gb": g.stats["estimated_bytes"] / 2**30,
        "batch_size": g.stats["batch_size"],
        "row_edges": g.stats["row_edges"],
        "dropped_edge_share_mean": g.stats["dropped_edge_share_mean"],
        "dropped_edge_share_max": g.stats["dropped_edge_share_max"],
        "active_features": g.stats["active_features"],
        "feature_nodes": g.n_features,
        "backward_seconds": g.stats["backward_seconds"],
        "influence_seconds": g.stats["influence_seconds"],
        "replacement": full.replacement,
        "completeness": full.completeness,
        "pruned_replacement": pruned.replacement,
        "pruned_completeness": pruned.completeness,
        "ct_way_replacement": ct["replacement_score"],
        "ct_way_completeness": ct["completeness_score"],
        "kept_nodes": int(pr.node_mask.sum()),
        "kept_features": sorted(map(tuple, g.features[pr.node_mask[: g.n_features]].tolist())),
    }


def run_circuit_tracer(args) -> dict:
    import torch
    from check_circuit_tracer_export import compat_folder  # bench/ is on sys.path
    from circuit_tracer import ReplacementModel, attribute
    from circuit_tracer.graph import compute_graph_scores, prune_graph
    from circuit_tracer.transcoder.activation_functions import TopK
    from circuit_tracer.transcoder.single_layer_transcoder import (
        TranscoderSet,
        load_relu_transcoder,
    )
    from transformers import AutoTokenizer

    class ReluTopK(TopK):
        """circuit-tracer's TopK keeps the k largest pre-activations even when negative; lmscope's
        TopK ReLUs them (topk_codes), so without this the two tools trace different transcoders
        (at 64 tokens 60,480 active features against 56,111)."""

        def forward(self, x):
            return super().forward(x).clamp_min(0)

    torch.set_num_threads(args.threads)
    ct_dir = Path(args.ct_dir)
    cpu = torch.device("cpu")
    k = int((ct_dir / "k").read_text())
    tcs = {}
    for L in range(30):
        t = load_relu_transcoder(
            str(ct_dir / f"layer_{L}.safetensors"),
            L,
            device=cpu,
            lazy_encoder=False,
            lazy_decoder=False,
        )
        t.activation_function = ReluTopK(k)
        tcs[L] = t
    tset = TranscoderSet(
        tcs, feature_input_hook="mlp.hook_in", feature_output_hook="mlp.hook_out", scan="bench"
    )
    # transformers 4.x (circuit-tracer's pin) reads the rotary base only at the top level
    model_path = str(compat_folder(Path(args.model_path), ct_dir / "hf_model_v4_rope"))
    model = ReplacementModel.from_pretrained_and_transcoders(
        model_path, tset, backend="nnsight", device=cpu
    )
    prompt = prompt_of_length(AutoTokenizer.from_pretrained(model_path), args.n)
    t, c = time.perf_counter(), time.process_time()
    g = attribute(
        prompt, model, max_feature_nodes=args.max_feature_nodes, batch_size=args.batch_size
    )
    prune_graph(g, 0.8, 0.98)
    seconds, cpu = time.perf_counter() - t, time.process_time() - c
    rs, cs = compute_graph_scores(g)
    return {
        "tool": "circuit-tracer 0.5 (nnsight)",
        "n_pos": len(g.input_tokens),
        "seconds": seconds,
        "graph_cpu_seconds": cpu,
        "active_features": int(g.active_features.shape[0]),
        "feature_nodes": int(len(g.selected_features)),
        "ct_way_replacement": rs,
        "ct_way_completeness": cs,
    }


def child(args) -> None:
    try:
        row = (run_lmscope if args.child == "lmscope" else run_circuit_tracer)(args)
    except Exception as e:  # a refusal (UserError) or an out-of-memory is a result here
        row = {"tool": args.child, "error": f"{type(e).__name__}: {e}"}
    ru = resource.getrusage(resource.RUSAGE_SELF)
    row["peak_rss_gb"] = ru.ru_maxrss / 2**20
    row["cpu_seconds"] = ru.ru_utime + ru.ru_stime  # the whole process, model load included
    print("RESULT " + json.dumps(row))


def spawn(python: str, tool: str, n: int, args, row_edges: int | None = None) -> dict:
    cmd = ["nice", "-n", "5", python, __file__, "--child", tool, "--n", str(n)]
    for k in (
        "dictionaries",
        "ct_dir",
        "model_path",
        "max_feature_nodes",
        "batch_size",
        "max_memory_gb",
        "threads",
    ):
        cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
    if row_edges:
        cmd += ["--row-edges", str(row_edges)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    load = os.getloadavg()[0]
    t = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"tool": tool, "n": n, "error": f"did not finish in {args.timeout} s"}
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            r = json.loads(line[7:])
            r.update(n=n, load_before=load, wall=time.perf_counter() - t)
            return r
    return {"tool": tool, "n": n, "error": f"exit {p.returncode}: {p.stderr[-1500:]}"}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=16, help=argparse.SUPPRESS)
    ap.add_argument("--dictionaries", default=DICTS)
    ap.add_argument("--ct-dir", default="/tmp/lmscope-bench-graph-long/ct")
    ap.add_argument("--model-path", default="")
    ap.add_argument("--ct-python", default=None, help="circuit-tracer's venv python")
    ap.add_argument("--lengths", default="16,64,256,1024")
    ap.add_argument("--ct-lengths", default="16,64,256", help="lengths circuit-tracer runs")
    ap.add_argument("--ct-only", action="store_true", help="circuit-tracer rows only")
    ap.add_argument("--max-feature-nodes", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-memory-gb", type=float, default=8.0)
    ap.add_argument(
        "--row-edges", type=int, default=None, help="also this storage on the shortest prompt"
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: no spin-waits on a shared machine)",
    )
    ap.add_argument("--timeout", type=int, default=1800)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "graph_long.json"))
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    from bench_graph import _model_folder

    from lmscope.models import load_model

    lm = load_model("smollm2-135m")  # circuit-tracer reads the HF folder lmscope converts to
    args.model_path = str(lm.source.path if lm.source.kind != "gguf" else _model_folder(lm))
    del lm
    if args.ct_python and not (Path(args.ct_dir) / "k").exists():
        export_ct(Path(args.dictionaries), Path(args.ct_dir))
    rows = []
    ct_lengths = {int(n) for n in args.ct_lengths.split(",") if n}
    lengths = [int(x) for x in args.lengths.split(",") if x]
    for n in lengths:
        plan = [] if args.ct_only else [("lmscope", sys.executable, None)]
        if args.row_edges and n == lengths[0]:  # top edges vs dense, on the shortest prompt
            plan.append(("lmscope", sys.executable, args.row_edges))
        if args.ct_python and n in ct_lengths:
            plan.append(("circuit-tracer", args.ct_python, None))
        for tool, py, k in plan:
            r = spawn(py, tool, n, args, k)
            print(json.dumps({k_: v for k_, v in r.items() if k_ != "kept_features"}), flush=True)
            rows.append(r)
            Path(args.out).parent.mkdir(exist_ok=True)
            Path(args.out).write_text(
                json.dumps(
                    {
                        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                        "args": {k_: v for k_, v in vars(args).items() if k_ not in ("child",)},
                        "rows": rows,
                    },
                    indent=1,
                )
            )


if __name__ == "__main__":
    main()
