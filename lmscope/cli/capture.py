"""`lmscope capture` and `lmscope corpus`: activations into a store, and the text they come from.

    lmscope capture --model smollm2-135m --hooks 'blocks.6.resid_post,blocks.*.mlp_out' \\
        --corpus default --tokens 200k --out store/
    lmscope corpus info [--corpus C] [--tokens]
    lmscope corpus build [--force]

Flags of `capture` are generated from CaptureConfig (lmscope/capture/pipeline.py).
"""

from __future__ import annotations

from ..config import add_arguments, from_args
from ..models.registry import DEFAULT_MODEL
from ._common import print_json


def register(sub) -> None:
    from ..capture.pipeline import CaptureConfig

    p = sub.add_parser(
        "capture",
        help="record activations at hook points over a corpus into an activation store",
        description="Run a corpus through a model and write the activations at the given hook "
        "points "
        "(and the token ids) into sharded safetensors files with a manifest written last. "
        "The forward pass stops after the deepest hook. Interrupted? Run the same command "
        "to continue; a complete store is never rewritten. Read it back with "
        "lmscope.capture.store.ActivationStore or `lmscope train --from-store DIR`.",
    )
    add_arguments(p, CaptureConfig)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_capture)

    p = sub.add_parser(
        "corpus",
        help="describe or build the text corpus",
        description="`info`: documents, held-out share, characters (and tokens with --tokens) "
        "of a corpus, with the default corpus's sources and licenses. "
        "`build`: build the default corpus into the cache now.",
    )
    p.add_argument("action", choices=["info", "build"])
    p.add_argument("--corpus", default="default", help="'default', a file or folder, or hf:NAME")
    p.add_argument(
        "--text-field", default="text", help=".jsonl field / .parquet column with the text"
    )
    p.add_argument(
        "--tokens", action="store_true", help="also count tokens with the model's tokenizer"
    )
    p.add_argument(
        "--model", default=None, help=f"tokenizer for --tokens (default: {DEFAULT_MODEL})"
    )
    p.add_argument("--force", action="store_true", help="build: rebuild even if built")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_corpus)


def cmd_capture(args) -> int:
    from ..capture.pipeline import CaptureConfig, capture_to_store, format_report

    cfg = from_args(CaptureConfig, args)
    res = capture_to_store(cfg)
    if args.json:
        print_json(
            {
                "out": str(res.out),
                "hooks": res.hooks,
                "tokens": res.tokens,
                "contexts": res.contexts,
                "seconds": res.seconds,
                "tokens_per_s": res.tokens_per_s,
                "bytes": res.bytes,
                "norms": res.norms,
                "resumed": res.resumed,
                "already_complete": res.already_complete,
                "corpus_exhausted": res.corpus_exhausted,
            }
        )
        return 0
    print(format_report(res))
    return 0


def cmd_corpus(args) -> int:
    from ..capture import corpus as C

    if args.action == "build":
        p = C.build_default(force=args.force)
        if args.json:
            print_json({"path": str(p), "sources": C.default_corpus_sources()})
        else:
            print(p)
        return 0
    tok = None
    if args.tokens:
        from ..models.load import load_model

        tok = load_model(args.model or DEFAULT_MODEL).tokenizer
    info = C.corpus_info(args.corpus, text_field=args.text_field, tokenizer=tok)
    if args.json:
        print_json(info.__dict__)
        return 0
    print(
        f"corpus {info.source}: {info.documents:,} documents ({info.heldout_documents:,} held "
        "out), "
        f"{info.chars / 1e6:.2f} M characters"
        + (f", {info.tokens:,} tokens" if info.tokens is not None else "")
    )
    for s in info.sources:
        print(
            f"  {s['name']}: {s['documents']:,} documents, {s['chars'] / 1e6:.2f} M chars; "
            f"license: {s['license']}"
        )
    return 0


__all__ = ["register"]
