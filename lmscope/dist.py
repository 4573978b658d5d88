"""One code path for 1 and N processes: torchrun detection, rank-0 work, all-reduce helpers.

Launch the same command either way (docs/STYLE.md #7):

    lmscope train --model M --hooks 'blocks.6.resid_post' --out atlas/                  # 1 process
    torchrun --nproc-per-node 4 -m lmscope train --model M ... --out atlas/             # DDP over
    tokens
    torchrun --nproc-per-node 4 -m lmscope train ... --shard-features --out atlas/      # latents
    split over ranks
    torchrun --nnodes 2 --node-rank R --master-addr HOST --nproc-per-node 8 -m lmscope train ...

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; without them we
are a world of one and no process group is created, so every helper here is a no-op and
the single-process run pays nothing. The backend is gloo on CPU and nccl on CUDA.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as td


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, shows progress bars and writes the shared artifacts."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def env_info() -> DistInfo:
    """Read torchrun's environment (a world of one when not launched by torchrun)."""
    return DistInfo(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def setup(device: str = "cpu") -> DistInfo:
    """Join the process group if torchrun started us (idempotent). Returns this process's DistInfo.

    On CUDA each process takes the GPU of its LOCAL_RANK, so pass `device="cuda"` and call
    `device_for(info, "cuda")` for the actual device.
    """
    info = env_info()
    if info.enabled and not td.is_initialized():
        cuda = device.startswith("cuda")
        if cuda:
            torch.cuda.set_device(info.local_rank)
        td.init_process_group(backend="nccl" if cuda else "gloo")
    return info


def device_for(info: DistInfo, device: str) -> torch.device:
    """`cuda` becomes this rank's GPU (cuda:LOCAL_RANK); anything else is used as given."""
    if device == "cuda" and info.enabled:
        return torch.device("cuda", info.local_rank)
    return torch.device(device)


def teardown() -> None:
    if td.is_initialized():
        td.destroy_process_group()


def is_active() -> bool:
    return td.is_available() and td.is_initialized() and td.get_world_size() > 1


def all_reduce_sum_(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (no-op in a world of one)."""
    if is_active():
        td.all_reduce(t, op=td.ReduceOp.SUM)
    return t


def all_reduce_max_(t: torch.Tensor) -> torch.Tensor:
    if is_active():
        td.all_reduce(t, op=td.ReduceOp.MAX)
    return t


def broadcast_(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    if is_active():
        td.broadcast(t, src=src)
    return t


def broadcast_module_(module: torch.nn.Module, src: int = 0) -> None:
    """Make every rank's parameters and buffers equal to rank `src`'s (after init)."""
    if not is_active():
        return
    for t in list(module.parameters()) + list(module.buffers()):
        td.broadcast(t.data, src=src)


def all_gather_cat(t: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Concatenate equal-shaped tensors from every rank along `dim` (rank order)."""
    if not is_active():
        return t
    parts = [torch.empty_like(t) for _ in range(td.get_world_size())]
    td.all_gather(parts, t.contiguous())
    return torch.cat(parts, dim=dim)


def barrier() -> None:
    if is_active():
        td.barrier()


def split_sizes(n: int, world_size: int) -> list[int]:
    """Split n items over ranks as evenly as possible (the first n % world ranks get one more).

    Every rank gets a slice (maybe empty) of *every* batch, so all ranks run the same number
    of steps and their collectives always pair up: uneven batches never hang the job.
    """
    base, extra = divmod(n, world_size)
    return [base + (1 if r < extra else 0) for r in range(world_size)]


def rank_slice(n: int, info: DistInfo) -> slice:
    """This rank's contiguous slice of n items (see split_sizes)."""
    sizes = split_sizes(n, info.world_size)
    lo = sum(sizes[: info.rank])
    return slice(lo, lo + sizes[info.rank])


__all__ = [
    "DistInfo",
    "all_gather_cat",
    "all_reduce_max_",
    "all_reduce_sum_",
    "barrier",
    "broadcast_",
    "broadcast_module_",
    "device_for",
    "env_info",
    "is_active",
    "rank_slice",
    "setup",
    "split_sizes",
    "teardown",
]
