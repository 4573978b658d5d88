"""The on-disk atlas folder and atomic writes: one place that knows the layout.

A low-level module (next to errors, config and validate) because every stage that writes
an artifact goes through it: dictionaries (training checkpoints), capture, atlas, probe.

    atlas/
      atlas.json                      manifest (schema_version, model, dictionaries); written last
      dictionaries/<hook_name>/       one SAELens-format folder per dictionary
          cfg.json  sae_weights.safetensors  [sparsity.safetensors]
      train/<hook_name>/              training checkpoints + resolved plan (resume)
      atlas.db                        SQLite: profiles, examples, explanations, scores
      plots/                          PNGs written by eval/explain-report/scan

Every writer goes through `write_json_atomic` (temp file + rename) and the
manifest is updated last, so a folder whose manifest lists a dictionary holds
that dictionary completely.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .validate import Int, Obj, Str, check, read_json

SCHEMA_VERSION = 1
MANIFEST = "atlas.json"


def write_json_atomic(path: str | Path, obj) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def hook_dirname(hook_name: str) -> str:
    """Folder name for a hook point (safe on every filesystem; '.' kept, '/' replaced)."""
    return hook_name.replace("/", "_")


@dataclass
class AtlasLayout:
    """Paths inside one atlas folder."""

    root: Path

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    @property
    def db_path(self) -> Path:
        return self.root / "atlas.db"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    def dictionary_dir(self, hook_name: str) -> Path:
        return self.root / "dictionaries" / hook_dirname(hook_name)

    def train_dir(self, hook_name: str) -> Path:
        return self.root / "train" / hook_dirname(hook_name)

    # --- manifest ---------------------------------------------------------------
    def exists(self) -> bool:
        return self.manifest_path.is_file()

    def read(self) -> dict:
        if not self.root.is_dir():
            raise UserError(
                f"atlas folder not found: {self.root} (create one with `lmscope train ... --out "
                f"{self.root}`)"
            )
        if not self.manifest_path.is_file():
            raise UserError(
                f"{self.root} is not an atlas (no {MANIFEST}); train dictionaries into it first"
            )
        m = check(
            read_json(self.manifest_path, what="atlas manifest"),
            {
                "schema_version": Int(0),
                "model": Str(1000),
                "dictionaries": Obj({}, max_items=100_000),
            },
            where=str(self.manifest_path),
        )
        if m.get("schema_version", 0) > SCHEMA_VERSION:
            raise UserError(
                f"{self.root} was written by a newer lmscope (schema {m['schema_version']}); "
                "upgrade lmscope"
            )
        return m

    def add_dictionary(
        self, hook_name: str, *, model: str, arch: str, d_sae: int, extra: dict | None = None
    ) -> None:
        """Record a completed dictionary in the manifest (call after its files are written)."""
        m = (
            self.read()
            if self.exists()
            else {
                "schema_version": SCHEMA_VERSION,
                "model": model,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "dictionaries": {},
            }
        )
        if m.get("model") != model:
            raise UserError(
                f"atlas {self.root} belongs to model {m.get('model')!r}, not {model!r}; use "
                "another --out"
            )
        m["dictionaries"][hook_name] = {
            "path": str(self.dictionary_dir(hook_name).relative_to(self.root)),
            "arch": arch,
            "d_sae": d_sae,
            **(extra or {}),
        }
        m["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        write_json_atomic(self.manifest_path, m)

    def dictionaries(self) -> dict[str, dict]:
        return self.read()["dictionaries"]
