"""Label features of an atlas and score every label next to baselines; results go into atlas.db.

Per batch of features: profiles are read (main thread), explained and scored (inline for the stats
explainer, a thread pool for an LLM), then written (main thread, one explanation per method with its
scores, plus the two baselines). A feature already explained with the same method+version is
skipped, so an interrupted or failed run resumes where it stopped; an LLM failure keeps the batch's
finished features and stops with one line saying how to continue.
"""

from __future__ import annotations

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

SCORERS = ("direct", "embedding", "detection", "fuzzing")


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
    scorers: str = "direct,embedding"
    """comma-separated: direct, embedding, detection, fuzzing (the last two need --llm)"""
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
    shown windows far better than validation), weakest first (triage.py); 0 = every selected feature"""
    budget: int = 0
    """stop after this many LLM calls (cache hits are free; rerun to continue); 0 = no limit"""
    budget_usd: float = 0.0
    """stop once the cost at --price-in/--price-out reaches this many dollars; 0 = no limit"""

    def __post_init__(self) -> None:
        bad = [s for s in self.scorer_list() if s not in SCORERS]
        if bad:
            raise ValueError(f"unknown scorer {bad[0]!r}; choose from {', '.join(SCORERS)}")
        if self.explainer == "llm" or {"detection", "fuzzing"} & set(self.scorer_list()):
            if not self.llm:
                raise ValueError("the llm explainer and the detection/fuzzing scorers need --llm "
                                 "(local:smollm2-135m or openai:http://host:port/v1)")
        if self.llm and not self.llm.startswith(("local:", "openai:")):
            raise ValueError(f"--llm {self.llm!r}: use local:MODEL or openai:http://host:port/v1")
        if self.concurrency < 1 or self.batch < 1:
            raise ValueError("--concurrency and --batch must be >= 1")

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
    llm_usage: dict = field(default_factory=dict)
    triaged: int | None = None
    """features triage sent to the LLM (None: no triage)"""


def _select(db, cfg: ExplainConfig) -> list[tuple[str, int]]:
    if cfg.features:
        out = []
        for item in cfg.features.split(","):
            hook, _, idx = item.strip().rpartition("/")
            if not hook or not idx.isdigit():
                raise UserError(f"--features {item!r}: use hook/idx, e.g. blocks.6.resid_post/123")
            db._check_feature(hook, int(idx))
            out.append((hook, int(idx)))
        return out
    out = []
    for d in db.dictionaries():
        rows = [(i, dens) for i, dens, mx in db.densities(d.hook) if (mx or 0) > 0]
        if cfg.top_density:
            rows = sorted(rows, key=lambda r: -r[1])[:cfg.top_density]
        if cfg.sample and cfg.sample < len(rows):
            rows = sorted(random.Random(cfg.seed).sample(rows, cfg.sample))
        out += [(d.hook, i) for i, _ in rows]
    return out


def _done(db, method: str, version: str) -> set[tuple[str, int]]:
    return {(h, i) for h, i in db._q("SELECT d.hook, e.idx FROM explanations e JOIN dictionaries d "
                                     "ON d.id = e.dictionary WHERE e.method = ? AND e.version = ?",
                                     (method, version))}


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
                raise UserError("--llm openai:URL needs --llm-model NAME (the model the server serves)")
        self.client = LLMClient(url, model, cache_dir=cache_dir, timeout=cfg.timeout, retries=cfg.retries,
                                price_in=cfg.price_in, price_out=cfg.price_out, max_requests=cfg.budget,
                                max_cost_usd=cfg.budget_usd)

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()


def score_all(text: str, tokens: list[str] | None, held: Held, scorers: list[str],
              client: LLMClient | None) -> list[ScoreResult]:
    """Score one label on one held-out part. `tokens`: the label's structured token list (token-based
    labels, scored by it as is) or None (free text; the direct scorer parses it with a stop list)."""
    out = []
    for s in scorers:
        if s == "direct":
            from .scorers.direct import score_direct
            out.append(score_direct(text, held, tokens))
        elif s == "embedding":
            from .scorers.embedding import score_embedding
            out.append(score_embedding(text, held))
        elif s == "detection":
            from .scorers.detection import score_detection
            out.append(score_detection(client, text, held))
        elif s == "fuzzing":
            from .scorers.fuzzing import score_fuzzing
            out.append(score_fuzzing(client, text, held))
    return out


def split_config(db) -> SplitConfig:
    """The split for this atlas: whole corpus contexts of its build go to one part."""
    build = db.meta().get("build") or {}
    return SplitConfig(ctx_len=(build.get("identity") or {}).get("ctx_len"))


def explain_atlas(cfg: ExplainConfig, *, progress: bool = True) -> ExplainResult:
    from tqdm.auto import tqdm

    from ..atlas.db import AtlasDB
    from ..atlas.layout import AtlasLayout
    from .llm_explainer import explain_llm
    from .stats_explainer import Labeller, explain_stats

    t0 = time.perf_counter()
    layout = AtlasLayout(cfg.atlas)
    if not layout.db_path.is_file():
        raise UserError(f"{cfg.atlas} has no feature profiles (no atlas.db); run `lmscope atlas build {cfg.atlas}` first")
    db = AtlasDB(layout.db_path)
    llm = None
    res = ExplainResult()
    try:
        if not db.dictionaries():
            raise UserError(f"{cfg.atlas} has no feature profiles; run `lmscope atlas build {cfg.atlas}` first")
        method, version = cfg.method
        feats = _select(db, cfg)
        done = _done(db, method, version)
        todo = [f for f in feats if f not in done]
        res.selected, res.skipped = len(feats), len(feats) - len(todo)
        scorers = cfg.scorer_list()
        if cfg.llm:
            llm = _LLM(cfg, layout.root / "llm_cache")
        client = llm.client if llm else None
        labeller = Labeller.for_atlas(db) if cfg.explainer == "stats" else None  # WordNet + output null
        split_cfg = split_config(db)
        if cfg.explainer == "llm" and cfg.triage:
            from .triage import triage

            todo = [(t.hook, t.feature) for t in triage(db, todo, cfg.triage, split_cfg, Labeller(coherence=False))]
            res.triaged = len(todo)
        bar = tqdm(total=len(todo), desc=f"explain ({method})", disable=not progress, unit="feat")

        def work(item, score=True):
            p, sp = item
            if cfg.explainer == "stats":
                e = explain_stats(p, sp, labeller)
                text, details = e.label, e.details()
            else:
                text, details = explain_llm(client, p, sp), {"model": client.model}
            return text, details, score_all(text, details.get("tokens"), sp.test, scorers, client) if score else None

        for b0 in range(0, len(todo), cfg.batch):
            chunk = todo[b0:b0 + cfg.batch]
            items = []
            for h, i in chunk:
                p = db.feature(h, i)
                items.append((p, split_examples(p, split_cfg)))
            results: list = [None] * len(items)
            error = None
            if cfg.explainer == "stats" and client is None:
                results = [work(it, score=False) for it in items]
                if "embedding" in scorers:  # embed the batch's windows and labels in a few large forwards
                    from .scorers.embedding import prefetch
                    from .split import window_text
                    prefetch([r[0] for r in results] + [window_text(e) for _, sp in items
                                                        for e in sp.test.pos + sp.test.neg])
                results = [(t, d, score_all(t, d.get("tokens"), sp.test, scorers, client))
                           for (t, d, _), (_, sp) in zip(results, items)]
            else:
                with ThreadPoolExecutor(cfg.concurrency) as pool:
                    futs = [pool.submit(work, it) for it in items]
                    for j, f in enumerate(futs):
                        try:
                            results[j] = f.result()
                        except LLMError as e:
                            error = error or e
            labels = [(r[0], r[1]) if r else None for r in results]
            for j, ((p, sp), r) in enumerate(zip(items, results)):
                if r is None:
                    continue
                try:
                    _write(db, p, sp, r, method, version, cfg, labels, j, scorers, client)
                except LLMError as e:
                    error = error or e
                    continue
                res.explained += 1
                bar.update(1)
            if error is not None:
                bar.close()
                raise UserError(f"{error}; {res.explained} features were saved, rerun the same command to resume "
                                f"({len(todo) - res.explained} left)")
        bar.close()
    finally:
        if llm is not None:
            res.llm_usage = asdict(llm.client.usage)
            llm.close()
        db.close()
    res.seconds = time.perf_counter() - t0
    return res


def _write(db, p, sp, r, method, version, cfg, labels, j, scorers, client) -> None:
    text, details, scores = r
    # Baselines are scored before anything of this feature is written, so a failure leaves no half feature.
    base = []
    if cfg.baselines:
        k = baselines.random_partner(j, len(labels), cfg.seed)
        rand = labels[k] if k is not None else None
        if rand:
            rtoks = rand[1].get("tokens")
            base.append((baselines.RANDOM, rand[0], rtoks, score_all(rand[0], rtoks, sp.test, scorers, client)))
        top = baselines.top_token_label(sp, details.get("says"))
        if top:
            base.append((baselines.TOPTOKEN, top[0], top[1], score_all(top[0], top[1], sp.test, scorers, client)))
    details = {**details, "shown": len(sp.shown), "valid_pos": len(sp.valid.pos), "valid_neg": len(sp.valid.neg),
               "test_pos": len(sp.test.pos), "test_neg": len(sp.test.neg)}
    with db.conn:
        rows = [(method, version, text, details, scores)] + [
            (m, baselines.VERSION, t, {"for": method, "for_version": version, "tokens": tk}, s)
            for m, t, tk, s in base]
        for m, v, t, d, ss in rows:
            eid = db.add_explanation(p.hook, p.feature, t, method=m, version=v, details=d)
            for s in ss:
                db.add_score(eid, scorer=s.scorer, metric=s.metric, value=s.value, n_pos=s.n_pos, n_neg=s.n_neg,
                             details=s.details)
        if not p.label:  # never overwrite an existing (e.g. hand-written) label
            db.set_label(p.hook, p.feature, text)
