"""Where one training step's time goes: the trainer's own `_step` (and the firing count) on
cached real activations, per op, by torch.profiler, in CPU time on one thread.

    # the whole-model run's dictionaries (skip transcoder blocks.15.mlp_in -> mlp_out, 2,304
    # latents, k 32, batch 1,024), a quarter of the latents dead (AuxK on), bf16 autocast
    PYTHONPATH=. python bench/profile_train_step.py --shape transcoder --dead-frac 0.25 --prec bf16
    # issue 3's SAE shape (blocks.15.resid_post, 4,608 latents, batch 4,096), no dead latents
    PYTHONPATH=. python bench/profile_train_step.py --shape sae --dead-frac 0 --prec fp32

The activations are bench_train_step.py's cache (captured there on first use). "Dead" latents
are chosen at random with a fixed seed (the trainer would pick the ones that stopped firing;
what the cost depends on is how many there are). Prints the median step in CPU time, the
encoder-GEMM floor timed in the same process, and the ops sorted by self CPU time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_train_step as S  # noqa: E402

from lmscope.dictionaries import DictionaryConfig, build  # noqa: E402
from lmscope.dictionaries import trainer as T  # noqa: E402


def make_slot(shape: str, d_sae: int, train, train_t, dead_frac: float, lr: float):
    tc = shape == "transcoder"
    extra = {}
    if tc:
        extra = dict(d_out=576, skip=True, hook_name="in", out_hook_name="out")
    d = build(DictionaryConfig(d_in=576, d_sae=d_sae, k=32, arch="topk", **extra))
    d.init_from_data(train[:16384], train_t[:16384] if tc else None)
    plan = SimpleNamespace(hook="in", out_hook="out" if tc else None)
    slot = T._Slot(
        plan,
        d,
        T.make_optimizer([q for q in d.parameters() if q is not d.W_dec]),
        T.make_optimizer([d.W_dec]),
        torch.zeros(d_sae, dtype=torch.long),
        torch.zeros(d_sae, dtype=torch.float64),
    )
    d.W_dec.register_post_accumulate_grad_hook(lambda _: T._update_decoder(slot))
    n_dead = round(dead_frac * d_sae)
    dead = torch.randperm(d_sae, generator=torch.Generator().manual_seed(1))[:n_dead]
    return slot, dead, lr


def op_cpu_times(fn) -> dict[str, float]:
    """Thread CPU seconds per aten op (name + input shapes) while fn() runs, backward included
    (CPU autograd runs in the calling thread). The profiler's times are wall clock, which on a
    shared machine measure the neighbours; this counts only this thread's work."""
    from torch.utils._python_dispatch import TorchDispatchMode

    times: dict[str, float] = {}

    class Timer(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            shapes = [
                f"{tuple(x.shape)}{str(x.dtype)[6:10]}" for x in args if isinstance(x, torch.Tensor)
            ]
            t0 = time.thread_time()
            out = func(*args, **(kwargs or {}))
            key = f"{func.__name__} {' '.join(shapes)}"
            times[key] = times.get(key, 0.0) + time.thread_time() - t0
            return out

    with Timer():
        fn()
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=("sae", "transcoder"), default="transcoder")
    p.add_argument("--prec", choices=("fp32", "bf16"), default="bf16")
    p.add_argument("--dead-frac", type=float, default=0.25)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument(
        "--count", action="store_true", help="also count firing (as the last 100k tokens do)"
    )
    p.add_argument("--rows", type=int, default=25)
    p.add_argument("--shapes", action="store_true", help="break ops down by input shapes")
    p.add_argument(
        "--aux-ratio", type=float, help="override topk.DENSE_AUX_RATIO (0: sparse AuxK always)"
    )
    p.add_argument("--no-profile", action="store_true", help="time the steps only")
    p.add_argument(
        "--optime", action="store_true", help="per-op thread CPU time instead of torch.profiler"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="intra-op threads (default 1; with 2, the profiler's per-op times are wall clock "
        "on both cores, and --no-profile times whole steps in wall clock)",
    )
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.set_flush_denormal(True)
    if a.aux_ratio is not None:
        import lmscope.dictionaries.topk as topk

        topk.DENSE_AUX_RATIO = a.aux_ratio
    torch.manual_seed(0)
    tc = a.shape == "transcoder"
    batch, d_sae = (1024, 2304) if tc else (4096, 4608)
    (train, _), (train_t, _) = S.load_data(0, ("mlp_in", "mlp_out") if tc else ("acts", "acts"))
    slot, dead, lr = make_slot(a.shape, d_sae, train, train_t, a.dead_frac, 4e-4)
    plan = SimpleNamespace(dead_tokens=10 * batch, batch_size=batch)
    ac = a.prec == "bf16"

    def one(i: int) -> None:
        pos = (i * batch) % (train.shape[0] - batch)
        b = {"in": train[pos : pos + batch]}
        if tc:
            b["out"] = train_t[pos : pos + batch]
        slot.since_fired[dead] = plan.dead_tokens  # these stay dead for the measurement
        T._step(slot, b, lr, plan, ac, False, count=a.count)

    for i in range(a.warmup):
        one(i)
    clock = time.process_time if a.threads == 1 else time.perf_counter
    unit = "CPU" if a.threads == 1 else f"wall, {a.threads} threads"
    times = []
    for i in range(a.steps):
        t0 = clock()
        one(a.warmup + i)
        times.append(clock() - t0)
    x = torch.randn(batch, 576)
    w = torch.randn(576, d_sae)
    if ac:
        x, w = x.bfloat16(), w.bfloat16()
    g = []
    for _ in range(12):
        t0 = clock()
        x @ w
        g.append(clock() - t0)
    floor = min(g)
    step = statistics.median(times)
    print(
        f"{a.shape} {a.prec} dead {len(dead)}/{d_sae}: step {step * 1e3:.1f} ms {unit} "
        f"(steps {' '.join(f'{t * 1e3:.0f}' for t in times)}), GEMM floor {floor * 1e3:.1f} ms "
        f"({2 * batch * 576 * d_sae / floor / 1e9:.0f} GFLOP/s), step/floor {step / floor:.2f}x"
    )
    if a.no_profile:
        return
    if a.optime:
        by_op = op_cpu_times(lambda: [one(100 + i) for i in range(3)])
        total = sum(by_op.values())
        print(f"per-op thread CPU time, 3 steps, {total * 1e3 / 3:.1f} ms per step:")
        for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])[: a.rows]:
            print(f"{v * 1e3 / 3:8.2f} ms/step  {k}")
        return
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=a.shapes) as prof:
        for i in range(3):
            one(100 + i)
    avg = prof.key_averages(group_by_input_shape=a.shapes)
    print(avg.table(sort_by="self_cpu_time_total", row_limit=a.rows, max_name_column_width=40))


if __name__ == "__main__":
    main()
