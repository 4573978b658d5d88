"""The TopK training step's native kernels (native.c), built once per machine with its C compiler.

The kernels: an exact row top-k (float32 or bfloat16), and the sparse code's two products that
torch runs on one thread (S^T @ dense for the weight gradients; the per-entry dot products for
the values' gradient). Each wrapper returns None where it does not apply (another device or
dtype, no compiler), and the caller then runs its torch ops, which give the same result up to
the order of the selected entries and float rounding (tests/test_native.py checks both against
torch). The shared object is compiled with -march=native into lmscope's cache
(`$LMSCOPE_CACHE/native/`, keyed by the source, the compiler and the CPU's flags), written under
a temporary name and renamed, so parallel workers never load a half-written file.
LMSCOPE_NATIVE=0 turns the kernels off.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import torch
from torch import Tensor

_SRC = Path(__file__).with_name("native.c")
_FLAGS = ["-O3", "-march=native", "-std=gnu11", "-fPIC", "-shared", "-pthread"]
_MAX_K = 4096
_lock = threading.Lock()
_state: dict = {}

_P, _I64, _I32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
_SIGS = {
    "lms_topk": (ctypes.c_int, [_P, _P, _I32, _I64, _I64, _I64, _I32, _P, _P, _I32]),
    "lms_col_sort": (ctypes.c_int, [_P, _I64, _I64, _P, _P]),
    "lms_scatter_t": (ctypes.c_int, [_P, _P, _I64, _P, _I32, _P, _I64, _P, _I32]),
    "lms_rowdot": (None, [_P, _I64, _I32, _P, _P, _I64, _P, _I32]),
    "lms_remove_parallel": (None, [_P, _P, _I64, _I64, _I32]),
    "lms_normalize_rows": (None, [_P, _I64, _I64, _I32]),
}


def enabled() -> bool:
    return os.environ.get("LMSCOPE_NATIVE", "1").lower() not in ("0", "off", "false", "no")


def _cpu_id() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _build(cc: str) -> Path:
    from ..models.registry import cache_dir

    src = _SRC.read_bytes()
    key = hashlib.sha256(
        b"\0".join([src, " ".join([cc, *_FLAGS]).encode(), _cpu_id().encode()])
    ).hexdigest()[:16]
    out_dir = cache_dir() / "native"
    so = out_dir / f"lmscope_native-{platform.machine()}-{key}.so"
    if so.exists():
        return so
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".building-", suffix=".so", dir=out_dir)
    os.close(fd)
    try:
        r = subprocess.run(
            [cc, *_FLAGS, "-o", tmp, str(_SRC)], capture_output=True, text=True, timeout=300
        )
        if r.returncode != 0:
            raise RuntimeError(f"{cc} failed: {(r.stderr or r.stdout).strip()[:300]}")
        os.replace(tmp, so)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return so


def lib() -> ctypes.CDLL | None:
    """The loaded kernels, built on first use; None when off or when they cannot be built (a
    one-line note on stderr says why, once per process)."""
    if not enabled():
        return None
    with _lock:
        if "lib" in _state:
            return _state["lib"]
        _state["lib"] = None
        cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
        try:
            if not cc:
                raise RuntimeError("no C compiler found (install gcc, or set CC)")
            dll = ctypes.CDLL(str(_build(cc)))
            for name, (res, args) in _SIGS.items():
                fn = getattr(dll, name)
                fn.restype, fn.argtypes = res, args
            _state["lib"] = dll
        except Exception as e:  # noqa: BLE001 - any failure means: use the torch ops
            print(
                f"lmscope: native TopK kernels not built ({e}); training uses torch ops (slower)",
                file=sys.stderr,
            )
        return _state["lib"]


def _threads() -> int:
    return max(1, torch.get_num_threads())


def topk(pre: Tensor, k: int, bias: Tensor | None = None) -> tuple[Tensor, Tensor] | None:
    """(values, indices) [rows, k] of the k largest entries of each row of pre [rows, n] (plus
    `bias` [n], float32, if given: then the values are the float32 sums), in no particular order
    (as torch.topk(sorted=False)); NaN ranks above everything, as in torch. None where the
    kernel does not apply."""
    if (
        pre.device.type != "cpu"
        or pre.dim() != 2
        or pre.dtype not in (torch.float32, torch.bfloat16)
        or pre.stride(1) != 1
        or not 1 <= k <= min(pre.shape[1], _MAX_K)
        or pre.requires_grad
        or (
            bias is not None
            and (
                bias.dtype != torch.float32
                or bias.device.type != "cpu"
                or bias.shape != (pre.shape[1],)
                or bias.stride(0) != 1
            )
        )
        or (dll := lib()) is None
    ):
        return None
    rows, n = pre.shape
    vals = torch.empty((rows, k), dtype=pre.dtype if bias is None else torch.float32)
    idx = torch.empty((rows, k), dtype=torch.int64)
    if rows:
        rc = dll.lms_topk(
            pre.data_ptr(),
            None if bias is None else bias.data_ptr(),
            int(pre.dtype == torch.bfloat16),
            rows,
            n,
            pre.stride(0),
            k,
            vals.data_ptr(),
            idx.data_ptr(),
            _threads(),
        )
        if rc:
            raise MemoryError(f"native top-k: no memory for a row of {n} candidates")
    return vals, idx


def _f32_cpu(*ts: Tensor) -> bool:
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in ts)


def sparse_t_matmul(indices: Tensor, weights: Tensor, dense: Tensor, n_rows: int) -> Tensor | None:
    """S^T @ dense [n_rows, d] with S [rows, n_rows], S[b, indices[b, j]] = weights[b, j]
    (float32; duplicates add). None where the kernel does not apply."""
    nnz = indices.numel()
    if (
        not _f32_cpu(weights, dense)
        or indices.device.type != "cpu"
        or indices.dtype != torch.int64
        or indices.dim() != 2
        or nnz >= 2**31
        or dense.dim() != 2
        or dense.shape[0] != indices.shape[0]
        or (dll := lib()) is None
    ):
        return None
    k = indices.shape[1]
    indices, weights, dense = indices.contiguous(), weights.contiguous(), dense.contiguous()
    starts = torch.empty(n_rows + 1, dtype=torch.int64)
    order = torch.empty(nnz, dtype=torch.int32)
    if dll.lms_col_sort(indices.data_ptr(), nnz, n_rows, starts.data_ptr(), order.data_ptr()):
        raise IndexError(f"a sparse code index is outside [0, {n_rows})")
    out = torch.empty((n_rows, dense.shape[1]), dtype=torch.float32)
    rc = dll.lms_scatter_t(
        order.data_ptr(),
        starts.data_ptr(),
        n_rows,
        weights.data_ptr(),
        k,
        dense.data_ptr(),
        dense.shape[1],
        out.data_ptr(),
        _threads(),
    )
    if rc:
        raise MemoryError("native S^T @ dense: out of memory")
    return out


def rowdot(indices: Tensor, g: Tensor, W: Tensor) -> Tensor | None:
    """out[b, j] = <g[b], W[indices[b, j]]> [rows, k] (float32); None where it does not apply.
    The indices must be in range (they come from a top-k over W's rows)."""
    if (
        not _f32_cpu(g, W)
        or indices.device.type != "cpu"
        or indices.dtype != torch.int64
        or indices.dim() != 2
        or g.dim() != 2
        or W.dim() != 2
        or g.shape[1] != W.shape[1]
        or (dll := lib()) is None
    ):
        return None
    rows, k = indices.shape
    if indices.numel() and not (0 <= int(indices.min()) and int(indices.max()) < W.shape[0]):
        raise IndexError(f"a sparse code index is outside [0, {W.shape[0]})")
    indices, g, W = indices.contiguous(), g.contiguous(), W.contiguous()
    out = torch.empty((rows, k), dtype=torch.float32)
    dll.lms_rowdot(
        indices.data_ptr(),
        rows,
        k,
        g.data_ptr(),
        W.data_ptr(),
        W.shape[1],
        out.data_ptr(),
        _threads(),
    )
    return out


def _rows_ok(*ts: Tensor) -> bool:
    return all(
        t.device.type == "cpu" and t.dtype == torch.float32 and t.dim() == 2 and t.is_contiguous()
        for t in ts
    )


def remove_parallel_(W: Tensor, g: Tensor) -> bool:
    """g[r] -= <g[r], W[r]> W[r] / max(|W[r]|, 1e-8)^2 in place; False (untouched) where the
    kernel does not apply."""
    if not _rows_ok(W, g) or W.shape != g.shape or (dll := lib()) is None:
        return False
    dll.lms_remove_parallel(W.data_ptr(), g.data_ptr(), W.shape[0], W.shape[1], _threads())
    return True


def normalize_rows_(W: Tensor) -> bool:
    """W[r] /= max(|W[r]|, 1e-8) in place; False (untouched) where the kernel does not apply."""
    if not _rows_ok(W) or (dll := lib()) is None:
        return False
    dll.lms_normalize_rows(W.data_ptr(), W.shape[0], W.shape[1], _threads())
    return True


__all__ = [
    "enabled",
    "lib",
    "normalize_rows_",
    "remove_parallel_",
    "rowdot",
    "sparse_t_matmul",
    "topk",
]
