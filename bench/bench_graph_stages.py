"""Peak RSS by stage of the 6-token graph of bench/bench_graph.py (issue 16: why that graph peaked
at 2.24 GB when it was 1.79 GB before).

Same setup as bench_graph.py's lmscope row: SmolLM2-135M-Instruct (fp32, CPU), 30 random JumpReLU
transcoders blocks.L.mlp_in -> mlp_out (d_sae 4096, thresholds set so ~32 features fire per token),
"The capital of France is", 500 feature nodes, batch 64, 1 torch thread. Prints RSS and the peak
(VmHWM, reset before the graph through /proc/self/clear_refs) after each stage. Linux only.

    python bench/bench_graph_stages.py                            # glibc's default heap
    MALLOC_MMAP_THRESHOLD_=65536 python bench/bench_graph_stages.py   # big blocks mmap'd
"""

from __future__ import annotations

import gc
import math

import torch


def status(key: str) -> float:
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def mark(what: str) -> None:
    print(f"{what:20s} RSS {status('VmRSS'):.3f} GB  peak {status('VmHWM'):.3f} GB", flush=True)


def main() -> None:
    torch.set_num_threads(1)
    from lmscope.dictionaries import build, transcoder_config
    from lmscope.models import load_model
    from lmscope.models.runtime import run
    from lmscope.trace import build_graph, graph_scores, prune
    from lmscope.trace.prune import circuit_tracer_scores

    mark("imports")
    lm = load_model("smollm2-135m")
    mark("model loaded")
    prompt = "The capital of France is"
    acts = run(lm, lm.to_tokens(prompt), capture=[f"blocks.{L}.mlp_in" for L in range(30)]).acts
    tcs = {}
    for L in range(lm.n_layers):
        tc = build(transcoder_config(L, lm.d_model, 4096, arch="jumprelu", seed=L))
        with torch.no_grad():  # as bench_graph.make_transcoders: ~32 features per token
            pre = acts[f"blocks.{L}.mlp_in"][0] @ tc.W_enc + tc.b_enc
            q = float(pre[1:].flatten().quantile(1 - 32 / 4096))
            tc.log_threshold.fill_(math.log(max(q, 1e-6)))
        tcs[L] = tc.eval()
    del acts, pre
    gc.collect()
    mark("transcoders built")
    open("/proc/self/clear_refs", "w").write("5")  # the peak from here on is the graph's
    g = build_graph(lm, tcs, prompt, max_feature_nodes=500, batch_size=64, max_memory_gb=16)
    mark("build_graph")
    pr = prune(g)
    graph_scores(g, pr)
    circuit_tracer_scores(g)
    mark("prune + scores")
    print(
        f"active features {g.stats['active_features']}, estimate "
        f"{g.stats['estimated_new_bytes'] / 2**30:.2f} GB on top of the weights"
    )


if __name__ == "__main__":
    main()
