"""Small helpers shared by CLI modules: JSON output and model flags."""

from __future__ import annotations

import errno
import json
import sqlite3
import sys

from ..models.registry import DEFAULT_MODEL


def add_model_flags(p, *, dtype: bool = True) -> None:
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"alias, Hugging Face id, local folder or .gguf file (default: {DEFAULT_MODEL})",
    )
    if dtype:
        p.add_argument(
            "--model-dtype",
            default="float32",
            choices=["float32", "bfloat16", "float16"],
            help="dtype of the model weights (bfloat16 is ~2x faster on CPUs with AVX-512 bf16)",
        )
    p.add_argument(
        "--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default: cpu)"
    )


_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_DISK_TEXT = (
    "no space left on device",
    "os error 28",
    "database or disk is full",
    "disk quota exceeded",
)


def environment_error(e: BaseException) -> str | None:
    """One line for an error of the machine rather than of lmscope (full disk, read-only or
    forbidden folder), else None. Writers differ in how they report a full disk (OSError ENOSPC,
    safetensors' SafetensorError "os error 28", sqlite's "database or disk is full"), so the
    exception and its causes are looked at by errno and by message."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        no = getattr(e, "errno", None)
        text = str(e).lower()
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        if (
            no in _DISK_ERRNOS
            or any(t in text for t in _DISK_TEXT)
            or (isinstance(e, sqlite3.OperationalError) and "disk" in text)
        ):
            return (
                f"the disk is full{where}; free some space (or use another --out) and run the "
                "same command again: finished artifacts are kept and unfinished ones are never "
                "taken for finished"
            )
        if no == errno.EROFS:
            return f"cannot write to a read-only file system{where}; choose another --out"
        if isinstance(e, PermissionError):
            return (
                f"permission denied{where}; check the folder's permissions or choose another --out"
            )
        e = e.__cause__ or e.__context__
    return None


def print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
