"""What a training run is asked to do (`TrainConfig`) and what it resolved that to (`TrainPlan`).

`lmscope train`'s flags are generated from TrainConfig (lmscope.config.add_arguments), so
the CLI and the Python API take the same settings. The config is never mutated: everything
that depends on the model or the data (hook names, widths, the learning rate, step counts)
is resolved once into a TrainPlan, and both are saved as JSON next to the results
(atlas/train/config.json, atlas/train/plan.json). A resume compares the saved config with
the new one and refuses a changed run.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

import torch

from ..models.registry import DEFAULT_MODEL

_WIDTH = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*x\s*$", re.IGNORECASE)

# Settings that may differ between an interrupted run and its resume (they do not change the
# result).
RESUME_FREE = ("checkpoint_every", "force", "progress")


@dataclass(frozen=True)
class TrainConfig:
    """Train one sparse dictionary per hook point from one stream of model activations."""

    model: str = DEFAULT_MODEL
    """Model alias, Hugging Face id, local folder or .gguf file."""
    hooks: str = "middle"
    """Hook points, comma-separated names or globs (blocks.*.resid_post); 'middle' = the middle
    block's resid_post."""
    arch: Literal["topk", "batchtopk", "jumprelu", "relu"] = "topk"
    """Dictionary architecture."""
    width: str = "8x"
    """Latents per dictionary: an expansion of the input width ('8x', '16x') or an absolute count
    (4608)."""
    k: int = 32
    """Active latents per token (topk; the batch average for batchtopk)."""
    tokens: int = 200_000
    """Training tokens per dictionary (BOS positions excluded); accepts 200k, 2M."""
    batch_size: int = 4096
    """Tokens per optimizer step (the global batch, summed over ranks)."""
    lr: float | None = None
    """Adam learning rate; None: 2e-4 / sqrt(d_sae / 2^14) (Gao et al. 2024 Sec. 2.4 scaling
    law)."""
    warmup_steps: int | None = None
    """Linear LR warm-up steps; None: 1/20 of the steps (at most 1000)."""
    decay_frac: float = 0.2
    """The LR decays linearly to 0 over this final fraction of the steps."""
    ctx_len: int = 128
    """Tokens per context fed to the model (BOS included)."""
    corpus: str = "default"
    """Text to stream: 'default' (the built-in corpus), a .txt/.jsonl/.parquet file or folder, or a
    HF dataset."""
    from_store: str | None = None
    """Read activations from this activation store folder (lmscope capture) instead of running the
    model."""
    transcode: bool = False
    """Train transcoders blocks.L.mlp_in -> blocks.L.mlp_out for the layers of --hooks instead of
    SAEs."""
    skip: bool = False
    """Transcoders: add a linear skip connection from input to output."""
    clt: bool = False
    """Train ONE cross-layer transcoder instead of a dictionary per hook: layer l's encoder reads
    blocks.l.mlp_in and its decoders write blocks.t.mlp_out for every t >= l (Ameisen et al.
    2025). --arch topk (--k per layer per token) or jumprelu; --width is latents PER LAYER;
    --hooks names the layers (default: all; must be 0..L-1). Writes OUT/dictionaries/clt/."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Dictionary compute: float32, or bfloat16 autocast (weights and Adam states stay float32)."""
    model_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """dtype of the model weights when streaming."""
    device: str = "cpu"
    """torch device (cpu, cuda, cuda:1); under torchrun 'cuda' means each rank's own GPU."""
    seed: int = 0
    """Seed for the initial weights and the activation shuffle (same seed, same result on CPU)."""
    dead_tokens: int | None = None
    """A latent is dead (and fed to AuxK) after this many tokens without firing; None: min(250k,
    tokens/4)."""
    aux_coeff: float = 1 / 32
    """topk/batchtopk: weight of the AuxK loss on dead latents (Gao et al. 2024)."""
    l1_coeff: float | None = None
    """relu: L1 coefficient (None: the architecture's default)."""
    l0_coeff: float | None = None
    """jumprelu: L0 coefficient (None: the architecture's default)."""
    buffer_mb: float = 512
    """Streaming: MiB of activations (all hook points together, in the model's dtype) shuffled
    together before they are cut into steps; the buffer does not grow with the number of hooks."""
    model_batch: int = 16
    """Contexts per model forward pass when streaming."""
    checkpoint_every: int = 50
    """Save a resumable checkpoint every this many steps (0: only on Ctrl-C and at the end)."""
    shard_features: bool = False
    """Under torchrun: split the latents of each dictionary across ranks (topk only) instead of the
    tokens."""
    out: str = "atlas"
    """Atlas folder to write the dictionaries into (dictionaries/<hook>/, train/<hook>/,
    atlas.json)."""
    force: bool = False
    """Retrain and overwrite dictionaries that are already finished in --out."""
    progress: bool = True
    """Show a progress bar (tokens/s, FVU, L0, dead fraction)."""

    def __post_init__(self) -> None:
        parse_width(self.width, 1)  # raises on nonsense
        if self.k < 1:
            raise ValueError(f"--k must be >= 1, got {self.k}")
        if self.tokens < 1:
            raise ValueError(f"--tokens must be >= 1, got {self.tokens}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.tokens < self.batch_size:
            raise ValueError(
                f"--tokens {self.tokens} is less than one batch ({self.batch_size}); "
                "train on more tokens or use a smaller --batch-size"
            )
        if self.lr is not None and not (0 < self.lr < 1):
            raise ValueError(f"--lr must be in (0, 1), got {self.lr}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ValueError(f"--warmup-steps must be >= 0, got {self.warmup_steps}")
        if not 0 <= self.decay_frac <= 1:
            raise ValueError(f"--decay-frac must be in [0, 1], got {self.decay_frac}")
        if self.ctx_len < 2:
            raise ValueError(f"--ctx-len must be >= 2 (BOS + one token), got {self.ctx_len}")
        if self.dead_tokens is not None and self.dead_tokens < 1:
            raise ValueError(f"--dead-tokens must be >= 1, got {self.dead_tokens}")
        if self.buffer_mb <= 0 or self.model_batch < 1 or self.checkpoint_every < 0:
            raise ValueError("--buffer-mb must be > 0, --model-batch >= 1, --checkpoint-every >= 0")
        if self.skip and not self.transcode:
            raise ValueError("--skip only applies to transcoders; add --transcode")
        if self.shard_features and self.arch != "topk" and not self.clt:
            raise ValueError(f"--shard-features supports arch topk only, not {self.arch}")
        if self.clt and self.arch not in ("topk", "jumprelu"):
            raise ValueError(f"--clt supports --arch topk or jumprelu, not {self.arch}")
        if self.clt and self.skip:
            raise ValueError("--clt has no skip connection; drop --skip")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def parse_width(width: str | int, d_in: int) -> int:
    """'16x' -> 16 * d_in; '4608' -> 4608. Raises ValueError on nonsense."""
    text = str(width)
    m = _WIDTH.match(text)
    if m:
        factor = float(m.group(1))
        n = int(round(factor * d_in))
        if factor <= 0 or n < 1:
            raise ValueError(
                f"--width {text!r} gives no latents; use an expansion like 8x or a count like 4608"
            )
        return n
    try:
        n = int(text.replace("_", ""))
    except ValueError:
        raise ValueError(
            f"--width {text!r} is neither an expansion (8x, 16x) nor a latent count (4608)"
        ) from None
    if n < 1:
        raise ValueError(f"--width must be >= 1 latent, got {n}")
    return n


def default_lr(d_sae: int) -> float:
    """Gao et al. 2024 Sec. 2.4: the best LR falls like 1/sqrt(n_latents); 2e-4 at 2^14 latents."""
    return 2e-4 / math.sqrt(d_sae / 2**14)


# Whole-model run (issue 20): measured choices, see docs/notes/training.md "Whole-model defaults"
# and bench/bench_train_all.py. The LR multiple of default_lr was chosen on held-out FVU (8x was
# the best of 1,2,4,8x and the grid edge); the token count is NOT yet timed on an idle machine.
WHOLE_MODEL_LR_MULT = 8.0
WHOLE_MODEL_TOKENS = 196_608


def whole_model_defaults(lm: Any, *, out: str = "atlas") -> TrainConfig:
    """The settings `lmscope run` trains every layer's skip transcoder with.

    One skip transcoder blocks.L.mlp_in -> blocks.L.mlp_out per layer, 4x d_model latents,
    k=32, WHOLE_MODEL_LR_MULT x the Gao et al. LR. Model weights and dictionary compute in bf16
    where this CPU has native bf16 (lmscope.models.load.cpu_half_is_slow), float32 otherwise.
    `lm` is a loaded LanguageModel (or anything with .name, .d_model, .device).
    """
    from ..models.load import cpu_half_is_slow

    half = "bfloat16" if not cpu_half_is_slow(torch.bfloat16, lm.device) else "float32"
    d_sae = 4 * lm.d_model
    return TrainConfig(
        model=lm.name,
        hooks="blocks.*.mlp_in",
        transcode=True,
        skip=True,
        arch="topk",
        width=str(d_sae),
        k=32,
        tokens=WHOLE_MODEL_TOKENS,
        batch_size=1024,
        lr=WHOLE_MODEL_LR_MULT * default_lr(d_sae),
        dtype=half,
        model_dtype=half,
        buffer_mb=1024,
        out=out,
    )


@dataclass(frozen=True)
class DictionaryPlan:
    """One dictionary of the run."""

    hook: str
    """Input hook point (and the name of the dictionary in the atlas)."""
    out_hook: str | None
    """Target hook point of a transcoder (None: an SAE)."""
    d_in: int
    d_out: int
    d_sae: int


@dataclass(frozen=True)
class TrainPlan:
    """The run resolved against the model and data: saved as train/plan.json."""

    model: str
    dictionaries: list[DictionaryPlan]
    steps: int
    """Optimizer steps (tokens // batch_size)."""
    batch_size: int
    lr: float
    warmup_steps: int
    decay_start: int
    """Step at which the linear decay to 0 starts."""
    dead_tokens: int
    world_size: int
    mode: Literal["single", "ddp", "shard_features"]
    source: str
    """'stream' or the store path."""
    fingerprint: dict[str, Any] = field(default_factory=dict)

    @property
    def hooks_needed(self) -> list[str]:
        """Every hook point the source must provide (inputs and transcoder targets), in order."""
        out: list[str] = []
        for d in self.dictionaries:
            for h in (d.hook, d.out_hook):
                if h is not None and h not in out:
                    out.append(h)
        return out

    def lr_at(self, step: int) -> float:
        """Linear warm-up, constant, then linear decay to 0 over the last decay_frac (Gao et al.
        2024)."""
        if self.warmup_steps and step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if step >= self.decay_start:
            return self.lr * max(0.0, (self.steps - step) / max(1, self.steps - self.decay_start))
        return self.lr

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_plan(
    cfg: TrainConfig,
    *,
    hooks: list[tuple[str, str | None]],
    dims: dict[str, int],
    model: str,
    world_size: int,
    source: str,
    fingerprint: dict[str, Any],
) -> TrainPlan:
    """Resolve widths, LR and step counts. `hooks` are (input, target-or-None) pairs, `dims` their
    widths."""
    dicts = []
    for h, o in hooks:
        d_in = dims[h]
        d_sae = parse_width(cfg.width, d_in)
        if cfg.arch in ("topk", "batchtopk") and cfg.k > d_sae:
            raise ValueError(
                f"--k {cfg.k} is more than the dictionary width {d_sae} at {h}; "
                "use a smaller --k or a larger --width"
            )
        if cfg.shard_features and d_sae < world_size:
            raise ValueError(
                f"--shard-features over {world_size} ranks needs at least {world_size} latents"
            )
        dicts.append(DictionaryPlan(h, o, d_in, dims[o] if o else d_in, d_sae))
    steps = cfg.tokens // cfg.batch_size
    warm = cfg.warmup_steps if cfg.warmup_steps is not None else min(1000, steps // 20)
    lr = cfg.lr if cfg.lr is not None else default_lr(max(d.d_sae for d in dicts))
    dead = cfg.dead_tokens if cfg.dead_tokens is not None else min(250_000, max(1, cfg.tokens // 4))
    mode = (
        "shard_features"
        if cfg.shard_features and world_size > 1
        else ("ddp" if world_size > 1 else "single")
    )
    return TrainPlan(
        model=model,
        dictionaries=dicts,
        steps=steps,
        batch_size=cfg.batch_size,
        lr=lr,
        warmup_steps=min(warm, steps),
        decay_start=steps - int(round(cfg.decay_frac * steps)),
        dead_tokens=dead,
        world_size=world_size,
        mode=mode,
        source=source,
        fingerprint=fingerprint,
    )


def changed_settings(saved: dict[str, Any], now: TrainConfig) -> list[str]:
    """'name: old -> new' for every setting that differs from a saved config (resume check)."""
    out = []
    for f in fields(now):
        if f.name in RESUME_FREE or f.name not in saved:
            continue
        new = getattr(now, f.name)
        if saved[f.name] != new:
            out.append(f"{f.name}: {saved[f.name]!r} -> {new!r}")
    return out


__all__ = [
    "DictionaryPlan",
    "TrainConfig",
    "TrainPlan",
    "changed_settings",
    "default_lr",
    "parse_width",
    "resolve_plan",
    "whole_model_defaults",
]
