"""A sanity check of the converted Gemma 3 270M: its loss on default-corpus documents beside
SmolLM2-135M-Instruct's on the same documents.

Per-token perplexities of two tokenizers are not comparable, so the comparison is the total
negative log-likelihood of each document's text (nats, every token after BOS scored), paired by
document, with a bootstrap interval over documents (docs/MEASURING.md rule 3).

    python bench/check_gemma_perplexity.py --docs 40 --seed 0
    # writes bench/results/gemma_perplexity.json
"""

from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path

import torch

from lmscope.capture.corpus import default_corpus_path
from lmscope.models import load_model


@torch.no_grad()
def doc_nll(lm, text: str, ctx: int) -> tuple[float, int]:
    """(total NLL in nats, tokens scored) of one document: BOS + at most ctx - 1 tokens."""
    ids = lm.to_tokens(text)[:, :ctx]
    logits = lm.model(ids, use_cache=False).logits[0, :-1].float()
    nll = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum")
    return float(nll), ids.shape[1] - 1


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ctx", type=int, default=128)
    ap.add_argument("--out", default="bench/results/gemma_perplexity.json")
    a = ap.parse_args()
    torch.set_num_threads(2)
    with open(default_corpus_path()) as fh:
        docs = [json.loads(line).get("text") for line in fh][1:]  # line 0: the corpus header
    sample = random.Random(a.seed).sample(docs, a.docs)
    res = {}
    for name in ("gemma3-270m", "smollm2-135m"):
        lm = load_model(name)
        per = [doc_nll(lm, d, a.ctx) for d in sample]
        # a document longer than ctx tokens would be cut at different text lengths per tokenizer
        res[name] = {"nll": [p[0] for p in per], "tokens": [p[1] for p in per]}
        n_tok, total = sum(res[name]["tokens"]), sum(res[name]["nll"])
        res[name].update(total_nll=total, n_tokens=n_tok, ppl_per_token=math.exp(total / n_tok))
        del lm
    full = [i for i in range(a.docs) if max(res[m]["tokens"][i] for m in res) < a.ctx - 1]
    diff = [res["gemma3-270m"]["nll"][i] - res["smollm2-135m"]["nll"][i] for i in full]
    rng = random.Random(a.seed)
    boots = sorted(
        sum(diff[rng.randrange(len(diff))] for _ in diff) / len(diff) for _ in range(2000)
    )
    out = {
        "docs": a.docs,
        "seed": a.seed,
        "ctx": a.ctx,
        "docs_uncut": len(full),
        "models": res,
        "mean_doc_nll_diff_gemma_minus_smollm2": sum(diff) / len(diff),
        "ci95": [boots[49], boots[1949]],
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    for m in res:
        r = res[m]
        ppl = r["ppl_per_token"]
        print(f"{m}: {r['total_nll']:.0f} nats over {r['n_tokens']} tokens (ppl {ppl:.1f})")
    print(
        f"per-document NLL, Gemma - SmolLM2, over {len(full)} uncut documents: "
        f"{out['mean_doc_nll_diff_gemma_minus_smollm2']:+.2f} nats "
        f"(95% bootstrap CI {out['ci95'][0]:+.2f} .. {out['ci95'][1]:+.2f})"
    )


if __name__ == "__main__":
    main()
