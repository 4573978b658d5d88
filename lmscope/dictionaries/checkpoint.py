"""Resumable training checkpoints: every dictionary's state, then the run state, atomically.

    atlas/train/config.json                   the user's TrainConfig (resume refuses a changed one)
    atlas/train/plan.json                     the resolved TrainPlan
    atlas/train/<hook>/ckpt-00000050.pt       weights + Adam state + dead-latent counters (per rank
                                              .rank{r} files when latents are sharded)
    atlas/train/state.json                    {"step": 50, ...}: written last, names the checkpoint

A checkpoint is complete only once state.json names its step: files are written to a temp
name and renamed, the step's dictionary files first and state.json last, and older steps'
files are deleted only after that. A crash at any point leaves the previous checkpoint
intact and selected.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..atlas.layout import AtlasLayout, write_json_atomic

SCHEMA_VERSION = 1
STATE = "state.json"


def save_torch_atomic(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def ckpt_name(step: int, rank: int | None = None) -> str:
    return f"ckpt-{step:08d}.pt" if rank is None else f"ckpt-{step:08d}.rank{rank}.pt"


@dataclass
class RunState:
    """What state.json records: the step every dictionary checkpoint of this run reached."""

    step: int
    tokens: int
    sharded_ranks: int | None
    """World size when latents were sharded (one file per rank), else None."""


class Checkpoints:
    """Reads and writes one atlas's training checkpoints."""

    def __init__(self, layout: AtlasLayout) -> None:
        self.layout = layout
        self.root = layout.root / "train"

    @property
    def state_path(self) -> Path:
        return self.root / STATE

    def read_state(self) -> RunState | None:
        if not self.state_path.is_file():
            return None
        d = json.loads(self.state_path.read_text())
        return RunState(step=d["step"], tokens=d["tokens"], sharded_ranks=d.get("sharded_ranks"))

    def read_config(self) -> dict | None:
        p = self.root / "config.json"
        return json.loads(p.read_text()) if p.is_file() else None

    def write_config(self, config: dict, plan: dict) -> None:
        write_json_atomic(self.root / "config.json", config)
        write_json_atomic(self.root / "plan.json", plan)

    def dict_path(self, hook: str, step: int, rank: int | None = None) -> Path:
        return self.layout.train_dir(hook) / ckpt_name(step, rank)

    def save_dictionary(self, hook: str, step: int, state: dict, rank: int | None = None) -> None:
        """Write one dictionary's state for `step` (not yet selected: see commit)."""
        save_torch_atomic(state, self.dict_path(hook, step, rank))

    def commit(self, hooks: list[str], state: RunState) -> None:
        """Select `state.step` (state.json last), then delete older checkpoint files."""
        write_json_atomic(self.state_path, {"schema_version": SCHEMA_VERSION, "step": state.step,
                                            "tokens": state.tokens, "sharded_ranks": state.sharded_ranks})
        keep = {ckpt_name(state.step)} | {ckpt_name(state.step, r) for r in range(state.sharded_ranks or 0)}
        for h in hooks:
            d = self.layout.train_dir(h)
            for f in d.glob("ckpt-*.pt"):
                if f.name not in keep:
                    f.unlink(missing_ok=True)

    def load_dictionary(self, hook: str, step: int, rank: int | None = None) -> dict:
        return torch.load(self.dict_path(hook, step, rank), map_location="cpu", weights_only=False)

    def clear(self, hooks: list[str]) -> None:
        """Forget a run's checkpoints (after it finished, or for --force)."""
        self.state_path.unlink(missing_ok=True)
        for h in hooks:
            for f in self.layout.train_dir(h).glob("ckpt-*.pt"):
                f.unlink(missing_ok=True)


__all__ = ["Checkpoints", "RunState", "save_torch_atomic"]
