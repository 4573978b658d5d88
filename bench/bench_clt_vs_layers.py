"""Per-layer skip transcoders vs one cross-layer transcoder on SmolLM2, on 12 fresh prompts
(issue 16, Must 4).

Two dictionary sets with the same total feature count, trained on the same tokens (same corpus,
split, seed, batch size, shuffle buffer and token count; checked here from their recorded
training documents):

    lmscope train --model smollm2-135m --hooks 'blocks.*.mlp_in' --transcode --skip \\
        --arch topk --width 288 --k 16 --tokens 65536 --batch-size 1024 --lr 4e-3 \\
        --dtype float32 --model-dtype float32 --buffer-mb 512 --seed 0 --out LAYERS
    lmscope train --clt --model smollm2-135m --hooks 'blocks.*.mlp_in' \\
        --arch topk --width 288 --k 16 --tokens 65536 --batch-size 1024 --lr 4e-3 \\
        --dtype float32 --model-dtype float32 --buffer-mb 512 --seed 0 --out CLT

(each under `/usr/bin/time -v ... 2> X.time`, whose CPU seconds, wall clock and peak RSS this
bench reads with --time-layers/--time-clt). Then

    python bench/bench_clt_vs_layers.py --layers LAYERS --clt CLT \\
        --time-layers layers.time --time-clt clt.time --out bench/results/clt_vs_layers.json

(or in two runs, `--sets layers` while the CLT still trains, then `--sets clt --clt CLT`: a run
adds to the --out file an earlier one wrote)

measures, for each set:

1. Held-out reconstruction on the corpus's test split (documents checked disjoint from both
   sets' training documents): FVU per layer (sum of squared errors / sum of squared deviations
   from the layer's held-out mean, over text tokens), its mean over the 30 layers; and the added
   loss CE(all 30 MLP outputs replaced at once) - CE(clean) in nats per token, the replacement
   run sequentially (each layer reads the already-replaced stream; BOS and special positions keep
   the real MLP output). 95% bootstrap intervals over contexts, and of the paired difference.
2. For each prompt of bench/prompts/clt_vs_layers.json, the attribution graph of the model's own
   top-1 next token (lmscope.trace.build_graph, --max-feature-nodes, pruned at 0.8 / 0.98):
   replacement and completeness (full and pruned, lmscope's definitions, docs/trace.md item 5);
   the number of nodes that carry 80% of the influence on the logits; and two path depths of
   the pruned graph: `mean_hops` = the influence-weighted mean number of edges on the paths from
   the logits back to the token embeddings (sum_k k I_k(tokens) / sum_k I_k(tokens), I_k = w B^k
   on the pruned, row-normalized |adjacency|), and `mean_layer_span` = the mean over kept edges
   of layer(target) - layer(source), weighted by each edge's influence B[t, s] (I_t + w_t)
   (tokens at layer -1, logits at layer n_layers, a CLT feature at its encoder's layer), and
   `feature_edge_span`, the same over the kept edges whose source is a feature; and where the
   kept features sit: `deepest_kept_layer` and `kept_layers` (how many layers hold one).
   Per-prompt results are written as they come (a killed run keeps what it finished).
3. Medians over the prompts of each metric for each set and the paired bootstrap 95% interval of
   the median of the per-prompt differences (CLT - per-layer); with 12 prompts it is wide.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ROOT / "bench" / "prompts" / "clt_vs_layers.json"
METRICS = (
    "replacement",
    "completeness",
    "pruned_replacement",
    "pruned_completeness",
    "nodes_80",
    "kept_features",
    "mean_hops",
    "mean_layer_span",
    "feature_edge_span",
    "deepest_kept_layer",
    "kept_layers",
    "cpu_seconds",
)


# --- training cost and data ------------------------------------------------------------------
def parse_time_v(path: str | None) -> dict | None:
    """CPU seconds, wall seconds and peak RSS from a `/usr/bin/time -v` report."""
    if not path:
        return None
    txt = Path(path).read_text()

    def num(pat: str) -> float:
        m = re.search(pat, txt)
        if not m:
            raise SystemExit(f"{path}: no '{pat}' line; pass the stderr of /usr/bin/time -v")
        return float(m.group(1))

    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", txt)
    parts = [float(p) for p in wall.group(1).split(":")] if wall else [0.0]
    secs = sum(p * 60**i for i, p in enumerate(reversed(parts)))
    user, sys_ = num(r"User time \(seconds\): ([\d.]+)"), num(r"System time \(seconds\): ([\d.]+)")
    return {
        "cpu_s": round(user + sys_, 1),
        "user_s": user,
        "sys_s": sys_,
        "wall_s": round(secs, 1),
        "peak_rss_gb": round(num(r"Maximum resident set size \(kbytes\): (\d+)") / 2**20, 2),
    }


SAME_DATA = (
    "model",
    "model_dtype",
    "corpus",
    "from_store",
    "ctx_len",
    "tokens",
    "batch_size",
    "buffer_mb",
    "model_batch",
    "seed",
    "hooks",
    "width",
    "k",
    "lr",
    "dtype",
)
"""Training settings that must agree for the two sets to have seen the same tokens in the same
order (and to be the same size): the stream is a deterministic function of these."""


def training_documents(layers: Path, clt: Path) -> dict:
    """Whether both sets were trained on the same data: their saved training configs agree on
    SAME_DATA, and their recorded training documents are identical (a run finished from an
    interrupted checkpoint records none: said so)."""
    from lmscope.capture.documents import read_keys

    cfgs = [json.loads((p / "train" / "config.json").read_text()) for p in (layers, clt)]
    differ = {k: [c.get(k) for c in cfgs] for k in SAME_DATA if cfgs[0].get(k) != cfgs[1].get(k)}
    lay = sorted((layers / "dictionaries").glob("blocks.*.mlp_in/train_documents.npy"))
    keys = [read_keys(p) for p in lay]
    ck = read_keys(clt / "dictionaries" / "clt" / "train_documents.npy")
    recorded = ck.size > 0 and all(k.size > 0 for k in keys)
    atl = json.loads((layers / "atlas.json").read_text())
    cat = json.loads((clt / "atlas.json").read_text())
    return {
        "settings_that_differ": differ,
        "same_settings": not differ,
        "per_layer_dictionaries": len(keys),
        "documents_recorded": bool(recorded),
        "documents": int(ck.size),
        "identical_documents": (
            bool(all(np.array_equal(k, ck) for k in keys)) if recorded else None
        ),
        "tokens_per_layer_set": sorted({e.get("tokens") for e in atl["dictionaries"].values()}),
        "tokens_clt": cat["clts"]["clt"]["tokens"],
        "keys": np.unique(np.concatenate([ck, *keys])),
    }


# --- held-out reconstruction and spliced loss ------------------------------------------------
def _recon_layer(tc, x: Tensor) -> Tensor:
    """A per-layer transcoder's raw MLP-output reconstruction of x [..., d]."""
    flat = x.reshape(-1, x.shape[-1])
    acts = tc.encode(flat)
    rec = tc.decode(acts, flat) if tc.W_skip is not None else tc.decode(acts)
    return rec.view(*x.shape[:-1], rec.shape[-1])


class _CLTSplice:
    """Forward hooks on every MLP: the output replaced by the CLT's reconstruction, layer by
    layer, from the (already replaced) stream's MLP inputs."""

    def __init__(self, clt) -> None:
        self.clt = clt
        self.acts: list[Tensor] = []

    def out(self, layer: int, x: Tensor) -> Tensor:
        c = self.clt
        pre = (x * c.act_scale_in[layer]) @ c.W_enc[layer] + c.b_enc[layer]  # [..., n]
        if c.cfg.arch == "topk":
            v, i = pre.topk(c.cfg.k, dim=-1)
            a = torch.zeros_like(pre).scatter_(-1, i, v.relu())
        else:
            a = pre * (pre > c.threshold[layer])
        self.acts.append(a)
        rec = c.b_dec[layer] / c.act_scale_out[layer]
        for s in range(layer + 1):
            rec = rec + self.acts[s] @ c.decoder_to(s, layer)
        return rec


def _spliced_logits(lm, tokens: Tensor, keep: Tensor, make_out) -> Tensor:
    """Logits with every MLP output replaced by make_out(layer, mlp_in) where keep [b, pos]."""
    from lmscope.models.runtime import run

    handles = []

    def hook(layer):
        def f(mod, inp, out):
            return torch.where(keep[..., None], make_out(layer, inp[0]).to(out.dtype), out)

        return f

    try:
        for i, part in enumerate(lm.hooks.parts):
            handles.append(part.mlp.register_forward_hook(hook(i)))
        return run(lm, tokens, logits=True).logits
    finally:
        for h in handles:
            h.remove()


def heldout(lm, tcs: dict, clt, *, tokens: int, train_keys: np.ndarray, batch: int = 8) -> dict:
    """Per-context sums for FVU and the spliced CE of both sets on the test split."""
    from lmscope.capture.documents import overlap
    from lmscope.dictionaries.evaluate import _ce_rows, heldout_contexts
    from lmscope.models.runtime import run
    from lmscope.models.tokens import token_mask

    seen: set[int] = set()
    ctxs = heldout_contexts(lm, "default", tokens=tokens, ctx_len=128, seen=seen)
    ov = overlap(np.array(sorted(seen), dtype=np.uint64), train_keys)
    if ov:
        raise SystemExit(f"{ov} held-out documents were in the training data")
    L = lm.n_layers
    hooks = [f"blocks.{i}.mlp_{w}" for i in range(L) for w in ("in", "out")]
    names = ("n", "tok", "ce_clean", "ce_layers", "ce_clt", "sq", "sum", "err_layers", "err_clt")
    rows: dict[str, list] = {k: [] for k in names}
    for b0 in range(0, len(ctxs), batch):
        toks = torch.stack(ctxs[b0 : b0 + batch])  # [b, pos]
        keep = token_mask(lm, toks)
        with torch.inference_mode():
            clean = run(lm, toks, capture=hooks, logits=True)
            x = torch.stack([clean.acts[f"blocks.{i}.mlp_in"].float() for i in range(L)])
            t = torch.stack([clean.acts[f"blocks.{i}.mlp_out"].float() for i in range(L)])
            # [L, b, pos, d]; per-layer reconstructions from the clean inputs
            r_lay = torch.stack([_recon_layer(tcs[i], x[i]) for i in range(L)])
            r_clt = clt(x.flatten(1, 2)).view_as(t)
            m = keep[None, :, :, None].float()  # [1, b, pos, 1]
            rows["sq"].append((t.pow(2) * m).sum((2, 3)).T)  # [b, L]
            rows["sum"].append((t * m).sum(2).transpose(0, 1))  # [b, L, d]
            rows["err_layers"].append(((r_lay - t).pow(2) * m).sum((2, 3)).T)
            rows["err_clt"].append(((r_clt - t).pow(2) * m).sum((2, 3)).T)
            ce, n = _ce_rows(clean.logits, toks, keep)
            rows["ce_clean"].append(ce)
            rows["n"].append(n)
            lg = _spliced_logits(lm, toks, keep, lambda i, xi: _recon_layer(tcs[i], xi))
            rows["ce_layers"].append(_ce_rows(lg, toks, keep)[0])
            sp = _CLTSplice(clt)
            lg = _spliced_logits(lm, toks, keep, sp.out)
            rows["ce_clt"].append(_ce_rows(lg, toks, keep)[0])
        rows["tok"].append(keep.sum(1))  # text tokens (FVU); CE counts its targets in "n"
    out = {k: torch.cat(v).double() for k, v in rows.items()}
    out["contexts"] = len(ctxs)
    out["documents"] = len(seen)
    return out


def _fvu(r: dict, idx: np.ndarray, which: str) -> np.ndarray:
    """[L] FVU per layer on the contexts idx (with repetition: a bootstrap sample)."""
    n = r["tok"][idx].sum()
    sq, s = r["sq"][idx].sum(0), r["sum"][idx].sum(0)  # [L], [L, d]
    var = sq - s.pow(2).sum(-1) / n
    return (r[f"err_{which}"][idx].sum(0) / var).numpy()


def _added(r: dict, idx: np.ndarray, which: str) -> float:
    return float((r[f"ce_{which}"][idx].sum() - r["ce_clean"][idx].sum()) / r["n"][idx].sum())


def heldout_summary(r: dict, samples: int = 2000, seed: int = 0) -> dict:
    nctx = r["sq"].shape[0]
    allx = np.arange(nctx)
    rng = np.random.default_rng(seed)
    boots = rng.integers(0, nctx, size=(samples, nctx))
    out: dict = {"contexts": r["contexts"], "documents": r["documents"]}
    out["tokens"] = int(r["tok"].sum())
    for which in ("layers", "clt"):
        out[which] = {
            "fvu_by_layer": [round(float(v), 4) for v in _fvu(r, allx, which)],
            "fvu_mean_over_layers": float(_fvu(r, allx, which).mean()),
            "fvu_median_over_layers": float(np.median(_fvu(r, allx, which))),
            "added_nats": _added(r, allx, which),
        }
    out["ce_clean"] = float(r["ce_clean"].sum() / r["n"].sum())
    stats = {"fvu_mean_over_layers": [], "added_nats": []}
    diffs = {"fvu_mean_over_layers": [], "added_nats": []}
    per = {w: {k: [] for k in stats} for w in ("layers", "clt")}
    for b in boots:
        for w in ("layers", "clt"):
            per[w]["fvu_mean_over_layers"].append(float(_fvu(r, b, w).mean()))
            per[w]["added_nats"].append(_added(r, b, w))
        for k in diffs:
            diffs[k].append(per["clt"][k][-1] - per["layers"][k][-1])
    for w in ("layers", "clt"):
        for k in stats:
            out[w][f"{k}_ci95"] = [float(np.percentile(per[w][k], q)) for q in (2.5, 97.5)]
    out["clt_minus_layers"] = {
        k: {
            "value": out["clt"][k] - out["layers"][k],
            "ci95": [float(np.percentile(v, q)) for q in (2.5, 97.5)],
        }
        for k, v in diffs.items()
    }
    return out


# --- graphs ----------------------------------------------------------------------------------
def node_layers(g) -> Tensor:
    """[n_nodes] layer of each node: features their (encoder) layer, errors theirs, tokens -1,
    logits n_layers."""
    lay = torch.empty(g.n_nodes, dtype=torch.float64)
    lay[: g.n_features] = g.features[:, 0].double()
    lay[g.error_start : g.token_start] = torch.arange(g.n_errors, dtype=torch.float64) // g.n_pos
    lay[g.token_start : g.logit_start] = -1
    lay[g.logit_start :] = g.n_layers
    return lay


def depth(g, Ap: Tensor) -> dict:
    """mean_hops and mean_layer_span of a pruned adjacency Ap [n, n] (module docstring)."""
    from lmscope.trace.prune import influence, logit_weights, normalize_rows

    w = logit_weights(g).double()
    B = normalize_rows(Ap.double())
    tok = torch.zeros(g.n_nodes, dtype=torch.bool)
    tok[g.token_start : g.logit_start] = True
    cur, num, den = w.clone(), 0.0, 0.0
    for k in range(1, 4 * g.n_layers + 8):
        cur = cur @ B
        reach = float(cur[tok].sum())
        num, den = num + k * reach, den + reach
        if float(cur.abs().sum()) < 1e-12:
            break
    infl = influence(B, w)
    score = B * (infl + w)[:, None]  # edge influence, rows = targets
    lay = node_layers(g)
    span = lay[:, None] - lay[None, :]
    tot = float(score.sum())
    fs = score[:, : g.n_features]  # edges whose source is a feature
    ftot = float(fs.sum())
    return {
        "mean_hops": num / den if den > 0 else float("nan"),
        "mean_layer_span": float((score * span).sum()) / tot if tot > 0 else float("nan"),
        "feature_edge_span": (
            float((fs * span[:, : g.n_features]).sum()) / ftot if ftot > 0 else float("nan")
        ),
    }


def graph_metrics(lm, dicts, prompt: str, max_nodes: int, batch_size: int) -> dict:
    from lmscope.trace import build_graph, graph_scores, prune
    from lmscope.trace.prune import pruned_adjacency

    t0, c0 = time.perf_counter(), time.process_time()
    g = build_graph(lm, dicts, prompt, max_feature_nodes=max_nodes, batch_size=batch_size)
    pr = prune(g)
    full, part = graph_scores(g), graph_scores(g, pr)
    Ap = pruned_adjacency(g, pr)
    nodes = pr.influence[: g.logit_start]
    order = nodes.sort(descending=True).values
    cum = order.cumsum(0) / order.sum().clamp_min(1e-30)
    nodes_80 = int((cum < 0.8).sum()) + 1
    kept_f = pr.node_mask[: g.n_features]
    kept_layers = g.features[kept_f, 0]
    res = {
        "target": g.logit_strs[0],
        "target_prob": float(g.logit_probs[0]),
        "n_pos": g.n_pos,
        "active_features": g.stats["active_features"],
        "feature_nodes": g.n_features,
        "unexpanded_features": g.stats["unexpanded_features"],
        "replacement": full.replacement,
        "completeness": full.completeness,
        "pruned_replacement": part.replacement,
        "pruned_completeness": part.completeness,
        "nodes_80": nodes_80,
        "kept_features": int(kept_f.sum()),
        "kept_nodes": int(pr.node_mask.sum()),
        "kept_feature_layers": sorted({int(v) for v in kept_layers}),
        "deepest_kept_layer": int(kept_layers.max()) if kept_layers.numel() else -1,
        "kept_layers": len({int(v) for v in kept_layers}),
        **depth(g, Ap),
        "seconds": round(time.perf_counter() - t0, 1),
        "cpu_seconds": round(time.process_time() - c0, 1),
    }
    return res


def paired(a: list[float], b: list[float], samples: int = 10000, seed: int = 0) -> dict:
    """Medians of a and b, and the median of the paired differences b - a with its 95%
    percentile-bootstrap interval over the items."""
    x, y = np.asarray(a, float), np.asarray(b, float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    dlt = y - x
    idx = np.random.default_rng(seed).integers(0, len(dlt), size=(samples, len(dlt)))
    meds = np.median(dlt[idx], axis=1)
    return {
        "n": int(len(dlt)),
        "median_layers": float(np.median(x)),
        "median_clt": float(np.median(y)),
        "median_diff_clt_minus_layers": float(np.median(dlt)),
        "ci95": [float(np.percentile(meds, 2.5)), float(np.percentile(meds, 97.5))],
        "clt_higher_count": int((dlt > 0).sum()),
    }


def summarize(items: list[dict]) -> dict:
    out = {}
    done = [it for it in items if "layers" in it and "clt" in it]
    if not done:
        return out
    for it in done:  # results written before these two were recorded: derive them
        for s in ("layers", "clt"):
            lay = it[s]["kept_feature_layers"]
            it[s].setdefault("deepest_kept_layer", max(lay) if lay else -1)
            it[s].setdefault("kept_layers", len(lay))
    for m in METRICS:
        out[m] = paired([it["layers"][m] for it in done], [it["clt"][m] for it in done])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", required=True, help="output folder of the per-layer training")
    ap.add_argument("--clt", help="output folder of the CLT training (needed unless --sets layers)")
    ap.add_argument("--sets", default="layers,clt", help="whose graphs to build this run")
    ap.add_argument("--prompts", default=str(PROMPTS))
    ap.add_argument("--time-layers", help="/usr/bin/time -v report of the per-layer training")
    ap.add_argument("--time-clt", help="/usr/bin/time -v report of the CLT training")
    ap.add_argument("--heldout-tokens", type=int, default=4096)
    ap.add_argument("--max-feature-nodes", type=int, default=4096)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "clt_vs_layers.json"))
    a = ap.parse_args()
    from lmscope.cli.trace import load_atlas
    from lmscope.dictionaries.clt import CrossLayerTranscoder
    from lmscope.trace import check_transcoders

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    sets = [x for x in a.sets.split(",") if x]
    if not set(sets) <= {"layers", "clt"} or ("clt" in sets and not a.clt):
        raise SystemExit("--sets is layers, clt or layers,clt; clt needs --clt")
    out = Path(a.out)
    # A later run (e.g. --sets clt once the CLT is trained) adds to what an earlier one wrote.
    res: dict = json.loads(out.read_text()) if out.is_file() else {}
    layers = Path(a.layers)
    lm, dicts, _ = load_atlas(str(layers), model=None, device="cpu")
    tcs = check_transcoders(lm, dicts)
    res["machine"] = f"{platform.machine()} {os.cpu_count()} cpus (shared)"
    res["torch_threads"] = torch.get_num_threads()
    res.setdefault("sets", {})["layers"] = {
        "what": f"{len(tcs)} skip transcoders blocks.L.mlp_in -> mlp_out",
        "d_sae": tcs[0].cfg.d_sae,
        "k": getattr(tcs[0].cfg, "k", None),
        "features": sum(t.cfg.d_sae for t in tcs.values()),
    }
    cost = res.setdefault("training_cost", {})
    if a.time_layers:
        cost["layers"] = parse_time_v(a.time_layers)
    if a.time_clt:
        cost["clt"] = parse_time_v(a.time_clt)
    settings = {
        "max_feature_nodes": a.max_feature_nodes,
        "batch_size": a.batch_size,
        "node_threshold": 0.8,
        "edge_threshold": 0.98,
    }
    if res.setdefault("graph_settings", settings) != settings:
        raise SystemExit(f"{out} was made with other graph settings: {res['graph_settings']}")
    res.setdefault("commands", []).append(
        "python bench/bench_clt_vs_layers.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(a).items() if v is not None)
    )

    def save() -> None:
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(res, indent=1))
        tmp.replace(out)

    models: dict = {"layers": tcs}
    if a.clt:
        cltp = Path(a.clt)
        clt = CrossLayerTranscoder.load(cltp / "dictionaries" / "clt")
        models["clt"] = clt
        res["sets"]["clt"] = {
            "what": f"one CLT over {clt.n_layers} layers",
            "d_sae_per_layer": clt.d_sae,
            "k": clt.cfg.k,
            "features": clt.cfg.n_features,
        }
        docs = training_documents(layers, cltp)
        train_keys = docs.pop("keys")
        res["training_data"] = docs
        if "heldout" not in res:
            t0 = time.perf_counter()
            r = heldout(lm, tcs, clt, tokens=a.heldout_tokens, train_keys=train_keys)
            res["heldout"] = heldout_summary(r)
            res["heldout"]["seconds"] = round(time.perf_counter() - t0, 1)
            save()
            print(json.dumps({k: res["heldout"][k] for k in ("tokens", "clt_minus_layers")}))
    spec = json.loads(Path(a.prompts).read_text())["prompts"]
    have = {it["prompt"]: it for it in res.get("prompts", [])}
    res["prompts"] = [have.get(p["prompt"], dict(p)) for p in spec]
    for item in res["prompts"]:
        for name in sets:
            if name in item:
                continue
            ds = models[name]
            item[name] = graph_metrics(lm, ds, item["prompt"], a.max_feature_nodes, a.batch_size)
            res["summary"] = summarize(res["prompts"])
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
            res.setdefault("peak_rss_gb", {})[name] = round(rss, 2)
            save()
            m = item[name]
            print(
                f"{name:6s} {item['prompt']!r} -> {m['target']!r}: repl {m['replacement']:.3f}/"
                f"{m['pruned_replacement']:.3f} compl {m['completeness']:.3f}/"
                f"{m['pruned_completeness']:.3f} n80 {m['nodes_80']} hops {m['mean_hops']:.2f} "
                f"span {m['mean_layer_span']:.2f} ({m['seconds']} s)",
                flush=True,
            )
    res["summary"] = summarize(res["prompts"])
    save()


if __name__ == "__main__":
    main()
