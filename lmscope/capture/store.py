"""The activation store: sharded safetensors files of activations and their token ids.

    store/
      shard-00000.safetensors   tokens [contexts, ctx_len] int32, and one tensor per hook
                                [contexts, ctx_len, d] in the store dtype (fp32 / bf16 / fp16)
      ...
      progress.json             while capturing: settings, shards done, running norm sums (resume)
      documents.npy             doc_key of every document with tokens in the store
      (capture/documents.py)
      manifest.json             written last, once every shard is on disk: the store is complete

Every shard is written to a temporary name and renamed, so a shard file that exists is whole;
the manifest is written last, so a folder without one is an unfinished capture (rerun the same
command to continue it) and never mistaken for a complete store. Activations keep all
positions (BOS included) so token ids and activations stay aligned; readers drop BOS and other
special-token positions with `exclude_bos=True`, as training does (they are attention sinks with
outlier norms, see lmscope.dictionaries.sources).

Reading: `ActivationStore(path).batches(hook, batch_size, seed=...)` yields shuffled [batch, d]
tensors with bounded memory: shards are visited in a seeded order, `window` of them at a time,
and rows are shuffled within the window. The order depends only on (seed, store), never on the
hook, so batches of two hooks with the same seed line up token for token (transcoders).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..errors import UserError
from ..validate import Int, Str, check, read_json

if TYPE_CHECKING:
    from ..models import LanguageModel

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
PROGRESS = "progress.json"
DOCUMENTS = "documents.npy"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.safetensors"


def write_shard(
    path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    """Write one shard atomically (temp file + rename). A full disk becomes a UserError."""
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno == 28:  # ENOSPC
            raise UserError(
                f"the disk is full while writing {path}; free space and rerun the same "
                "command to continue the capture"
            ) from None
        raise


@dataclass
class NormStats:
    """Running statistics of activation norms at one hook point (non-special positions)."""

    count: int = 0
    sum: float = 0.0
    sum_sq: float = 0.0
    max: float = 0.0
    bos_sum: float = 0.0
    bos_count: int = 0

    def add(self, norms: torch.Tensor, bos_norms: torch.Tensor | None = None) -> None:
        n = norms.double()
        self.count += n.numel()
        self.sum += float(n.sum())
        self.sum_sq += float((n * n).sum())
        self.max = max(self.max, float(n.max())) if n.numel() else self.max
        if bos_norms is not None and bos_norms.numel():
            self.bos_sum += float(bos_norms.double().sum())
            self.bos_count += bos_norms.numel()

    def summary(self) -> dict:
        mean = self.sum / max(self.count, 1)
        var = max(self.sum_sq / max(self.count, 1) - mean * mean, 0.0)
        return {
            "tokens": self.count,
            "mean_norm": mean,
            "std_norm": var**0.5,
            "max_norm": self.max,
            "rms_norm": (self.sum_sq / max(self.count, 1)) ** 0.5,
            "bos_mean_norm": self.bos_sum / self.bos_count if self.bos_count else None,
        }


@dataclass
class ActivationStore:
    """A complete activation store on disk (read side)."""

    path: Path
    manifest: dict = field(repr=False)

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        m = self.path / MANIFEST
        if not self.path.is_dir():
            raise UserError(
                f"activation store not found: {self.path} (write one with `lmscope capture --out "
                "DIR`)"
            )
        if not m.is_file():
            if (self.path / PROGRESS).is_file():
                raise UserError(
                    f"the activation store {self.path} is incomplete (its capture was "
                    "interrupted); "
                    "rerun the same `lmscope capture` command to finish it"
                )
            raise UserError(f"{self.path} is not an activation store (no {MANIFEST})")
        self.manifest = check(
            read_json(m, what="activation store manifest"),
            {"schema_version": Int(0), "model": Str(1000)},
            where=str(m),
        )
        if self.manifest.get("schema_version", 0) > SCHEMA_VERSION:
            raise UserError(
                f"{self.path} was written by a newer lmscope (store schema "
                f"{self.manifest['schema_version']}); upgrade lmscope"
            )

    # --- description -------------------------------------------------------------------------
    @property
    def model(self) -> str:
        return self.manifest["model"]

    @property
    def fingerprint(self) -> dict:
        """The model fingerprint (model, n_layers, d_model, vocab)."""
        return self.manifest["model_fingerprint"]

    @property
    def hooks(self) -> list[str]:
        return list(self.manifest["hooks"])

    @property
    def dims(self) -> dict[str, int]:
        return {h: int(v["d"]) for h, v in self.manifest["hooks"].items()}

    def d(self, hook: str) -> int:
        return self.dims[hook]

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.manifest["dtype"]]

    @property
    def ctx_len(self) -> int:
        return int(self.manifest["ctx_len"])

    @property
    def n_contexts(self) -> int:
        return sum(s["contexts"] for s in self.manifest["shards"])

    @property
    def n_tokens(self) -> int:
        """Stored positions (BOS included)."""
        return self.n_contexts * self.ctx_len

    @property
    def norms(self) -> dict[str, dict]:
        return self.manifest.get("norms", {})

    @property
    def documents(self) -> dict | None:
        """The record of the documents stored (None for a store captured before lmscope kept
        one)."""
        return self.manifest.get("documents")

    def document_keys(self):
        """Sorted uint64 doc_keys of the stored documents (None without a record)."""
        from .documents import read_keys

        rec = self.documents
        return None if rec is None else read_keys(self.path / rec["file"])

    def check_compatible(self, lm: LanguageModel) -> None:
        """Refuse to mix this store with another model (one line)."""
        fp, mine = self.fingerprint, lm.fingerprint()
        if fp.get("model") != mine["model"] or fp.get("d_model") != mine["d_model"]:
            raise UserError(
                f"the store {self.path} holds activations of {fp.get('model')!r} "
                f"(d_model {fp.get('d_model')}), not of {mine['model']!r} (d_model "
                f"{mine['d_model']}); "
                "capture a new store for this model"
            )

    # --- reading -----------------------------------------------------------------------------
    def _shard(self, i: int, keys: list[str]) -> dict[str, torch.Tensor]:
        from safetensors import safe_open

        with safe_open(str(self.path / self.manifest["shards"][i]["file"]), framework="pt") as f:
            return {k: f.get_tensor(k) for k in keys}

    def tokens(self) -> torch.Tensor:
        """All token ids, LongTensor [contexts, ctx_len] (small: 4 bytes per token)."""
        return torch.cat(
            [self._shard(i, ["tokens"])["tokens"] for i in range(len(self.manifest["shards"]))]
        ).long()

    def shard_acts(self, i: int, hook: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens [c, ctx_len], activations [c, ctx_len, d]) of shard i."""
        self._check_hook(hook)
        got = self._shard(i, ["tokens", hook])
        return got["tokens"].long(), got[hook]

    def _check_hook(self, hook: str) -> None:
        if hook not in self.manifest["hooks"]:
            from ..errors import close_matches

            raise UserError(
                f"hook {hook!r} is not in the store {self.path} (it holds: {', '.join(self.hooks)})"
                + close_matches(hook, self.hooks)
            )

    def mask(self, tokens: torch.Tensor) -> torch.Tensor:
        """bool [c, ctx_len]: positions kept with exclude_bos (not position 0, not a special
        token)."""
        keep = ~torch.isin(
            tokens, torch.tensor(self.manifest.get("special_ids", []), dtype=torch.long)
        )
        keep[:, 0] = False
        return keep

    def batches(
        self,
        hook: str,
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        exclude_bos: bool = True,
        window: int = 4,
        drop_last: bool = False,
        dtype: torch.dtype | None = None,
    ) -> Iterator[torch.Tensor]:
        """One pass over the store's activations at `hook` as [batch_size, d] tensors.

        Memory: at most `window` shards at a time. With the same seed, every hook yields its
        rows in the same order.
        """
        self._check_hook(hook)
        if batch_size < 1:
            raise UserError(f"batch_size must be positive (got {batch_size})")
        n = len(self.manifest["shards"])
        gen = torch.Generator().manual_seed(seed)
        order = torch.randperm(n, generator=gen).tolist() if shuffle else list(range(n))
        carry: torch.Tensor | None = None
        for w in range(0, n, window):
            rows = []
            for i in order[w : w + window]:
                toks, acts = self.shard_acts(i, hook)
                rows.append(
                    acts[self.mask(toks)] if exclude_bos else acts.reshape(-1, acts.shape[-1])
                )
            x = torch.cat(rows)  # [rows, d]
            if shuffle:
                x = x[torch.randperm(x.shape[0], generator=gen)]
            if carry is not None and carry.numel():
                x = torch.cat([carry, x])
            full = x.shape[0] // batch_size * batch_size
            for s in range(0, full, batch_size):
                b = x[s : s + batch_size]
                yield b.to(dtype) if dtype is not None else b
            carry = x[full:]
        if carry is not None and carry.shape[0] and not drop_last:
            yield carry.to(dtype) if dtype is not None else carry

    def summary(self) -> dict:
        m = self.manifest
        return {
            "path": str(self.path),
            "model": m["model"],
            "hooks": self.dims,
            "dtype": m["dtype"],
            "contexts": self.n_contexts,
            "ctx_len": self.ctx_len,
            "tokens": self.n_tokens,
            "shards": len(m["shards"]),
            "bytes": sum(s.get("bytes", 0) for s in m["shards"]),
            "corpus": m.get("corpus", {}).get("source"),
            "norms": self.norms,
        }


def is_complete(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


__all__ = [
    "DOCUMENTS",
    "ActivationStore",
    "NormStats",
    "SCHEMA_VERSION",
    "is_complete",
    "shard_name",
    "write_shard",
]
