"""Which documents an artifact was made from, so evaluation can prove its text is unseen.

A store and a dictionary each record the documents whose tokens they saw: the `doc_key`
(64-bit blake2b of the document's UTF-8 text, lmscope.capture.corpus) of every document with
at least one token in a context that was read, as a sorted uint64 array in a .npy file, plus a
small JSON record in the manifest (corpus fingerprint, split, seed, count, file, digest).

The corpus split already keeps held-out documents out of training by construction (it is
decided by the same hash), but a store can be captured with `--split all` or `heldout`, or
from another corpus that shares documents; the recorded keys let `lmscope eval` check the
actual documents rather than trust the settings (docs/measuring.md, out of sample: no shared
document between training and evaluation tokens).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from ..errors import UserError

SCHEMA_VERSION = 1
KEY = "blake2b-64 of the document's UTF-8 text (lmscope.capture.corpus.doc_key)"


def write_keys(path: Path, keys: set[int] | np.ndarray) -> dict:
    """Write sorted uint64 keys to `path` (.npy, atomically); return {count, digest}."""
    arr = np.unique(np.asarray(sorted(keys) if isinstance(keys, set) else keys, dtype=np.uint64))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with tmp.open("wb") as f:
        np.save(f, arr, allow_pickle=False)
    os.replace(tmp, path)
    return {
        "count": int(arr.size),
        "digest": hashlib.blake2b(arr.tobytes(), digest_size=8).hexdigest(),
    }


def read_keys(path: Path) -> np.ndarray:
    """The sorted uint64 keys written by write_keys (one line if the file is missing or bad)."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UserError(
            f"cannot read the document record {path} ({e}); the artifact is incomplete: rebuild it"
        ) from None
    if arr.dtype != np.uint64 or arr.ndim != 1:
        raise UserError(f"{path} is not a document record (uint64 keys); rebuild the artifact")
    return arr


def record(
    *,
    file: str,
    keys: set[int] | np.ndarray,
    folder: Path,
    corpus: dict | None,
    split: str | None,
    seed: int | None,
    source: str,
) -> dict:
    """Write the keys into folder/file and return the manifest record describing them."""
    info = write_keys(folder / file, keys)
    return {
        "schema_version": SCHEMA_VERSION,
        "key": KEY,
        "source": source,
        "corpus": corpus,
        "split": split,
        "seed": seed,
        "documents": info["count"],
        "file": file,
        "digest": info["digest"],
    }


def overlap(a: np.ndarray, b: np.ndarray) -> int:
    """How many keys two records share."""
    return int(np.intersect1d(a, b, assume_unique=True).size)


__all__ = ["KEY", "SCHEMA_VERSION", "overlap", "read_keys", "record", "write_keys"]
