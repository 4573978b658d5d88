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

Checkpoints are read with `torch.load(weights_only=True)`: torch's restricted unpickler that
builds only tensors and plain containers, so a checkpoint from a stranger carrying a pickle
payload (a `__reduce__` that runs a command) is refused with one line instead of running it.
state.json and config.json are size-checked and schema-checked before use (`lmscope.validate`).
"""

from __future__ import annotations

import io
import os
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from ..layout import AtlasLayout, write_json_atomic
from ..validate import Int, check, read_json

SCHEMA_VERSION = 1
STATE = "state.json"
_STATE_SCHEMA = {
    "step": Int(0),
    "tokens": Int(0),
    "sharded_ranks": Int(1, 1 << 16, required=False, nullable=True),
}


def save_torch_atomic(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        # Serialize in memory, then write: torch's own file writer reports a full disk as an
        # opaque RuntimeError ("unexpected pos"), a plain write as OSError(ENOSPC).
        buf = io.BytesIO()
        torch.save(obj, buf)
        with open(tmp, "wb") as f:
            f.write(buf.getbuffer())
            f.flush()
            os.fsync(f.fileno())  # the rename must not become durable before the data
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
        d = check(
            read_json(self.state_path, what="checkpoint state"),
            _STATE_SCHEMA,
            where=str(self.state_path),
        )
        return RunState(step=d["step"], tokens=d["tokens"], sharded_ranks=d.get("sharded_ranks"))

    def read_config(self) -> dict | None:
        p = self.root / "config.json"
        if not p.is_file():
            return None
        return check(read_json(p, what="training config"), {}, where=str(p))

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
        write_json_atomic(
            self.state_path,
            {
                "schema_version": SCHEMA_VERSION,
                "step": state.step,
                "tokens": state.tokens,
                "sharded_ranks": state.sharded_ranks,
            },
        )
        keep = {ckpt_name(state.step)} | {
            ckpt_name(state.step, r) for r in range(state.sharded_ranks or 0)
        }
        for h in hooks:
            d = self.layout.train_dir(h)
            for f in d.glob("ckpt-*.pt"):
                if f.name not in keep:
                    f.unlink(missing_ok=True)

    def load_dictionary(self, hook: str, step: int, rank: int | None = None) -> dict:
        """One dictionary's saved state; UserError for a damaged file or one that carries code."""
        path = self.dict_path(hook, step, rank)
        try:
            # weights_only: never unpickle arbitrary objects (a downloaded atlas may carry a
            # train/ folder made by someone else).
            st = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise UserError(
                f"checkpoint {path} holds objects other than tensors and plain data "
                f"({first}); refusing to load it. Delete {self.root} to train from "
                "scratch (or use --force)"
            ) from None
        except (OSError, RuntimeError, EOFError, ValueError) as e:
            raise UserError(
                f"checkpoint {path} is damaged ({type(e).__name__}); delete {self.root} "
                "to train from scratch (or use --force)"
            ) from None
        if not isinstance(st, dict):
            raise UserError(f"checkpoint {path} is not a training checkpoint; delete {self.root}")
        return st

    def clear(self, hooks: list[str]) -> None:
        """Forget a run's checkpoints (after it finished, or for --force)."""
        self.state_path.unlink(missing_ok=True)
        for h in hooks:
            for f in self.layout.train_dir(h).glob("ckpt-*.pt"):
                f.unlink(missing_ok=True)


__all__ = ["Checkpoints", "RunState", "save_torch_atomic"]
