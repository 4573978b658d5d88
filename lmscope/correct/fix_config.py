"""The settings of `lmscope diagnose` and `lmscope fix` (their flags come from `FixConfig`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..config import flag


@dataclass(frozen=True)
class FixConfig:
    """`lmscope fix`: find what drives a bug, choose an edit on the fit prompts, report it on the
    held-out ones, and (with --export) write the repaired model."""

    bugs: str
    """bug file (JSONL: one {"prompt", "bad", "good"} object per line; see docs/correct.md)"""
    model: str = "smollm2-135m"
    """model name, alias or folder"""
    scorer: str | None = None
    """for a bug file of prompts only: the behaviour scorer that judges the greedy continuation
    (repetition: a loop that runs into the token limit; see docs/correct.md)"""
    max_new_tokens: int = 128
    """with --scorer: tokens generated per prompt"""
    atlas: str | None = flag(None, metavar="ATLAS")
    """also rank the features of this atlas's dictionaries by attribution (plain prompts only) and
    try ablating the top ones; their labels come from the atlas"""
    atlas_hooks: str | None = None
    """with --atlas: only these of its dictionaries (comma-separated hook globs, e.g.
    'blocks.1[0-5].mlp_in'; default: all). Attribution runs every dictionary on every fit
    prompt, so fewer layers cost proportionally less"""
    features: int = 10
    """with --atlas: top features whose ablation effect is verified on the fit prompts"""
    layers: str | None = None
    """layers whose contrastive direction is tried: 'all', numbers like 0,6,12, or resid_post hook
    globs (default: every third layer and the last)"""
    heldout: float = 0.5
    """share of the bug file's groups held out to judge the fix (never used to choose it)"""
    seed: int = 0
    """seed of the fit / held-out split and of the control edit's random direction"""
    max_added_nats: float = 0.05
    """side-effect budget: a candidate is kept only if it adds at most this loss (nats per token)
    on fit-side general text (the corpus's train split; the report uses the held-out split)"""
    text_tokens: int = 4096
    """tokens of general text for the side-effect numbers (each of fit side and report side)"""
    corpus: str = "default"
    """general text for side effects ("default": the embedded corpus)"""
    ctx_len: int = 128
    """tokens per general-text context"""
    knowledge: bool = True
    """also report the 2-choice knowledge accuracy on the probe datasets' true/false statements
    (cities, arithmetic, animal classes, Spanish words) before and after; --no-knowledge skips it"""
    examples: int = 6
    """held-out prompts whose greedy continuations (before, after the fix, after the control) go
    into the report and the viewer"""
    example_tokens: int = 48
    """tokens generated for each of those examples"""
    gated: bool = True
    """also try conditional versions of the best steering vectors: acting only where the
    residual stream shows the bug's direction above a quantile of its values on general text
    (run time only); --no-gated skips them"""
    truth: bool = True
    """also try the truth probe's direction at each --layers layer (a mass-mean probe fitted on the
    train split of the probe datasets cities, neg_cities, larger_than, smaller_than; never on the
    bug's prompts): steer toward true, project it out, and steering gated on the probe scoring
    below a threshold; --no-truth skips them"""
    truth_probe: str | None = flag(None, metavar="DIR")
    """use this saved truth probe (`lmscope probe train --out DIR`, e.g. a run's RUN/probe)
    instead of fitting one per layer"""
    screen: int = 24
    """score every candidate on this many fit prompts first and only the best ones on all of
    them (0: all on all; the choice is still made on all fit prompts)"""
    top: int = 5
    """candidates (best fit margin first) whose side effects are checked against the budget"""
    export: str | None = flag(None, metavar="DIR")
    """write the repaired model (the chosen edit folded into its weights) as a Hugging Face
    folder"""
    force: bool = flag(False, action="store_true")
    """replace an existing --export folder or --out file"""
    out: str | None = flag(None, metavar="FILE")
    """write the full report as JSON to FILE"""
    model_dtype: Literal["float32", "bfloat16", "auto"] = "float32"
    """the model's dtype: float32 keeps the exported weights exact; auto (bfloat16 where the CPU
    has it natively) about halves the time of a run"""
    device: str = "cpu"
    """torch device"""

    def __post_init__(self) -> None:
        if not 0 < self.heldout < 1:
            raise ValueError("--heldout must be between 0 and 1")
        if self.max_added_nats < 0:
            raise ValueError("--max-added-nats must be >= 0")
        if self.examples < 0 or self.example_tokens < 1:
            raise ValueError("--examples must be >= 0 and --example-tokens >= 1")
        if self.atlas_hooks and not self.atlas:
            raise ValueError("--atlas-hooks selects dictionaries of --atlas; give --atlas too")
        if self.max_new_tokens < 1:
            raise ValueError("--max-new-tokens must be >= 1")
        if self.text_tokens < 1 or self.ctx_len < 2 or self.top < 1 or self.screen < 0:
            raise ValueError("--text-tokens, --top must be >= 1 and --ctx-len >= 2")


__all__ = ["FixConfig"]
