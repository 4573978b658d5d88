"""`lmscope run`: the whole pipeline on one model, each stage the command a user would type.

    lmscope run                          # the whole model: a transcoder at every layer
    lmscope run --quick                  # a first look: one SAE on the middle layer
    lmscope run --model M                # any causal LM (out: runs/<M>, runs/<M>-quick)
    lmscope run --skip probe,trace       # leave stages out

Whole-model stages, in data-flow order: train -> eval -> atlas -> explain -> probe -> scan ->
graph -> trace. The dictionaries are per-layer skip transcoders (blocks.L.mlp_in ->
blocks.L.mlp_out) at every layer, trained from one shared model pass: a transcoder is a feature
dictionary like an SAE (the atlas, explain and scan read it the same way) and it is also what an
attribution graph needs, since it stands in for the MLP it reads and writes. `--quick` keeps the
one-layer run (capture -> one resid_post SAE -> ... -> trace, no graph).

Every stage prints the equivalent stand-alone command first, starting with the path of the
running `lmscope` (cli/_invocation.py), so each printed line works when pasted into a new
shell. Rerunning the same command skips what is complete (the dictionaries, the atlas build,
explanations, the probe and the graph are all resumable artifacts), so an interrupted run
continues where it stopped. A folder holds one kind of run: a whole-model run refuses a
one-layer run's folder and the other way round.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..config import add_arguments, from_args
from ..errors import UserError
from ..models.registry import DEFAULT_MODEL
from ._invocation import shell_line

STAGES = ("capture", "train", "eval", "atlas", "explain", "probe", "scan", "graph", "trace")
WHOLE_STAGES = ("train", "eval", "atlas", "explain", "probe", "scan", "graph", "trace")
QUICK_STAGES = ("capture", "train", "eval", "atlas", "explain", "probe", "scan", "trace")
SAMPLE_PROMPT = "The horse galloped across the field while the farmer watched from the old barn."
TRACE_PROMPT = "The capital of France is"
DTYPES = ("auto", "float32", "bfloat16")
RUN_SCHEMA = 2  # 1: the one-layer run.json (no "kind"); 2: "kind" = "whole-model" | "one-layer"


@dataclass(frozen=True)
class Preset:
    """The sizes of one kind of run. Token counts are what a run's wall time scales with; the
    lead tunes them here from measurements (docs/benchmarks.md), flags override them per run."""

    train_tokens: int
    width: str
    k: int
    batch_size: int
    lr: float | None
    """None: WHOLE_MODEL_LR_MULT x the Gao et al. default LR at the width."""
    eval_tokens: int
    atlas_tokens: int
    capture_tokens: int = 0
    """0: no capture stage (the whole-model run streams its training tokens from the model)."""
    splice_tokens: int = 0
    """Eval: tokens whose spliced loss is measured (0: all eval tokens). Each layer's splice
    re-runs the layers after it, so with 30 dictionaries this, not FVU, sets the eval's cost."""
    baselines: bool = True
    """Eval: also the mean- and zero-ablation baselines (2 more passes per dictionary)."""


# Whole model: a skip transcoder of 4x width at every layer (2,304 latents on SmolLM2-135M, ~69k
# features), the settings of dictionaries.train_config.whole_model_defaults (batch 1024, LR
# WHOLE_MODEL_LR_MULT x the Gao et al. default: chosen on held-out FVU, docs/notes/training.md).
# Token counts fit the 20-minute budget on 2 cores (docs/benchmarks.md, "The whole-model run").
WHOLE = Preset(
    train_tokens=131_072,
    width="4x",
    k=32,
    batch_size=1024,
    lr=None,
    eval_tokens=2_048,
    atlas_tokens=32_768,
    splice_tokens=800,
    baselines=False,
)
# One layer, a first look: the one-layer recipe of issues 2-8 with fewer tokens (the lead sets
# them from the measured time; docs/benchmarks.md).
QUICK = Preset(
    train_tokens=100_000,
    width="4608",
    k=32,
    batch_size=1024,
    lr=1e-3,
    eval_tokens=5_000,
    atlas_tokens=30_000,
    capture_tokens=5_000,
)


@dataclass(frozen=True)
class RunConfig:
    """Run every stage of lmscope on one model and print a short report of each."""

    model: str = DEFAULT_MODEL
    """Model alias, Hugging Face id, local folder or .gguf file."""
    corpus: str = "default"
    """Text: 'default' (built-in English), a .txt/.md/.jsonl/.parquet file or folder, or hf:NAME."""
    quick: bool = False
    """A first look: one TopK SAE on one layer's resid_post instead of a transcoder at
    every layer (no attribution graph)."""
    out: str = ""
    """Folder for everything this run writes; empty: runs/<model> (runs/<model>-quick with
    --quick)."""
    layer: int | None = None
    """--quick: block whose resid_post gets the SAE; None: the middle block."""
    capture_tokens: int | None = None
    """--quick: tokens captured into the activation store (None: the preset's)."""
    train_tokens: int | None = None
    """Training tokens per dictionary (None: the preset's)."""
    width: str | None = None
    """Latents per dictionary: a count or an expansion ('4x') (None: the preset's)."""
    k: int | None = None
    """Active latents per token (TopK) (None: the preset's)."""
    batch_size: int | None = None
    """Training batch in tokens (None: the preset's)."""
    lr: float | None = None
    """Training learning rate (None: the preset's)."""
    eval_tokens: int | None = None
    """Held-out tokens for the eval stage (None: the preset's)."""
    atlas_tokens: int | None = None
    """Tokens profiled for the atlas (None: the preset's)."""
    ctx_len: int = 128
    """Tokens per context everywhere."""
    probe_layers: str = "auto"
    """Layers probed for truth (stage probe); auto: 6,12,16,20 on a 30-block model, the same
    relative depths on others (4,7,10,12 on Gemma 3 270M's 18)."""
    prompt: str = SAMPLE_PROMPT
    """The prompt scanned across every dictionary (stage scan)."""
    trace_prompt: str = TRACE_PROMPT
    """The prompt whose next token gets an attribution graph (stage graph) and a trace verified by
    ablation (stage trace)."""
    skip: str = ""
    """Comma-separated stages to leave out: capture,train,eval,atlas,explain,probe,scan,graph,
    trace."""
    model_dtype: str = "auto"
    """dtype of the model (and of the dictionaries' training compute) in train/eval/atlas: auto =
    bfloat16 where this CPU has native bf16 (AVX-512 BF16 / AMX), else float32. scan, graph and
    trace read one prompt and always run in float32."""

    def __post_init__(self) -> None:
        bad = [s for s in self.skipped() if s not in STAGES]
        if bad:
            raise ValueError(f"--skip {bad[0]!r} is not a stage; stages: {', '.join(STAGES)}")
        if self.model_dtype not in DTYPES:
            raise ValueError(f"--model-dtype must be one of {', '.join(DTYPES)}")

    def skipped(self) -> list[str]:
        return [s.strip() for s in self.skip.split(",") if s.strip()]

    @property
    def kind(self) -> str:
        return "one-layer" if self.quick else "whole-model"

    def preset(self) -> Preset:
        """The preset with this run's flags applied."""
        base = QUICK if self.quick else WHOLE
        given = {f: v for f in asdict(base) if (v := getattr(self, f, None)) is not None}
        return Preset(**{**asdict(base), **given})

    def out_dir(self) -> Path:
        if self.out:
            return Path(self.out)
        name = Path(self.model).name if ("/" in self.model or os.sep in self.model) else self.model
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", name.removesuffix(".gguf")).strip(".-") or "model"
        return Path("runs") / (f"{name}-quick" if self.quick else name)


def resolve_dtype(name: str) -> str:
    """'auto' -> 'bfloat16' where lmscope's CPU check says bf16 is native, else 'float32'."""
    if name != "auto":
        return name
    import torch

    from ..models.load import cpu_half_is_slow

    return "float32" if cpu_half_is_slow(torch.bfloat16, "cpu") else "bfloat16"


def register(sub) -> None:
    p = sub.add_parser(
        "run",
        help="the whole pipeline on one model: a transcoder at every layer (--quick: one layer)",
        description="Train a skip transcoder (blocks.L.mlp_in -> blocks.L.mlp_out) at every layer "
        "from one shared model pass, evaluate each, profile all their features into one atlas, "
        "label the features, probe for truth, scan a prompt across all layers, build the "
        "attribution graph of a prompt's next token from the run's own transcoders, and trace "
        "it. --quick: one TopK SAE on the middle layer's resid_post. Each stage "
        "prints the stand-alone command it runs. Rerun the same command to continue an "
        "interrupted run; finished stages are skipped. Presets (each flag overrides its "
        f"value): whole model {_describe(WHOLE)}; --quick {_describe(QUICK)}.",
    )
    add_arguments(p, RunConfig)
    p.set_defaults(func=cmd_run)


def _describe(p: Preset) -> str:
    from dataclasses import fields

    # Only the sizes a run flag overrides (the eval's splice settings are preset-only).
    vals = [
        (f.name.replace("_", "-"), getattr(p, f.name))
        for f in fields(p)
        if f.name in RunConfig.__dataclass_fields__
    ]
    return ", ".join(
        f"--{name} {v}" for name, v in vals if v not in (0, None)
    )  # 0: no such stage; None: derived


def cmd_run(args) -> int:
    return run(from_args(RunConfig, args))


class _Report:
    """Stage headers (`== [i/n] name` and the `$ lmscope ...` line) and the stage timings."""

    def __init__(self, n: int):
        self.n, self.i = n, 0
        self.marks: list[tuple[str, float, float]] = []  # (stage, wall, CPU seconds) at start

    def line(self, argv: list[str]) -> str:
        return shell_line(argv)

    def stage(self, name: str, what: str, argv: list[str]) -> None:
        self.i += 1
        self.marks.append((name, time.perf_counter(), time.process_time()))
        head = f"== [{self.i}/{self.n}] {name}: {what}"
        print(f"\n\033[1m{head}\033[0m" if sys.stdout.isatty() else f"\n{head}")
        print("$ " + self.line(argv), flush=True)

    def times(self, end: float) -> str:
        """Per stage: wall seconds, and CPU seconds of this process (all its threads), which a
        busy shared machine inflates less than the wall time."""
        marks = self.marks + [("", end, time.process_time())]
        return ", ".join(
            f"{a} {w1 - w0:.0f}s ({c1 - c0:.0f}s CPU)"
            for (a, w0, c0), (_, w1, c1) in zip(marks, marks[1:])
        )


def _call(argv: list[str]) -> None:
    from . import main

    rc = main(argv)
    if rc != 0:
        raise SystemExit(rc)


def _claim(out: Path, cfg: RunConfig) -> None:
    """Make `out` this run's folder, or refuse one that holds something else."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a folder")
    meta = out / "run.json"
    if out.is_dir() and any(out.iterdir()) and not meta.is_file():
        raise UserError(
            f"--out {out} is a non-empty folder that lmscope run did not make; pass a new --out "
            "(nothing is overwritten)"
        )
    if meta.is_file():
        try:
            old = json.loads(meta.read_text()).get("kind", "one-layer")  # schema 1: one layer
        except (ValueError, AttributeError):
            raise UserError(f"{meta} is not a run record; pass a new --out") from None
        if old != cfg.kind:
            how = "with --quick" if old == "one-layer" else "without --quick"
            raise UserError(
                f"--out {out} holds a {old} run and a {cfg.kind} run does not mix with it: pass "
                f"another --out (that run continues {how} --out {out})"
            )
    out.mkdir(parents=True, exist_ok=True)
    rec = {"schema_version": RUN_SCHEMA, "kind": cfg.kind, "config": asdict(cfg)}
    tmp = out / ".run.json.tmp"
    tmp.write_text(json.dumps(rec, indent=2))
    os.replace(tmp, meta)


def run(cfg: RunConfig) -> int:
    from ..models.load import load_model

    t0 = time.perf_counter()
    out = cfg.out_dir()
    _claim(out, cfg)
    ps = cfg.preset()
    dtype = resolve_dtype(cfg.model_dtype)
    skip = set(cfg.skipped())
    todo = [s for s in (QUICK_STAGES if cfg.quick else WHOLE_STAGES) if s not in skip]
    rep = _Report(len(todo))
    common = ["--model", cfg.model] if cfg.model != DEFAULT_MODEL else []
    dt = ["--model-dtype", dtype] if dtype != "float32" else []

    print(f"lmscope run ({cfg.kind}): {cfg.model} on corpus {cfg.corpus!r} -> {out}/")
    lm = load_model(cfg.model, dtype=dtype)
    if cfg.quick:
        layer = cfg.layer if cfg.layer is not None else lm.n_layers // 2
        if not 0 <= layer < lm.n_layers:
            raise UserError(
                f"--layer {layer} is out of range: {lm.name} has blocks 0..{lm.n_layers - 1}"
            )
        hooks = [f"blocks.{layer}.resid_post"]
        what = f"one TopK SAE at {hooks[0]}"
    else:
        if cfg.layer is not None:
            raise UserError("--layer picks the layer of a --quick run; the whole-model run has all")
        hooks = [f"blocks.{L}.mlp_in" for L in range(lm.n_layers)]
        what = f"a skip transcoder blocks.L.mlp_in -> blocks.L.mlp_out at all {lm.n_layers} layers"
    probe_layers = _probe_layers(cfg.probe_layers, lm.n_layers)
    if "probe" in todo:  # refuse a bad --probe-layers now, not after training
        from ..probe.specs import resolve_layers

        resolve_layers(lm, probe_layers)
    print(
        f"model: {lm.name}, {lm.n_layers} blocks, d_model {lm.d_model}, {dtype} "
        f"(--model-dtype {cfg.model_dtype}); {what}"
    )
    atlas, probe = out / "atlas", out / "probe"
    ctx = ["--corpus", cfg.corpus, "--ctx-len", str(cfg.ctx_len)]

    if "capture" in todo:
        _capture(cfg, rep, lm, out / "store", ps, common, dt, dtype, ctx)

    if "train" in todo:
        _train(cfg, rep, atlas, hooks, ps, common, dtype, ctx, lm.d_model)

    if "eval" in todo:
        # --train-tokens: the same FVU on training-split tokens, so the printed in-sample and
        # held-out numbers are one measure (`lmscope train` prints a per-batch mean).
        argv = ["eval", str(atlas), "--tokens", str(ps.eval_tokens)]
        argv += ["--train-tokens", str(ps.eval_tokens), *ctx, *dt]
        if ps.splice_tokens:
            argv += ["--splice-tokens", str(ps.splice_tokens)]
        if not ps.baselines:
            argv += ["--no-baselines"]
        rep.stage(
            "eval",
            "loss added by each dictionary (nats, KL), FVU with and without outlier tokens, on "
            "held-out documents",
            argv,
        )
        _call(argv)

    if "atlas" in todo:
        argv = ["atlas", "build", str(atlas), "--tokens", str(ps.atlas_tokens), *ctx, *dt]
        rep.stage("atlas", "profile every feature into atlas.db", argv)
        _call(argv)
        _show_features(rep, atlas, hooks[len(hooks) // 2])

    if "explain" in todo:
        argv = ["explain", str(atlas)]
        rep.stage(
            "explain",
            "label every feature (stats explainer); score the labels on held-out windows against "
            "an equal-budget top-token and a random baseline (paired, 95% bootstrap)",
            argv,
        )
        _call(argv)
        print(f"\n$ {rep.line(['explain-report', str(atlas)])}")
        _call(["explain-report", str(atlas)])

    if "probe" in todo:
        _probe(cfg, rep, probe, common, probe_layers)

    if "scan" in todo:
        argv = ["scan", str(atlas), cfg.prompt]
        rep.stage("scan", "which features fire on a prompt, at every dictionary", argv)
        _call(argv)

    graph = None
    if "graph" in todo:
        graph = _graph(cfg, rep, atlas)

    if "trace" in todo:
        argv = ["trace", str(atlas), cfg.trace_prompt, "--verify"]
        rep.stage("trace", "the features behind the next token, verified by ablation", argv)
        _call(argv)

    end = time.perf_counter()
    print(
        f"\ndone in {end - t0:.0f}s ({rep.times(end)}), peak RSS {_peak_rss_gb():.1f} GB. "
        f"Everything is in {out}/."
    )
    if atlas.is_dir():
        print(f"open the viewer:  {rep.line(['serve', str(atlas)])}")
    if graph is not None and graph.is_file():  # the viewer's graph page, at serve's default port
        print(f"then the graph:   http://127.0.0.1:8765/#/graph/{graph.name}  ({graph})")
    return 0


def _peak_rss_gb() -> float:
    """Peak resident memory of this process so far (every stage runs in it)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (2**30 if sys.platform == "darwin" else 2**20)


def _capture(cfg, rep, lm, store, ps, common, dt, dtype, ctx) -> None:
    from ..capture.pipeline import CaptureConfig, capture_to_store, format_report

    mid = cfg.layer if cfg.layer is not None else lm.n_layers // 2
    layers = sorted({max(0, lm.n_layers // 5), mid, min(lm.n_layers - 1, (4 * lm.n_layers) // 5)})
    hooks = ",".join(f"blocks.{L}.resid_post" for L in layers)
    argv = ["capture", *common, *dt, "--hooks", hooks, "--tokens", str(ps.capture_tokens), *ctx]
    rep.stage("capture", "activations into a store", [*argv, "--out", str(store)])
    res = capture_to_store(
        CaptureConfig(
            model=cfg.model,
            hooks=hooks,
            corpus=cfg.corpus,
            tokens=ps.capture_tokens,
            ctx_len=cfg.ctx_len,
            out=str(store),
            model_dtype=dtype,
            progress=sys.stderr.isatty(),
        ),
        lm=lm,
    )
    print(format_report(res))


def _train(cfg, rep, atlas, hooks, ps, common, dtype, ctx, d_model: int) -> None:
    from ..dictionaries.train_config import WHOLE_MODEL_LR_MULT, default_lr, parse_width
    from ..layout import AtlasLayout

    lr = ps.lr
    if lr is None:
        lr = WHOLE_MODEL_LR_MULT * default_lr(parse_width(ps.width, d_model))
    sizes = ["--width", ps.width, "--k", str(ps.k), "--tokens", str(ps.train_tokens)]
    sizes += ["--batch-size", str(ps.batch_size), "--lr", f"{lr:.6g}"]
    dts = ["--model-dtype", dtype, "--dtype", dtype] if dtype != "float32" else []
    if cfg.quick:
        argv = ["train", *common, *dts, "--hooks", hooks[0], "--arch", "topk", *sizes]
        what = "a TopK sparse autoencoder (features)"
    else:
        argv = ["train", *common, *dts, "--hooks", "blocks.*.mlp_in", "--transcode", "--skip"]
        argv += ["--arch", "topk", *sizes, "--buffer-mb", "1024"]
        what = "a skip transcoder at every layer, all from one model pass (features + graph)"
    argv += [*ctx, "--out", str(atlas)]
    rep.stage("train", what, argv)
    layout = AtlasLayout(atlas)
    done = set(layout.dictionaries()) if layout.exists() else set()
    if all(h in done for h in hooks):
        print(f"already trained: {len(hooks)} dictionaries in {atlas}")
    else:
        _call(argv + ([] if sys.stderr.isatty() else ["--no-progress"]))


def _probe_layers(spec: str, n_layers: int) -> str:
    """--probe-layers auto: the depths 6, 12, 16, 20 of 30 blocks (where the default model holds
    truth), scaled to this model's depth."""
    if spec.strip() != "auto":
        return spec
    return ",".join(str(min(n_layers - 1, round(n_layers * L / 30))) for L in (6, 12, 16, 20))


def _probe(cfg, rep, probe, common, layers: str) -> None:
    argv = ["probe", "train", *common, "--dataset", "cities,neg_cities"]
    argv += ["--layers", layers, "--kinds", "logistic,massmean", "--out", str(probe)]
    rep.stage("probe", "where does the model hold 'true'? (held-out cities)", argv)
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
        print(f"$ {rep.line(['lie-check', '--probe', str(probe), text])}")
        _call(["lie-check", "--probe", str(probe), text])


def graph_stem(prompt: str) -> str:
    """The run's graph file name (without .json) for a prompt: one file per prompt, so a rerun
    finds it instead of adding another."""
    return "run-" + (re.sub(r"[^A-Za-z0-9]+", "-", prompt.lower()).strip("-")[:60] or "prompt")


def _graph(cfg, rep, atlas: Path) -> Path:
    from ..trace.graph_files import graphs_dir, read_graph

    path = graphs_dir(atlas) / f"{graph_stem(cfg.trace_prompt)}.json"
    argv = ["graph", str(atlas), cfg.trace_prompt, "--out", str(path)]
    rep.stage(
        "graph",
        "attribution graph of the next token through the run's transcoders (float32)",
        argv,
    )
    if path.is_file():
        meta = read_graph(path)["metadata"]["lmscope"]
        print(f"already built: {path} ({meta['n_nodes']} nodes, {meta['n_links']} links)")
        print(
            f"replacement score {meta['replacement_score']:.3f} (pruned "
            f"{meta['pruned_replacement_score']:.3f}), completeness "
            f"{meta['completeness_score']:.3f} (pruned {meta['pruned_completeness_score']:.3f})"
        )
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        _call(argv)
    return path


def _show_features(rep: _Report, atlas: Path, hook: str, n: int = 2) -> None:
    """Print the dashboards of the n most frequently firing features of one dictionary."""
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
        argv = ["feature", str(atlas), f"{hook}/{j}", "--top", "3"]
        print(f"\n$ {rep.line(argv)}")
        from . import main

        main(argv)
