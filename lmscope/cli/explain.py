"""`lmscope explain` / `lmscope explain-report`: label features and score the labels.

    lmscope explain atlas/                                   # stats explainer,
    direct+embedding+simulation
    lmscope explain atlas/ --top-density 50 --explainer llm --llm local:smollm2-135m
    lmscope explain atlas/ --explainer llm --llm openai:http://127.0.0.1:8080/v1 --llm-model qwen \\
        --scorers direct,embedding,detection,fuzzing        # key from LMSCOPE_LLM_API_KEY /
        OPENAI_API_KEY
    lmscope explain-report atlas/                            # paired differences to baselines + PNG
"""

from __future__ import annotations

from ._common import print_json


def register(sub) -> None:
    from ..config import add_arguments
    from ..explain.runner import ExplainConfig

    p = sub.add_parser(
        "explain",
        help="label every feature of an atlas and score the labels",
        description="Label features (stats explainer by default, or any OpenAI-compatible LLM) "
        "and score each label on held-out examples next to baselines; resumable.",
    )
    add_arguments(p, ExplainConfig, positional=("atlas",))
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_explain)
    r = sub.add_parser(
        "explain-report",
        help="scores per dictionary, method and scorer, paired with the "
        "method's baselines per feature (bootstrap interval)",
    )
    r.add_argument("atlas", help="atlas folder")
    r.add_argument(
        "--png", default=None, help="plot path (default: ATLAS/plots/explain_scores.png)"
    )
    r.add_argument("--json", action="store_true", help="print the table as JSON")
    r.set_defaults(func=cmd_report)


def cmd_explain(args) -> int:
    from ..config import from_args
    from ..explain.runner import ExplainConfig, explain_atlas

    res = explain_atlas(from_args(ExplainConfig, args), progress=not args.no_progress)
    if args.json:
        print_json(res.__dict__)
    else:
        rate = (
            f", {res.explained / res.seconds:.0f} features/s"
            if res.explained and res.seconds
            else ""
        )
        print(
            f"explained {res.explained} features ({res.skipped} already done) in "
            f"{res.seconds:.1f}s{rate}"
        )
        if len(res.per_dictionary) > 1:
            from ..explain.report import hook_order

            per = sorted(res.per_dictionary.items(), key=lambda kv: hook_order(kv[0]))
            lo, hi = min(per, key=lambda kv: kv[1]), max(per, key=lambda kv: kv[1])
            print(
                f"over {len(per)} dictionaries ({per[0][0]} .. {per[-1][0]}): "
                f"{lo[1]} ({lo[0]}) to {hi[1]} ({hi[0]}) features each"
            )
        if res.embedded_tokens:
            print(
                f"embedded {res.embedded_tokens} corpus tokens in context in "
                f"{res.embed_seconds:.1f}s "
                f"(once per atlas: cached under {args.atlas}/cache/)"
            )
        if res.llm_usage:
            u = res.llm_usage
            print(
                f"LLM: {u['requests']} requests ({u['cached']} cached), {u['prompt_tokens']} "
                "prompt + "
                f"{u['completion_tokens']} completion tokens, ${u['cost_usd']:.4f}"
            )
        from ._invocation import shell_line

        print(f"see the scores: {shell_line(['explain-report', str(args.atlas)])}")
    return 0


def cmd_report(args) -> int:
    from pathlib import Path

    from ..explain.report import plot_report, score_report

    rep = score_report(args.atlas)
    png = Path(args.png) if args.png else Path(args.atlas) / "plots" / "explain_scores.png"
    wrote = None
    if rep.rows:
        try:
            wrote = plot_report(rep, png)
        except Exception as e:  # the table is the result; a plot failure is reported, not fatal
            print(f"(no plot: {e})")
    if args.json:
        print_json({**rep.to_dict(), "png": str(wrote) if wrote else None})
        return 0
    print(rep.text if rep.rows else f"no scores yet; run `lmscope explain {args.atlas}`")
    if wrote:
        print(f"wrote {wrote}")
    return 0
