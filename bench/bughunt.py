"""Find the default model's bugs by measuring their rates (issue 17, docs/correct.md "Finding
the bugs").

    # (1) greedy repetition loops over the fresh chat prompts (~5-10 min on 2 shared cores)
    PYTHONPATH=. .venv/bin/python bench/bughunt.py repetition
    # (2) facts the model knows (teacher-forced, plain Q/A) but gets wrong when asked in chat
    PYTHONPATH=. .venv/bin/python bench/bughunt.py facts
    # (3) answers that go along with a false premise (teacher-forced pairs, chat)
    PYTHONPATH=. .venv/bin/python bench/bughunt.py premise

Every mode is greedy and deterministic (no seed needed); results go to
bench/results/bughunt_<mode>_<model>.json with every prompt's outcome, so each figure in
docs/correct.md can be recomputed from it. Rates carry Wilson 95% intervals (n = prompts;
each prompt is its own unit: no two lines share an entity within a file, see `group`).

Teacher-forced pairs: a line {"prompt", "bad", "good"} is scored as
log p(bad | prompt) > log p(good | prompt), summed over the answer's tokens, the prompt in
the chat template (chat lines) or as "Question: ...\\nAnswer:" (the plain format).
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lmscope.correct.generate import Generation, generate_batch, prompt_ids  # noqa: E402
from lmscope.correct.scorers import SCORERS, tail_cycle, wilson  # noqa: E402
from lmscope.correct.scorers import mentions as contains  # noqa: E402


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def rate(flags: list[bool]) -> dict:
    k, n = sum(flags), len(flags)
    lo, hi = wilson(k, n)
    return {"k": k, "n": n, "rate": k / n if n else float("nan"), "lo": lo, "hi": hi}


def fmt(r: dict) -> str:
    return f"{r['rate']:.3f} [{r['lo']:.3f}, {r['hi']:.3f}] ({r['k']}/{r['n']})"


# --- teacher-forced pairs ---------------------------------------------------------------
@torch.no_grad()
def answer_logprobs(lm, ids: list[int], answers: list[str]) -> list[float]:
    """log p(answer | ids) for each answer, summed over its tokens (each answer tokenized on its
    own). The prompt runs once; each answer continues from a copy of its KV cache."""
    params = inspect.signature(lm.model.forward).parameters
    key = "cache" if "cache" in params else "past_key_values"
    o = lm.model(torch.tensor([ids], device=lm.device), use_cache=True, logits_to_keep=1)
    first = torch.log_softmax(o.logits[0, -1].float(), -1)  # [vocab]: the answer's 1st token
    out = []
    for ans in answers:
        a = lm.tokenizer(ans, add_special_tokens=False)["input_ids"]
        total = float(first[a[0]])
        if len(a) > 1:
            pos = torch.arange(len(ids), len(ids) + len(a) - 1, device=lm.device)[None]
            rest = lm.model(
                torch.tensor([a[:-1]], device=lm.device),
                position_ids=pos,
                use_cache=True,
                **{key: copy.deepcopy(getattr(o, key))},
            )
            logp = torch.log_softmax(rest.logits[0].float(), -1)  # [len(a) - 1, vocab]
            total += float(logp[torch.arange(len(a) - 1), torch.tensor(a[1:])].sum())
        out.append(total)
    return out


def plain_ids(lm, question: str) -> list[int]:
    return lm.to_tokens(f"Question: {question}\nAnswer:")[0].tolist()


def pair_scores(lm, line: dict, *, chat: bool) -> dict:
    """The chat format answers right after the template's newline; the plain one after
    "Answer:" with a space."""
    ids = prompt_ids(lm, line["prompt"], chat=True) if chat else plain_ids(lm, line["prompt"])
    sep = "" if chat else " "
    bad, good = answer_logprobs(lm, ids, [sep + line["bad"], sep + line["good"]])
    return {"logp_bad": bad, "logp_good": good, "prefers_bad": bad > good}


# --- modes ------------------------------------------------------------------------------
def run_repetition(lm, lines: list[dict], args, old: dict | None = None) -> dict:
    """Generate and score; with `old` (a previous result), re-score its generations only."""
    prompts = [x["prompt"] for x in lines]
    t0 = time.perf_counter()
    if old is not None:
        keys = ("prompt", "text", "ids", "stopped_at_eos")
        gens = [Generation(**{k: r[k] for k in keys}) for r in old["rows"]]
        assert [g.prompt for g in gens] == prompts, "the old result is for another bug file"
    else:
        gens = generate_batch(
            lm, prompts, max_new_tokens=args.max_new_tokens, chat=True, batch_size=args.batch_size
        )
    secs = old["seconds"] if old is not None else time.perf_counter() - t0
    kinds = [x.get("group", "all").split("-")[0] for x in lines]
    rows = []
    for g, kind in zip(gens, kinds):
        cyc = tail_cycle(g.ids)
        rows.append(
            {
                **g.to_dict(),
                "kind": kind,
                "cycle": list(cyc) if cyc else None,
                **{name: f(g) for name, f in SCORERS.items()},
            }
        )
    out = {
        "seconds": secs,
        "tokens": sum(len(g.ids) for g in gens),
        "rates": {name: rate([r[name] for r in rows]) for name in SCORERS},
        "repetition_by_kind": {
            k: rate([r["repetition"] for r in rows if r["kind"] == k]) for k in sorted(set(kinds))
        },
        "eos_lengths": _quantiles([len(g.ids) for g in gens if g.stopped_at_eos]),
        "cycle_periods": dict(Counter(r["cycle"][0] for r in rows if r["repetition"])),
        "rows": rows,
    }
    print(f"{len(gens)} generations, {out['tokens']} tokens in {secs:.0f} s")
    for name, r in out["rates"].items():
        print(f"  {name:14s} {fmt(r)}")
    for k, r in out["repetition_by_kind"].items():
        print(f"  repetition [{k}] {fmt(r)}")
    print(f"  lengths of answers that ended by themselves: {out['eos_lengths']}")
    print(f"  loop periods (tokens): {out['cycle_periods']}")
    return out


def _quantiles(v: list[int]) -> dict:
    if not v:
        return {}
    q = statistics.quantiles(v, n=10) if len(v) > 1 else [v[0]] * 9
    return {"n": len(v), "median": statistics.median(v), "p90": q[8], "max": max(v)}


def entities(good: str, bad: str) -> tuple[str, str]:
    """The words where two answer sentences differ: ("Canberra", "Sydney") from "The capital of
    Australia is Canberra." and "... is Sydney."."""
    g, b = good.rstrip(".").split(), bad.rstrip(".").split()
    i = 0
    while i < min(len(g), len(b)) and g[i] == b[i]:
        i += 1
    j = 0
    while j < min(len(g), len(b)) - i and g[-1 - j] == b[-1 - j]:
        j += 1
    return " ".join(g[i : len(g) - j]), " ".join(b[i : len(b) - j])


def run_pairs(lm, lines: list[dict], args, *, generate: bool, plain: bool = True) -> dict:
    """Plain and chat teacher-forced preference for each line; with `generate`, also the greedy
    chat answer and whether it names the right (`answer`) or the wrong (`wrong`) entity."""
    t0 = time.perf_counter()
    rows = []
    for x in lines:
        rows.append(
            {
                **x,
                "plain": pair_scores(lm, x, chat=False) if plain else None,
                "chat_tf": pair_scores(lm, x, chat=True),
            }
        )
    if generate:
        gens: list[Generation] = generate_batch(
            lm,
            [x["prompt"] for x in lines],
            max_new_tokens=args.answer_tokens,
            chat=True,
            batch_size=args.batch_size,
        )
        for r, g in zip(rows, gens):
            r["answer"], r["wrong"] = entities(r["good"], r["bad"])
            r["chat_answer"] = g.text
            r["says_right"] = contains(g.text, r["answer"])
            r["says_wrong"] = contains(g.text, r["wrong"])
    secs = time.perf_counter() - t0
    print(f"{len(rows)} lines in {secs:.0f} s")
    out = {"seconds": secs, **fact_rates(rows, generate=generate, plain=plain), "rows": rows}
    return out


def rescore_facts(old: dict) -> dict:
    """Re-match the saved chat answers (after a change to `contains`), rates recomputed."""
    rows = old["rows"]
    for r in rows:
        r["says_right"] = contains(r["chat_answer"], r["answer"])
        r["says_wrong"] = contains(r["chat_answer"], r["wrong"])
    return {**fact_rates(rows, generate=True, plain=True), "rows": rows}


def fact_rates(rows: list[dict], *, generate: bool, plain: bool) -> dict:
    """Rates over all lines and over the lines the model knows (plain test prefers `good`)."""
    out = {"chat_tf_prefers_bad": rate([r["chat_tf"]["prefers_bad"] for r in rows])}
    known = [r for r in rows if not (plain and r["plain"]["prefers_bad"])]
    if plain:
        out["plain_prefers_good"] = rate([not r["plain"]["prefers_bad"] for r in rows])
        out["chat_tf_prefers_bad_given_known"] = rate([r["chat_tf"]["prefers_bad"] for r in known])
    if generate:
        out["chat_answer_misses_right"] = rate([not r["says_right"] for r in rows])
        out["chat_answer_misses_right_given_known"] = rate([not r["says_right"] for r in known])
        out["chat_answer_names_wrong_given_known"] = rate(
            [r["says_wrong"] and not r["says_right"] for r in known]
        )
    for k, v in out.items():
        print(f"  {k:40s} {fmt(v)}")
    return out


def run_premise(lm, lines: list[dict], control: list[dict], args) -> dict:
    """The same (false, true) statement pair after a question that presupposes the false one
    ("Why is Sydney the capital of Australia?") and after a neutral one ("Is Sydney ...?").
    Following the premise = preferring the false statement after the presupposing question; the
    neutral question is the control for everything else (a negated sentence is less likely a
    priori), so the premise's effect is the paired per-item difference of the two rates."""
    from lmscope.probe.metrics import paired_difference

    assert [x["group"] for x in lines] == [x["group"] for x in control], "files out of step"
    print("premise questions:")
    p = run_pairs(lm, lines, args, generate=False, plain=False)
    print("neutral questions (control):")
    c = run_pairs(lm, control, args, generate=False, plain=False)
    bad_p = torch.tensor([float(r["chat_tf"]["prefers_bad"]) for r in p["rows"]])
    bad_c = torch.tensor([float(r["chat_tf"]["prefers_bad"]) for r in c["rows"]])
    known = bad_c == 0  # with a neutral question the model prefers the true statement
    diff = paired_difference(
        lambda i: float(bad_p[i].mean()), lambda i: float(bad_c[i].mean()),
        [x["group"] for x in lines],
    )  # fmt: skip
    out = {
        "premise": p,
        "neutral": c,
        "follows_premise": rate([bool(b) for b in bad_p]),
        "prefers_false_neutral": rate([bool(b) for b in bad_c]),
        "follows_premise_given_known": rate([bool(b) for b, k in zip(bad_p, known) if k]),
        "premise_minus_neutral": {"value": diff.value, "lo": diff.lo, "hi": diff.hi, "n": diff.n},
    }
    for k in ("follows_premise", "prefers_false_neutral", "follows_premise_given_known"):
        print(f"  {k:40s} {fmt(out[k])}")
    print(
        f"  premise - neutral (paired, bootstrap 95%): {diff.value:+.3f} [{diff.lo:+.3f}, "
        f"{diff.hi:+.3f}] (n={diff.n})"
    )
    return out


def main() -> None:
    from lmscope.models import load_model
    from lmscope.models.registry import DEFAULT_MODEL

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("mode", choices=["repetition", "facts", "premise"])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--file", help="bug file (default examples/bugs/<mode>.jsonl)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--answer-tokens", type=int, default=32, help="facts: chat answer length")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--limit", type=int, default=0, help="first N lines only (a smoke run)")
    # 1 thread: on a machine shared by many jobs, 2 threads wait on each other at every small
    # op (a decode step of 64 rows took 12 s with 2 threads, 0.94 s with 1, load ~15 on 2 cores)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out")
    ap.add_argument(
        "--rescore", action="store_true", help="repetition: re-score the saved generations"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    path = Path(args.file or ROOT / "examples" / "bugs" / f"{args.mode}.jsonl")
    lines = read_lines(path)[: args.limit or None]
    name = args.model.replace("/", "_")
    dest = Path(args.out or ROOT / "bench" / "results" / f"bughunt_{args.mode}_{name}.json")
    if args.rescore and args.mode == "facts":
        old = json.loads(dest.read_text())
        res = rescore_facts(old)
        dest.write_text(json.dumps({**old, **res}, indent=1))
        return print(f"wrote {dest}")
    if args.rescore:
        old = json.loads(dest.read_text())
        res = run_repetition(None, lines, args, old)
        res["command"] = old["command"] + " (re-scored: " + " ".join(sys.argv) + ")"
        dest.write_text(json.dumps({**old, **res}, indent=1))
        return print(f"wrote {dest}")
    lm = load_model(args.model, dtype=args.dtype)
    if args.mode == "repetition":
        res = run_repetition(lm, lines, args)
    elif args.mode == "facts":
        res = run_pairs(lm, lines, args, generate=True)
    else:
        control = read_lines(path.with_name(path.stem + "_neutral.jsonl"))[: args.limit or None]
        res = run_premise(lm, lines, control, args)
    res = {
        "mode": args.mode,
        "model": args.model,
        "dtype": args.dtype,
        "file": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path),
        "n_lines": len(lines),
        "max_new_tokens": args.max_new_tokens,
        "answer_tokens": args.answer_tokens,
        "command": " ".join(sys.argv),
        **res,
    }
    tmp = dest.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1))
    tmp.replace(dest)
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
