"""Label features of an atlas and score every label next to baselines; results go into atlas.db.

Per batch of features: profiles are read (main thread), explained and scored (inline for the stats
explainer, a thread pool for an LLM), then written (main thread, one explanation per method with
its scores, plus the two baselines). With --workers N > 1 (stats explainer, no LLM) forked
processes read, label and score whole batches while this process embeds the labels' phrases and
writes, batch by batch in order (parallel.py): the database ends up the same, bit for bit. A
feature already explained with the same method+version is skipped, so an interrupted or failed run
resumes where it stopped; an LLM failure keeps the batch's finished features and stops with one
line saying how to continue.
"""

from __future__ import annotations

import gc
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from ..errors import UserError
from . import baselines
from .llm_client import LLMClient, LLMError
from .scorers import ScoreResult
from .split import Held, SplitConfig, split_examples

SCORERS = ("direct", "embedding", "simulation", "detection", "fuzzing")
EMBEDDED = ("embedding", "simulation")
"""scorers that read the atlas's contextual token embeddings (token_embeddings.py)"""


@dataclass(frozen=True)
class ExplainConfig:
    atlas: str
    """atlas folder (built by `lmscope atlas build`)"""
    features: str = ""
    """only these features: hook/idx,hook/idx,... (empty = every feature that fired)"""
    top_density: int = 0
    """only the N most frequently firing features per dictionary (0 = no limit)"""
    sample: int = 0
    """a seeded random sample of N features per dictionary (0 = all)"""
    explainer: Literal["stats", "llm"] = "stats"
    """stats: counts + logit effects, no LLM; llm: an OpenAI-compatible chat model (--llm)"""
    scorers: str = "direct,embedding,simulation"
    """comma-separated: direct, embedding, simulation, detection, fuzzing (the last two need
    --llm)"""
    judge_pos: int = 50
    """detection/fuzzing: held-out activating windows judged per feature, spread over activation
    quantiles (delphi: 50); fewer where the atlas's test part has fewer"""
    judge_neg: int = 50
    """detection: non-activating windows judged per feature (delphi: 50)"""
    llm: str = ""
    """local:MODEL (our server in-process, e.g. local:smollm2-135m) or openai:http://host:port/v1"""
    llm_model: str = ""
    """model name sent to an openai: server (default: the local model's name)"""
    concurrency: int = 4
    """parallel LLM requests"""
    timeout: float = 60.0
    """seconds per LLM request"""
    retries: int = 4
    """retries per LLM request (429/5xx/timeouts), exponential backoff"""
    price_in: float = 0.0
    """USD per 1M prompt tokens (cost accounting)"""
    price_out: float = 0.0
    """USD per 1M completion tokens"""
    baselines: bool = True
    """also store and score the random-label and top-token baselines"""
    batch: int = 256
    """features per batch (written together)"""
    seed: int = 0
    """seed of --sample and of the random baseline"""
    triage: float = 0.0
    """llm explainer: only features whose stats label scores below this on VALIDATION (or fits its
    shown windows far better than validation), weakest first (triage.py); 0 = every selected
    feature"""
    budget: int = 0
    """stop after this many LLM calls (cache hits are free; rerun to continue); 0 = no limit"""
    budget_usd: float = 0.0
    """stop once the cost at --price-in/--price-out reaches this many dollars; 0 = no limit"""
    workers: int = 0
    """processes that read, label and score features in parallel (stats explainer without an
    LLM; the parent embeds phrases and writes, so the results are identical to 1 worker);
    0 = auto: min(2, the CPUs this process may run on); 1 = all in this process"""
    embed_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """embedding/simulation: the sentence embedder's matrix products in float32 (the reference) or
    bfloat16 (autocast; less CPU on cores with AVX-512 BF16 / AMX, scores move by < 0.001 on
    average: docs/explain.md "Speed"); auto = bfloat16 where the CPU has native bf16, else float32;
    each dtype's vectors are cached separately"""

    def __post_init__(self) -> None:
        bad = [s for s in self.scorer_list() if s not in SCORERS]
        if bad:
            raise ValueError(f"unknown scorer {bad[0]!r}; choose from {', '.join(SCORERS)}")
        if self.explainer == "llm" or {"detection", "fuzzing"} & set(self.scorer_list()):
            if not self.llm:
                raise ValueError(
                    "the llm explainer and the detection/fuzzing scorers need --llm "
                    "(local:smollm2-135m or openai:http://host:port/v1)"
                )
        if self.llm and not self.llm.startswith(("local:", "openai:")):
            raise ValueError(f"--llm {self.llm!r}: use local:MODEL or openai:http://host:port/v1")
        if self.concurrency < 1 or self.batch < 1:
            raise ValueError("--concurrency and --batch must be >= 1")
        if self.judge_pos < 1 or self.judge_neg < 1:
            raise ValueError("--judge-pos and --judge-neg must be >= 1")
        if self.workers < 0:
            raise ValueError("--workers must be >= 0 (0 = auto)")
        if self.embed_dtype not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"--embed-dtype {self.embed_dtype!r}: use auto, float32 or bfloat16")

    @property
    def embed_dtype_resolved(self) -> str:
        """float32 or bfloat16: auto picks bfloat16 only where this CPU runs it natively (an
        emulated bf16 is slower than float32, models/load.py)."""
        if self.embed_dtype != "auto":
            return self.embed_dtype
        import torch

        from ..models.load import cpu_half_is_slow

        return "float32" if cpu_half_is_slow(torch.bfloat16) else "bfloat16"

    @property
    def workers_resolved(self) -> int:
        """Worker processes this run uses: 1 where an LLM is involved (its requests already run
        in a thread pool) or where fork is missing; else --workers, auto = min(2, usable CPUs)."""
        import multiprocessing
        import os

        if self.llm or "fork" not in multiprocessing.get_all_start_methods():
            return 1
        if self.workers:
            return self.workers
        try:
            cpus = len(os.sched_getaffinity(0))
        except AttributeError:  # macOS: no affinity API
            cpus = os.cpu_count() or 1
        return max(1, min(2, cpus))

    def scorer_list(self) -> list[str]:
        return [s.strip() for s in self.scorers.split(",") if s.strip()]

    @property
    def method(self) -> tuple[str, str]:
        from . import llm_explainer, stats_explainer

        m = stats_explainer if self.explainer == "stats" else llm_explainer
        return m.METHOD, m.VERSION


@dataclass
class ExplainResult:
    explained: int = 0
    skipped: int = 0
    selected: int = 0
    seconds: float = 0.0
    embedded_tokens: int = 0
    """corpus tokens embedded in context by this run (0 when the atlas's cache had them all)"""
    embed_seconds: float = 0.0
    workers: int = 1
    """processes that labelled and scored (--workers resolved)"""
    embed_dtype: str = ""
    """the sentence embedder's dtype this run used (--embed-dtype auto resolved)"""
    """of `seconds`, spent embedding the atlas's text (once per atlas; cached)"""
    llm_usage: dict = field(default_factory=dict)
    triaged: int | None = None
    """features triage sent to the LLM (None: no triage)"""
    per_dictionary: dict = field(default_factory=dict)
    """hook -> features explained by this run"""


def _select(db, cfg: ExplainConfig) -> list[tuple[str, int]]:
    if cfg.features:
        from ..dictionaries.feature_id import parse_feature_id

        out = []
        for item in cfg.features.split(","):
            hook, idx = parse_feature_id(item)
            db._check_feature(hook, idx)
            out.append((hook, idx))
        return out
    out = []
    for d in db.dictionaries():
        rows = [(i, dens) for i, dens, mx in db.densities(d.hook) if (mx or 0) > 0]
        if cfg.top_density:
            rows = sorted(rows, key=lambda r: -r[1])[: cfg.top_density]
        if cfg.sample and cfg.sample < len(rows):
            rows = sorted(random.Random(cfg.seed).sample(rows, cfg.sample))
        out += [(d.hook, i) for i, _ in rows]
    return out


class _LLM:
    """The client for --llm, starting our local server in-process for local:MODEL."""

    def __init__(self, cfg: ExplainConfig, cache_dir: Path) -> None:
        self.server = None
        kind, _, target = cfg.llm.partition(":")
        if kind == "local":
            from ..models.load import load_model
            from .local_server import LocalServer

            self.server = LocalServer(load_model(target), target).start()
            url, model = self.server.url, cfg.llm_model or target
        else:
            url, model = target, cfg.llm_model
            if not model:
                raise UserError(
                    "--llm openai:URL needs --llm-model NAME (the model the server serves)"
                )
        self.client = LLMClient(
            url,
            model,
            cache_dir=cache_dir,
            timeout=cfg.timeout,
            retries=cfg.retries,
            price_in=cfg.price_in,
            price_out=cfg.price_out,
            max_requests=cfg.budget,
            max_cost_usd=cfg.budget_usd,
        )

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()


class Scoring:
    """Everything the scorers of one run share: the scorer list, the LLM client, the atlas's token
    embeddings and the sentence embedder (for embedding/simulation)."""

    def __init__(
        self,
        scorers: list[str],
        client: LLMClient | None,
        cfg: ExplainConfig,
        te=None,
        phrase_cache: Path | None = None,
    ) -> None:
        self.scorers, self.client, self.cfg, self.te = scorers, client, cfg, te
        self.emb = None
        self.phrase_cache = phrase_cache
        if set(scorers) & set(EMBEDDED):
            from .scorers.embedding import embedder

            self.emb = embedder(cfg.embed_dtype_resolved)
            if phrase_cache is not None:
                self.emb.load_phrases(phrase_cache)

    def save(self) -> None:
        if self.emb is not None and self.phrase_cache is not None:
            self.emb.save_phrases(self.phrase_cache)

    def prepare(self, labels: list[tuple[str, list[str] | None]]) -> None:
        """Embed the phrases of a batch's labels (text, tokens) in a few large forwards."""
        if self.emb is not None:
            from .token_embeddings import label_phrases

            self.emb.phrases([ph for t, tk in labels for ph in label_phrases(t, tk)])

    def prepared(self, held: Held) -> dict:
        """What every label of one feature is scored against, computed once: the direct scorer's
        trials and, for embedding/simulation, the held-out part as vectors."""
        out: dict = {}
        if "direct" in self.scorers:
            from .scorers.direct import trials

            out["direct"] = trials(held)
        if self.te is not None:
            out["vectors"] = self.te.held(held)
        return out

    def score(
        self, text: str, tokens: list[str] | None, held: Held, prep: dict | None = None
    ) -> list[ScoreResult]:
        """Score one label on one held-out part. `tokens`: the label's structured token list
        (token-based
        labels, scored by it as is) or None (free text; the direct scorer parses it with a stop
        list);
        `prep`: self.prepared(held), shared by a feature's label and its baselines."""
        prep = prep if prep is not None else self.prepared(held)
        out = []
        vec = None
        if self.emb is not None and set(self.scorers) & set(EMBEDDED):
            from .scorers.embedding import label_vector

            vec = label_vector(text, self.emb, tokens)
        for s in self.scorers:
            if s == "direct":
                from .scorers.direct import score_direct

                out.append(score_direct(text, held, tokens, prep.get("direct")))
            elif s == "embedding":
                from .scorers.embedding import score_embedding

                out.append(score_embedding(vec, prep["vectors"]))
            elif s == "simulation":
                from .scorers.simulation import score_simulation

                out.append(score_simulation(vec, prep["vectors"]))
            elif s == "detection":
                from .scorers.detection import score_detection

                out.append(
                    score_detection(self.client, text, held, self.cfg.judge_pos, self.cfg.judge_neg)
                )
            elif s == "fuzzing":
                from .scorers.fuzzing import score_fuzzing

                out.append(score_fuzzing(self.client, text, held, self.cfg.judge_pos))
        return out


def split_config(db) -> SplitConfig:
    """The split for this atlas: whole corpus contexts of its build go to one part."""
    build = db.meta().get("build") or {}
    return SplitConfig(ctx_len=(build.get("identity") or {}).get("ctx_len"))


def explain_atlas(cfg: ExplainConfig, *, progress: bool = True) -> ExplainResult:
    from tqdm.auto import tqdm

    from ..atlas.db import AtlasDB
    from ..layout import AtlasLayout
    from .llm_explainer import explain_llm
    from .stats_explainer import Labeller, explain_stats

    t0 = time.perf_counter()
    layout = AtlasLayout(cfg.atlas)
    if not layout.db_path.is_file():
        raise UserError(
            f"{cfg.atlas} has no feature profiles (no atlas.db); run `lmscope atlas build "
            f"{cfg.atlas}` first"
        )
    db = AtlasDB(layout.db_path)
    llm = None
    gc_old = None
    res = ExplainResult()
    try:
        if not db.dictionaries():
            raise UserError(
                f"{cfg.atlas} has no feature profiles; run `lmscope atlas build {cfg.atlas}` first"
            )
        method, version = cfg.method
        feats = _select(db, cfg)
        done = db.explained(method, version)
        todo = [f for f in feats if f not in done]
        res.selected, res.skipped = len(feats), len(feats) - len(todo)
        scorers = cfg.scorer_list()
        if cfg.llm:
            llm = _LLM(cfg, layout.root / "llm_cache")
        client = llm.client if llm else None
        labeller = (
            Labeller.for_atlas(db) if cfg.explainer == "stats" else None
        )  # WordNet + output null
        split_cfg = split_config(db)
        if cfg.explainer == "llm" and cfg.triage:
            from .triage import triage

            todo = [
                (t.hook, t.feature)
                for t in triage(db, todo, cfg.triage, split_cfg, Labeller(coherence=False))
            ]
            res.triaged = len(todo)
        te = None
        if todo and set(scorers) & set(EMBEDDED):
            te, res.embedded_tokens, res.embed_seconds = _token_embeddings(
                db, layout, todo, split_cfg, cfg.embed_dtype_resolved
            )
        from .scorers.embedding import embedder

        name = embedder(cfg.embed_dtype_resolved).name if set(scorers) & set(EMBEDDED) else "none"
        if name != "none":
            res.embed_dtype = cfg.embed_dtype_resolved
        scoring = Scoring(
            scorers,
            client,
            cfg,
            te,
            layout.root / "cache" / f"phrases.{name.replace('/', '_')}.npz",
        )
        if todo:
            _warm(labeller, te)  # before gc.freeze: what the loop only reads is never scanned
        gc_old = _quiet_gc()
        bar = tqdm(total=len(todo), desc=f"explain ({method})", disable=not progress, unit="feat")

        def label(item):
            p, sp = item
            if cfg.explainer == "stats":
                e = explain_stats(p, sp, labeller)
                return e.label, e.details()
            return explain_llm(client, p, sp), {"model": client.model}

        def labels_of(items) -> tuple[list, LLMError | None]:
            if client is None:
                return [label(it) for it in items], None
            out: list = [None] * len(items)
            err = None
            with ThreadPoolExecutor(cfg.concurrency) as pool:
                for j, f in enumerate([pool.submit(label, it) for it in items]):
                    try:
                        out[j] = f.result()
                    except LLMError as e:
                        err = err or e
            return out, err

        chunks = [todo[b0 : b0 + cfg.batch] for b0 in range(0, len(todo), cfg.batch)]
        workers = min(cfg.workers_resolved, len(chunks)) if client is None else 1
        res.workers = workers

        def write(rows: list) -> None:
            db.add_explanations(rows)  # one transaction per chunk, chunks in order
            scoring.save()
            res.explained += len(rows)
            for r in rows:
                res.per_dictionary[r.hook] = res.per_dictionary.get(r.hook, 0) + 1
            bar.update(len(rows))

        if workers > 1:
            from .parallel import run_parallel

            run_parallel(
                workers,
                chunks,
                _ChunkWork(layout.db_path, split_cfg, cfg, labeller, scoring, method, version),
                write,
            )
        for chunk in chunks if workers == 1 else []:
            items = _read_chunk(db, chunk, split_cfg)
            labels, error = labels_of(items)
            plans = _plans(items, labels, cfg)
            scoring.prepare(_phrases(plans))
            todo_j = [j for j in range(len(items)) if plans[j]]
            if client is None:
                scored = {j: _score_one(scoring, items, plans, j) for j in todo_j}
            else:
                scored = {}
                with ThreadPoolExecutor(cfg.concurrency) as pool:
                    futs = {j: pool.submit(_score_one, scoring, items, plans, j) for j in todo_j}
                    for j, f in futs.items():
                        try:
                            scored[j] = f.result()
                        except LLMError as e:
                            error = error or e
            write(_rows(items, scored, method, version))
            if error is not None:
                bar.close()
                raise UserError(
                    f"{error}; {res.explained} features were saved, rerun the same command to "
                    "resume "
                    f"({len(todo) - res.explained} left)"
                )
        bar.close()
    finally:
        if gc_old is not None:
            gc.set_threshold(*gc_old)
            gc.unfreeze()
        if llm is not None:
            res.llm_usage = asdict(llm.client.usage)
            llm.close()
        db.close()
    res.seconds = time.perf_counter() - t0
    return res


GC_THRESHOLD = 100_000
"""objects allocated between two young garbage collections while features are explained (Python's
default, 700, ran a collection every few examples: 1.5 ms of the 2 ms per feature of reading
profiles, and as much again in labelling and scoring, went to the collector)"""


def _quiet_gc() -> tuple[int, int, int]:
    """Collect garbage less often during the feature loop, and never scan what was built before it
    (WordNet, the labeller, the token embeddings: gc.freeze, which also keeps the --workers
    processes from touching, hence copying, the pages they share with this one). The loop makes
    no reference cycles it depends on freeing early; returns the old thresholds to restore."""
    old = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, old[1], old[2])
    return old


def _read_chunk(db, chunk: list[tuple[str, int]], split_cfg) -> list[tuple]:
    """(profile, split) of each feature of a chunk, in the order AtlasDB returns them."""
    profiles = []
    for h in dict.fromkeys(h for h, _ in chunk):
        profiles += db.feature_profiles(h, [i for hh, i in chunk if hh == h])
    return [(p, split_examples(p, split_cfg)) for p in profiles]


def _plans(items: list[tuple], labels: list, cfg: ExplainConfig) -> list:
    return [_plan(j, sp, labels, cfg) if labels[j] else None for j, (_, sp) in enumerate(items)]


def _phrases(plans: list) -> list[tuple]:
    """(text, tokens) of everything a chunk scores, in plan order (Scoring.prepare embeds them)."""
    return [(t, tk) for pl in plans if pl for _, t, tk, _ in pl]


def _score_one(scoring: Scoring, items: list, plans: list, j: int) -> list[tuple]:
    _, sp = items[j]
    prep = scoring.prepared(sp.test)
    # Baselines are scored before anything of this feature is written: no half feature.
    return [(m, t, tk, d, scoring.score(t, tk, sp.test, prep)) for m, t, tk, d in plans[j]]


def _rows(items: list, scored: dict, method: str, version: str) -> list:
    from ..atlas.db import BulkExplanations

    rows = []
    for j, out in scored.items():
        p, sp = items[j]
        (m, text, _, details, scores), *base = out
        details = {
            **details,
            "shown": len(sp.shown),
            "valid_pos": len(sp.valid.pos),
            "valid_neg": len(sp.valid.neg),
            "test_pos": len(sp.test.pos),
            "test_neg": len(sp.test.neg),
        }
        # Baselines stay out of the full-text search: a search for "horse" must not find the
        # random label another feature lent to this one.
        expl = [(method, version, text, details, _score_rows(scores), True)] + [
            (
                bm,
                baselines.VERSION,
                bt,
                {"for": method, "for_version": version, "tokens": btk},
                _score_rows(bs),
                False,
            )
            for bm, bt, btk, _, bs in base
        ]
        rows.append(BulkExplanations(p.hook, p.feature, expl, text, p.label))
    return rows


def _warm(labeller, te) -> None:
    """Build what every feature reads before the loop: the --workers processes then share it
    through fork instead of each building it, and gc.freeze keeps the collector off it (the
    labeller's seeded null and concept vectors, the token vectors in float32)."""
    if labeller is not None:
        labeller.coherence()
        labeller.curated()
    if te is not None:
        te._f32()


@dataclass
class _ChunkWork:
    """What a worker process needs to label and score chunks (inherited through fork)."""

    db_path: Path
    split_cfg: SplitConfig
    cfg: ExplainConfig
    labeller: object
    scoring: Scoring
    method: str
    version: str

    def label(self, db, chunk) -> tuple[list, list]:
        from .stats_explainer import explain_stats

        items = _read_chunk(db, chunk, self.split_cfg)
        labels = []
        for p, sp in items:
            e = explain_stats(p, sp, self.labeller)
            labels.append((e.label, e.details()))
        return items, _plans(items, labels, self.cfg)

    def score(self, items, plans) -> list:
        scored = {
            j: _score_one(self.scoring, items, plans, j) for j in range(len(items)) if plans[j]
        }
        return _rows(items, scored, self.method, self.version)


def _score_rows(scores: list[ScoreResult]) -> list[tuple]:
    return [(s.scorer, s.metric, s.value, s.n_pos, s.n_neg, s.details) for s in scores]


def _plan(j: int, sp, labels: list, cfg: ExplainConfig) -> list[tuple]:
    """(method-or-baseline, text, structured tokens or None, details) of everything scored for
    feature j:
    its label first, then the random label of another feature by the same method, then the
    equal-budget top-token label."""
    text, details = labels[j]
    out = [(None, text, details.get("tokens"), details)]
    if cfg.baselines:
        k = baselines.random_partner(j, len(labels), cfg.seed)
        rand = labels[k] if k is not None else None
        if rand:
            out.append((baselines.RANDOM, rand[0], rand[1].get("tokens"), None))
        top = baselines.top_token_label(sp, details.get("says"))
        if top:
            out.append((baselines.TOPTOKEN, top[0], top[1], None))
    return out


def _token_embeddings(db, layout, todo, split_cfg, dtype="float32"):
    """The atlas's contextual token embeddings covering every window of the features to explain."""
    from .scorers.embedding import embedder
    from .token_embeddings import ContextEmbedder

    t = time.perf_counter()
    hooks = list(dict.fromkeys(h for h, _ in todo))
    ctx = ContextEmbedder(db, hooks, split_cfg.ctx_len, layout.root / "cache", embedder(dtype))
    te = ctx.ensure(ctx.spans_of(todo))
    return te, ctx.embedded_tokens, time.perf_counter() - t
