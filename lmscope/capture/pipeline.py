"""`lmscope capture`: run a corpus through a model and write an activation store.

    res = capture_to_store(CaptureConfig(model="smollm2-135m", hooks="blocks.6.resid_post",
                                         tokens=200_000, out="store/"))
    res.tokens_per_s, res.norms["blocks.6.resid_post"]["mean_norm"]

One forward pass per batch of contexts, stopped after the deepest requested hook (no LM head).
Shards are flushed as they fill, so peak memory is one shard plus one batch, whatever the token
count. Resumable: progress.json records the settings and the shards done; rerunning the same
command skips the contexts already stored (re-tokenizing them, not re-running the model).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

from ..config import to_dict
from ..errors import UserError
from ..layout import write_json_atomic
from ..models.registry import DEFAULT_MODEL
from ..validate import Str, check, read_json
from . import corpus as C
from .store import (
    DOCUMENTS,
    DTYPES,
    MANIFEST,
    PROGRESS,
    SCHEMA_VERSION,
    ActivationStore,
    NormStats,
    shard_name,
    write_shard,
)

if TYPE_CHECKING:
    from ..models import LanguageModel

MAX_TOKENS = 10_000_000_000

# Settings that may change between an interrupted capture and its resume.
RESUME_FREE = ("progress", "device", "batch_size")


@dataclass(frozen=True)
class CaptureConfig:
    """Capture activations at hook points over a corpus into an activation store."""

    model: str = DEFAULT_MODEL
    """Model alias, Hugging Face id, local folder or .gguf file."""
    hooks: str = "blocks.6.resid_post"
    """Hook points: comma-separated names or globs, e.g. 'blocks.6.resid_post,blocks.*.mlp_out'."""
    corpus: str = "default"
    """'default' (built-in English), a .txt/.md/.jsonl/.parquet file or folder, or hf:NAME."""
    text_field: str = "text"
    """Field (.jsonl) or column (.parquet, hf:) holding the text."""
    tokens: int = 200_000
    """Tokens to capture (positions, BOS included); accepts 200k, 2M."""
    out: str = "store"
    """Output folder of the activation store."""
    ctx_len: int = 128
    """Tokens per context (BOS first)."""
    batch_size: int = 16
    """Contexts per forward pass (peak memory grows with it)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Storage dtype of the activations (bfloat16 halves the disk; norms are computed in float32
    first)."""
    model_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """dtype of the model weights (bfloat16 is ~2x faster on CPUs with AVX-512 bf16)."""
    device: str = "cpu"
    """torch device: cpu, cuda, cuda:1."""
    split: Literal["train", "heldout", "all"] = "train"
    """Corpus split to capture."""
    seed: int = 0
    """Seed of the document shuffle (same seed, same contexts)."""
    shard_mb: float = 256
    """Target size of one shard file in MB (also the write buffer in memory)."""
    progress: bool = True
    """Show a progress bar (tokens/s, ETA)."""

    def __post_init__(self) -> None:
        if not 0 < self.tokens <= MAX_TOKENS:
            raise ValueError(f"--tokens must be between 1 and {MAX_TOKENS:,} (got {self.tokens:,})")
        if self.ctx_len < 2 or self.ctx_len > 1_000_000:
            raise ValueError(f"--ctx-len must be between 2 and 1,000,000 (got {self.ctx_len})")
        if self.tokens < self.ctx_len:
            raise ValueError(
                f"--tokens {self.tokens} is less than one context of --ctx-len {self.ctx_len}"
            )
        if self.batch_size < 1 or self.shard_mb <= 0:
            raise ValueError("--batch-size and --shard-mb must be positive")


@dataclass(frozen=True)
class CaptureResult:
    out: Path
    hooks: list[str]
    tokens: int
    """positions stored (BOS included)"""
    contexts: int
    seconds: float
    """wall time of this run (a resumed run counts only its own part)"""
    tokens_this_run: int
    bytes: int
    norms: dict
    """per hook: tokens, mean_norm, std_norm, max_norm, rms_norm, bos_mean_norm"""
    resumed: bool
    already_complete: bool
    corpus_exhausted: bool

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_this_run / max(self.seconds, 1e-9)


def _settings(cfg: CaptureConfig, lm: LanguageModel, hooks: list[str]) -> dict:
    d = {k: v for k, v in to_dict(cfg).items() if k not in RESUME_FREE and k != "out"}
    d["hooks"] = hooks
    d["model_fingerprint"] = lm.fingerprint()
    d["corpus_fingerprint"] = C.fingerprint(cfg.corpus, text_field=cfg.text_field)
    return d


def _digest(d: dict) -> str:
    return hashlib.blake2b(json.dumps(d, sort_keys=True).encode(), digest_size=8).hexdigest()


def capture_to_store(cfg: CaptureConfig, *, lm: LanguageModel | None = None) -> CaptureResult:
    """Run (or resume) a capture. Returns at once for a store that is already complete."""
    from ..models.load import load_model
    from ..models.tokens import special_ids

    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a folder")
    if (
        out.is_dir()
        and any(out.iterdir())
        and not ((out / MANIFEST).is_file() or (out / PROGRESS).is_file())
    ):
        raise UserError(
            f"--out {out} is a non-empty folder that is not an activation store; "
            "pass a new folder (nothing is overwritten)"
        )
    lm = lm or load_model(cfg.model, dtype=cfg.model_dtype, device=cfg.device)
    hooks = lm.hooks.resolve(cfg.hooks)
    settings = _settings(cfg, lm, hooks)
    key = _digest(settings)

    if (out / MANIFEST).is_file():
        st = ActivationStore(out)
        if st.manifest.get("settings_digest") != key:
            raise UserError(
                f"{out} already holds a complete store made with other settings; "
                "pass a new --out (a complete store is never rewritten)"
            )
        return CaptureResult(
            out,
            hooks,
            st.n_tokens,
            st.n_contexts,
            0.0,
            0,
            sum(s["bytes"] for s in st.manifest["shards"]),
            st.norms,
            False,
            True,
            st.manifest.get("corpus_exhausted", False),
        )

    prog: dict = {}
    if (out / PROGRESS).is_file():
        prog = check(
            read_json(out / PROGRESS, what="capture progress"),
            {"settings_digest": Str(200, required=False)},
            where=str(out / PROGRESS),
        )
        if prog.get("settings_digest") != key:
            diff = [k for k in settings if prog.get("settings", {}).get(k) != settings[k]]
            raise UserError(
                f"{out} holds an unfinished capture with other settings "
                f"({', '.join(diff) or 'model'}); "
                "rerun it with the same flags to finish it, or pass a new --out"
            )
    out.mkdir(parents=True, exist_ok=True)

    dims = {h: lm.hooks[h].d for h in hooks}
    st_dtype = DTYPES[cfg.dtype]
    bytes_per_ctx = cfg.ctx_len * (4 + sum(dims.values()) * st_dtype.itemsize)
    ctx_per_shard = max(1, int(cfg.shard_mb * 2**20 // bytes_per_ctx))
    n_ctx = cfg.tokens // cfg.ctx_len
    shards: list[dict] = prog.get("shards", [])
    done_ctx = sum(s["contexts"] for s in shards)
    need = (n_ctx - done_ctx) * bytes_per_ctx
    free = shutil.disk_usage(out).free
    if need * 1.05 > free:
        raise UserError(
            f"the store needs {need / 2**30:.2f} GiB more but {out} has {free / 2**30:.2f} GiB "
            "free; "
            "free space, use --dtype bfloat16, or capture fewer --tokens"
        )

    norms = {h: NormStats(**prog["norms"][h]) if prog.get("norms") else NormStats() for h in hooks}
    special = special_ids(lm)
    # The documents of the stored contexts (rebuilt on resume: the skipped contexts pass through
    # pack too), so a dictionary trained on this store can say which documents it saw.
    seen: set[int] = set()
    stream = C.pack(
        lm.tokenizer,
        C.iter_documents(cfg.corpus, text_field=cfg.text_field, split=cfg.split),
        ctx_len=cfg.ctx_len,
        batch_size=1,
        bos_token_id=lm.bos_token_id,
        seed=cfg.seed,
        seen=seen,
    )

    def save_progress() -> None:
        write_json_atomic(
            out / PROGRESS,
            {
                "settings_digest": key,
                "settings": settings,
                "shards": shards,
                "norms": {h: vars(s) for h, s in norms.items()},
            },
        )

    if not prog:
        save_progress()

    # Skip contexts already stored (tokenizing is cheap next to the forward pass).
    skipped = 0
    for _ in range(done_ctx):
        if next(stream, None) is None:
            break
        skipped += 1

    from tqdm.auto import tqdm

    bar = tqdm(
        total=n_ctx * cfg.ctx_len,
        initial=done_ctx * cfg.ctx_len,
        unit="tok",
        unit_scale=True,
        desc=f"capture {len(hooks)} hook{'s' if len(hooks) > 1 else ''}",
        disable=not cfg.progress,
        dynamic_ncols=True,
        file=sys.stderr,
        smoothing=0.1,
    )
    buf_toks: list[torch.Tensor] = []
    buf_acts: dict[str, list[torch.Tensor]] = {h: [] for h in hooks}
    have = done_ctx
    exhausted = False
    t0 = time.perf_counter()
    run_tokens = 0

    def flush() -> None:
        nonlocal buf_toks
        if not buf_toks:
            return
        i = len(shards)
        tensors = {"tokens": torch.cat(buf_toks).to(torch.int32)}
        for h in hooks:
            tensors[h] = torch.cat(buf_acts[h])
            buf_acts[h] = []
        write_shard(out / shard_name(i), tensors, metadata={"lmscope_store": str(SCHEMA_VERSION)})
        shards.append(
            {
                "file": shard_name(i),
                "contexts": int(tensors["tokens"].shape[0]),
                "bytes": (out / shard_name(i)).stat().st_size,
            }
        )
        buf_toks = []
        save_progress()  # only after the shard is on disk: a crash re-captures at most one shard

    try:
        while have < n_ctx:
            rows = []
            while len(rows) < min(cfg.batch_size, n_ctx - have):
                nxt = next(stream, None)
                if nxt is None:
                    exhausted = True
                    break
                rows.append(nxt[0])
            if not rows:
                break
            tokens = torch.stack(rows).to(lm.device)  # [b, ctx_len]
            res = lm.run(tokens, capture=hooks)
            keep = ~torch.isin(tokens, special.to(tokens.device))
            keep[:, 0] = False
            for h in hooks:
                a = res.acts[h]  # [b, ctx_len, d]
                nrm = a.float().norm(dim=-1)  # [b, ctx_len]
                norms[h].add(nrm[keep].cpu(), nrm[:, 0].cpu())
                buf_acts[h].append(a.to(st_dtype).cpu())
            buf_toks.append(tokens.cpu())
            have += len(rows)
            run_tokens += len(rows) * cfg.ctx_len
            bar.update(len(rows) * cfg.ctx_len)
            if sum(t.shape[0] for t in buf_toks) >= ctx_per_shard:
                flush()
            if exhausted:
                break
        flush()
    finally:  # Ctrl-C: the shards written so far stay; the CLI says to rerun the same command
        bar.close()
    seconds = time.perf_counter() - t0
    if not shards:
        raise UserError(
            f"corpus {cfg.corpus!r} gave no context of {cfg.ctx_len} tokens; pass a larger corpus "
            "or a smaller --ctx-len"
        )
    if exhausted:
        print(
            f"lmscope: the corpus ran out after {have * cfg.ctx_len:,} of {cfg.tokens:,} tokens; "
            "the store holds what it had",
            file=sys.stderr,
        )

    from .documents import record

    docs = record(
        file=DOCUMENTS,
        keys=seen,
        folder=out,
        corpus=settings["corpus_fingerprint"],
        split=cfg.split,
        seed=cfg.seed,
        source="capture",
    )
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "kind": "lmscope.activation_store",
        "model": lm.name,
        "model_fingerprint": lm.fingerprint(),
        "hooks": {h: {"d": dims[h], "shape": ["contexts", "ctx_len", dims[h]]} for h in hooks},
        "dtype": cfg.dtype,
        "ctx_len": cfg.ctx_len,
        "tokens": have * cfg.ctx_len,
        "contexts": have,
        "requested_tokens": cfg.tokens,
        "corpus_exhausted": exhausted,
        "corpus": {**settings["corpus_fingerprint"], "split": cfg.split, "seed": cfg.seed},
        "special_ids": special.tolist(),
        "bos_token_id": lm.bos_token_id,
        "documents": docs,
        "shards": shards,
        "norms": {h: s.summary() for h, s in norms.items()},
        "config": to_dict(cfg),
        "settings_digest": key,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_json_atomic(out / MANIFEST, manifest)  # last: now the store is complete
    (out / PROGRESS).unlink(missing_ok=True)
    return CaptureResult(
        out,
        hooks,
        have * cfg.ctx_len,
        have,
        seconds,
        run_tokens,
        sum(s["bytes"] for s in shards),
        manifest["norms"],
        bool(prog),
        False,
        exhausted,
    )


def format_report(res: CaptureResult) -> str:
    """The short report `lmscope capture` and `lmscope run` print."""
    lines = []
    if res.already_complete:
        lines.append(f"store {res.out} is already complete ({res.tokens:,} tokens); nothing to do")
    else:
        lines.append(
            f"captured {res.tokens_this_run:,} tokens in {res.seconds:.1f}s "
            f"({res.tokens_per_s:,.0f} tok/s){' (resumed)' if res.resumed else ''}"
        )
    lines.append(
        f"store: {res.out}  ({res.tokens:,} tokens, {res.contexts:,} contexts, "
        f"{res.bytes / 2**20:,.1f} MiB)"
    )
    lines.append(f"  {'hook':<26}{'mean |x|':>10}{'std':>9}{'max':>10}{'BOS |x|':>10}")
    for h, s in res.norms.items():
        bos = f"{s['bos_mean_norm']:>10.1f}" if s.get("bos_mean_norm") is not None else f"{'-':>10}"
        lines.append(
            f"  {h:<26}{s['mean_norm']:>10.2f}{s['std_norm']:>9.2f}{s['max_norm']:>10.1f}{bos}"
        )
    return "\n".join(lines)


__all__ = ["CaptureConfig", "CaptureResult", "capture_to_store", "format_report"]
