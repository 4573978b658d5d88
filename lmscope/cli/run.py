"""`lmscope run`: the whole pipeline on one model, each stage the command a user would type.

    lmscope run                          # the embedded default (SmolLM2-135M-Instruct, default
    corpus)
    lmscope run --model M --out runs/m   # any causal LM
    lmscope run --skip probe,trace       # leave stages out

Stages, in the data-flow order: capture -> train -> eval -> atlas -> explain -> probe -> scan ->
trace. Every stage prints the equivalent stand-alone command first, so the report doubles as a
tutorial. Rerunning the same command skips what is complete (the store, the dictionary, the
atlas build, explanations and the probe are all resumable artifacts), so an interrupted run
continues where it stopped.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..config import add_arguments, from_args
from ..errors import UserError
from ..models.registry import DEFAULT_MODEL

STAGES = ("capture", "train", "eval", "atlas", "explain", "probe", "scan", "trace")
SAMPLE_PROMPT = "The horse galloped across the field while the farmer watched from the old barn."
TRACE_PROMPT = "The capital of France is"


@dataclass(frozen=True)
class RunConfig:
    """Run every stage of lmscope on one model and print a short report of each."""

    model: str = DEFAULT_MODEL
    """Model alias, Hugging Face id, local folder or .gguf file."""
    corpus: str = "default"
    """Text: 'default' (built-in English), a .txt/.md/.jsonl/.parquet file or folder, or hf:NAME."""
    out: str = "runs/smollm2-135m"
    """Folder for everything this run writes (store/, atlas/, probe/)."""
    layer: int | None = None
    """Block whose resid_post gets the dictionary; None: the middle block."""
    capture_tokens: int = 20_000
    """Tokens captured into the activation store (stage capture)."""
    train_tokens: int = 200_000
    """Training tokens for the dictionary (stage train)."""
    width: str = "4608"
    """Dictionary latents: a count or an expansion ('8x')."""
    k: int = 32
    """Active latents per token (TopK)."""
    batch_size: int = 1024
    """Training batch (tokens per step)."""
    lr: float = 1e-3
    """Training learning rate."""
    eval_tokens: int = 10_000
    """Held-out tokens for the eval stage."""
    atlas_tokens: int = 100_000
    """Tokens profiled for the atlas."""
    ctx_len: int = 128
    """Tokens per context everywhere."""
    probe_layers: str = "6,12,16,20"
    """Layers probed for truth (stage probe)."""
    prompt: str = SAMPLE_PROMPT
    """The prompt scanned at the end."""
    trace_prompt: str = TRACE_PROMPT
    """The prompt traced at the end (top features behind its next token, verified by ablation)."""
    skip: str = ""
    """Comma-separated stages to leave out: capture,train,eval,atlas,explain,probe,scan,trace."""
    model_dtype: str = "float32"
    """dtype of the model weights (bfloat16 is ~2x faster on CPUs with AVX-512 bf16)."""

    def __post_init__(self) -> None:
        bad = [s for s in self.skipped() if s not in STAGES]
        if bad:
            raise ValueError(f"--skip {bad[0]!r} is not a stage; stages: {', '.join(STAGES)}")
        if self.model_dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError("--model-dtype must be float32, bfloat16 or float16")

    def skipped(self) -> list[str]:
        return [s.strip() for s in self.skip.split(",") if s.strip()]


def register(sub) -> None:
    p = sub.add_parser(
        "run",
        help="the whole pipeline on one model (default: the embedded SmolLM2-135M)",
        description="Capture activations, train a TopK sparse autoencoder on the middle layer, "
        "evaluate it, "
        "build its feature atlas, label the features, probe for truth, then scan and trace a "
        "prompt. Each stage prints the stand-alone command it runs. Rerun the same command to "
        "continue an interrupted run; finished stages are skipped.",
    )
    add_arguments(p, RunConfig)
    p.set_defaults(func=cmd_run)


_TIMES: list[tuple[str, float]] = []  # (stage, start time) of this run, for the closing summary


def _stage(i: int, n: int, name: str, argv: list[str]) -> None:
    _TIMES.append((name.split(":")[0], time.perf_counter()))
    print(
        f"\n\033[1m== [{i}/{n}] {name}\033[0m" if sys.stdout.isatty() else f"\n== [{i}/{n}] {name}"
    )
    print("$ lmscope " + " ".join(shlex.quote(a) for a in argv), flush=True)


def _call(argv: list[str]) -> None:
    from . import main

    rc = main(argv)
    if rc != 0:
        raise SystemExit(rc)


def cmd_run(args) -> int:
    cfg = from_args(RunConfig, args)
    return run(cfg)


def run(cfg: RunConfig) -> int:
    from ..capture.pipeline import CaptureConfig, capture_to_store, format_report
    from ..layout import AtlasLayout
    from ..models.load import load_model

    t0 = time.perf_counter()
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "run.json").is_file():
        raise UserError(
            f"--out {out} is a non-empty folder that lmscope run did not make; pass a new --out "
            "(nothing is overwritten)"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "run.json").write_text(json.dumps({"config": cfg.__dict__}, indent=2))
    skip = set(cfg.skipped())
    todo = [s for s in STAGES if s not in skip]
    n = len(todo)
    i = 0
    common = ["--model", cfg.model] if cfg.model != DEFAULT_MODEL else []
    dt = ["--model-dtype", cfg.model_dtype] if cfg.model_dtype != "float32" else []

    print(f"lmscope run: {cfg.model} on corpus {cfg.corpus!r} -> {out}/")
    lm = load_model(cfg.model, dtype=cfg.model_dtype)
    layer = cfg.layer if cfg.layer is not None else lm.n_layers // 2
    if not 0 <= layer < lm.n_layers:
        raise UserError(
            f"--layer {layer} is out of range: {lm.name} has blocks 0..{lm.n_layers - 1}"
        )
    hook = f"blocks.{layer}.resid_post"
    store, atlas, probe = out / "store", out / "atlas", out / "probe"
    print(f"model: {lm.name}, {lm.n_layers} blocks, d_model {lm.d_model}; dictionary at {hook}")

    if "capture" in todo:
        i += 1
        layers = sorted(
            {max(0, lm.n_layers // 5), layer, min(lm.n_layers - 1, (4 * lm.n_layers) // 5)}
        )
        hooks = ",".join(f"blocks.{L}.resid_post" for L in layers)
        argv = [
            "capture",
            *common,
            *dt,
            "--hooks",
            hooks,
            "--corpus",
            cfg.corpus,
            "--tokens",
            str(cfg.capture_tokens),
            "--ctx-len",
            str(cfg.ctx_len),
            "--out",
            str(store),
        ]
        _stage(i, n, "capture: activations into a store", argv)
        res = capture_to_store(
            CaptureConfig(
                model=cfg.model,
                hooks=hooks,
                corpus=cfg.corpus,
                tokens=cfg.capture_tokens,
                ctx_len=cfg.ctx_len,
                out=str(store),
                model_dtype=cfg.model_dtype,
                progress=sys.stderr.isatty(),
            ),
            lm=lm,
        )
        print(format_report(res))

    layout = AtlasLayout(atlas)
    if "train" in todo:
        i += 1
        argv = [
            "train",
            *common,
            *dt,
            "--hooks",
            hook,
            "--arch",
            "topk",
            "--width",
            cfg.width,
            "--k",
            str(cfg.k),
            "--tokens",
            str(cfg.train_tokens),
            "--batch-size",
            str(cfg.batch_size),
            "--lr",
            str(cfg.lr),
            "--corpus",
            cfg.corpus,
            "--ctx-len",
            str(cfg.ctx_len),
            "--out",
            str(atlas),
        ]
        _stage(i, n, "train: a TopK sparse autoencoder (features)", argv)
        if layout.exists() and hook in layout.dictionaries():
            print(f"already trained: {layout.dictionary_dir(hook)}")
        else:
            _call(argv + ([] if sys.stderr.isatty() else ["--no-progress"]))

    if "eval" in todo:
        i += 1
        # --train-tokens: the same FVU on training-split tokens, so the printed in-sample and
        # held-out numbers are one measure (`lmscope train` prints a per-batch mean).
        argv = [
            "eval",
            str(atlas),
            "--tokens",
            str(cfg.eval_tokens),
            "--train-tokens",
            str(cfg.eval_tokens),
            "--corpus",
            cfg.corpus,
            "--ctx-len",
            str(cfg.ctx_len),
            *dt,
        ]
        _stage(
            i,
            n,
            "eval: loss added by the dictionary (nats, KL), FVU with and without outlier tokens, "
            "on held-out documents",
            argv,
        )
        _call(argv)

    if "atlas" in todo:
        i += 1
        argv = [
            "atlas",
            "build",
            str(atlas),
            "--corpus",
            cfg.corpus,
            "--tokens",
            str(cfg.atlas_tokens),
            "--ctx-len",
            str(cfg.ctx_len),
            *dt,
        ]
        _stage(i, n, "atlas: profile every feature into atlas.db", argv)
        _call(argv)
        _show_features(atlas, hook)

    if "explain" in todo:
        i += 1
        argv = ["explain", str(atlas)]
        _stage(
            i,
            n,
            "explain: label every feature (stats explainer); score the labels on held-out windows "
            "against an equal-budget top-token and a random baseline (paired, 95% bootstrap)",
            argv,
        )
        _call(argv)
        print()
        _call(["explain-report", str(atlas)])

    if "probe" in todo:
        i += 1
        argv = [
            "probe",
            "train",
            *common,
            "--dataset",
            "cities,neg_cities",
            "--layers",
            cfg.probe_layers,
            "--kinds",
            "logistic,massmean",
            "--out",
            str(probe),
        ]
        _stage(i, n, "probe: where does the model hold 'true'? (held-out cities)", argv)
        if (probe / "probe.json").is_file():
            from .probe import format_test_line

            print(f"already trained: {probe}")
            m = json.loads((probe / "probe.json").read_text()).get("metrics", {})
            print(
                format_test_line(m)
                if "test" in m
                else "(a schema-1 probe: its layer was chosen on the test "
                "split, so it has no honest test score; delete the folder to retrain)"
            )
        else:
            _call(argv)  # prints the choice made on validation and the test score with its interval
        for text in ("The city of Paris is in France.", "The city of Paris is in Japan."):
            print(f"$ lmscope lie-check --probe {probe} {shlex.quote(text)}")
            _call(["lie-check", "--probe", str(probe), text])

    if "scan" in todo:
        i += 1
        argv = ["scan", str(atlas), cfg.prompt]
        _stage(i, n, "scan: which features fire on a prompt", argv)
        _call(argv)

    if "trace" in todo:
        i += 1
        argv = ["trace", str(atlas), cfg.trace_prompt, "--verify"]
        _stage(i, n, "trace: the features behind the next token, verified by ablation", argv)
        _call(argv)

    end = time.perf_counter()
    marks = _TIMES + [("", end)]
    took = ", ".join(f"{a} {b1 - a1:.0f}s" for (a, a1), (_, b1) in zip(marks, marks[1:]))
    _TIMES.clear()
    print(f"\ndone in {end - t0:.0f}s ({took}). Everything is in {out}/.")
    if atlas.is_dir():
        print(f"open the viewer:  lmscope serve {atlas}")
    return 0


def _show_features(atlas: Path, hook: str, n: int = 2) -> None:
    """Print the dashboards of the n most frequently firing features (the atlas's profile)."""
    from ..atlas.db import open_atlas_db

    try:
        with open_atlas_db(atlas, required=True) as db:
            dens = db.densities(hook)
    except UserError as e:  # a report line is enough here
        print(f"(no feature dashboards: {e})")
        return
    fired = sorted((r for r in dens if r[1] > 0), key=lambda r: -r[1])  # (idx, density, max_act)
    if not fired:
        print("(no feature fired on the profiled tokens)")
        return
    # The densest features are often generic; show one dense and one mid-density feature.
    picks = list(dict.fromkeys([fired[0][0], fired[len(fired) // 10][0]]))[:n]
    for j in picks:
        print(f"\n$ lmscope feature {atlas} {hook}/{j}")
        from . import main

        main(["feature", str(atlas), f"{hook}/{j}", "--top", "3"])
