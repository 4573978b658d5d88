"""Train sparse dictionaries: one activation stream, one optimizer per dictionary, resumable.

    from lmscope.dictionaries.trainer import train
    from lmscope.dictionaries.train_config import TrainConfig
    result = train(TrainConfig(model="smollm2-135m", hooks="blocks.15.resid_post", width="4608",
                               tokens=200_000, out="atlas"))

Per step and dictionary (Gao et al. 2024, "Scaling and evaluating sparse autoencoders"):
loss -> backward -> (DDP: all-reduce the gradients) -> remove the decoder gradient parallel
to each row (App. A.4) -> Adam(0.9, 0.999) step at the scheduled LR (linear warm-up, then
linear decay to 0 over the last `decay_frac`) -> renormalize decoder rows. Each latent
counts the tokens since it last fired; those past `dead_tokens` are dead and feed the AuxK
loss (App. A.2). Everything is seeded, so a CPU run is deterministic, and a checkpoint holds
weights, Adam state, dead counters and the step (= the source's position), so an
interrupted run resumed with the same command ends with the same weights as an
uninterrupted one (tests/test_trainer.py).

Launch with torchrun for several processes (lmscope/dist.py): DDP over tokens by default,
latents split over ranks with --shard-features (sharded.py).
"""

from __future__ import annotations

import contextlib
import math
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .. import dist
from ..config import to_dict
from ..dist import DistInfo
from ..errors import UserError
from ..layout import AtlasLayout
from . import native
from .base import DictionaryConfig, SparseDictionary
from .checkpoint import Checkpoints, RunState
from .protocol import Dictionary
from .registry import build
from .sharded import ShardedTopK, gather_uneven
from .sources import ActivationSource, Batch
from .train_config import DictionaryPlan, TrainConfig, TrainPlan, changed_settings, resolve_plan

if TYPE_CHECKING:
    from ..models import LanguageModel

TRAIN_DOCUMENTS = "train_documents.npy"
"""In each dictionary folder: the doc_keys of the documents it was trained on."""
# Latent firing frequencies for sparsity.safetensors are counted over the last this many tokens.
FREQ_TOKENS = 100_000


def end_of_step(step, steps, checkpoint_every, sigint, stop_after, save, device) -> None:
    """After optimizer step `step` of `steps`: on Ctrl-C or `stop_after` (every rank agrees)
    save a checkpoint and raise Interrupted; else save every `checkpoint_every` steps. Shared by
    the per-layer and the cross-layer trainers."""
    stop = sigint.hit or (stop_after is not None and step >= stop_after)
    if dist.is_active():
        flag = torch.tensor([1 if stop else 0], device=device)
        stop = bool(dist.all_reduce_max_(flag).item())
    if stop and step < steps:
        save(step)
        raise Interrupted(step)
    if checkpoint_every and step % checkpoint_every == 0 and step < steps:
        save(step)


@dataclass
class StepMetrics:
    """One dictionary's numbers at one step (this rank's part of the batch)."""

    loss: float
    fvu: float
    l0: float
    dead_frac: float
    aux_loss: float


@dataclass
class TrainResult:
    """What `train` returns."""

    out: Path
    dictionaries: dict[str, Path]
    """hook -> SAELens folder written."""
    steps: int
    tokens: int
    seconds: float
    """Wall time of this invocation (a resumed run counts only its own part)."""
    metrics: dict[str, StepMetrics] = field(default_factory=dict)
    """hook -> metrics averaged over the last 10% of steps."""
    plan: TrainPlan | None = None
    history: dict[str, list[StepMetrics]] = field(default_factory=dict)
    """hook -> per-step metrics (the last 1000 steps)."""


class Interrupted(Exception):
    """Ctrl-C arrived; the checkpoint at `step` was saved."""

    def __init__(self, step: int) -> None:
        super().__init__(step)
        self.step = step


@dataclass
class _Slot:
    """One dictionary being trained and its optimizer state."""

    plan: DictionaryPlan
    sae: Dictionary  # a SparseDictionary or a ShardedTopK
    opt: torch.optim.Adam
    """Adam over every parameter but W_dec."""
    opt_dec: torch.optim.Adam
    """Adam over W_dec, stepped inside backward as soon as its gradient is complete
    (_update_decoder)."""
    since_fired: Tensor  # [d_local] int64: tokens since the latent last fired
    freq: Tensor  # [d_local] float64: tokens on which it fired, over the last FREQ_TOKENS tokens
    history: list[StepMetrics] = field(default_factory=list)
    lr: float = 0.0
    ddp: bool = False
    decoder_done: bool = False


# --- setting up ------------------------------------------------------------------------
def _dictionary_config(cfg: TrainConfig, p: DictionaryPlan, model: str) -> DictionaryConfig:
    extra: dict[str, Any] = {}
    if cfg.l1_coeff is not None:
        extra["l1_coeff"] = cfg.l1_coeff
    if cfg.l0_coeff is not None:
        extra["l0_coeff"] = cfg.l0_coeff
    return DictionaryConfig(
        d_in=p.d_in,
        d_sae=p.d_sae,
        arch=cfg.arch,
        k=min(cfg.k, p.d_sae),
        d_out=p.d_out if p.out_hook else None,
        skip=cfg.skip,
        hook_name=p.hook,
        out_hook_name=p.out_hook,
        model_name=model,
        aux_coeff=cfg.aux_coeff,
        seed=cfg.seed,
        **extra,
    )


def _check_finished(layout: AtlasLayout, plan: TrainPlan, force: bool) -> None:
    """A finished dictionary is never overwritten without --force."""
    done = [
        d.hook for d in plan.dictionaries if (layout.dictionary_dir(d.hook) / "cfg.json").is_file()
    ]
    if done and not force:
        raise UserError(
            f"{layout.root} already holds a trained dictionary for {', '.join(done)}; "
            "pass --force to retrain it or choose another --out"
        )


def _make_slot(
    cfg: TrainConfig,
    p: DictionaryPlan,
    model: str,
    info: DistInfo,
    sharded: bool,
    device: torch.device,
    first: Batch | None,
    batch_size: int,
) -> _Slot:
    sae: Any = build(_dictionary_config(cfg, p, model))
    if first is not None:
        x = first[p.hook]
        t = first[p.out_hook] if p.out_hook else None
        if info.enabled and not sharded:
            # DDP ranks hold disjoint slices of the first global batch: initialize every rank
            # from the whole batch (rank order), exactly as a single process would.
            sizes = dist.split_sizes(batch_size, info.world_size)
            x = gather_uneven(x, 0, sizes)
            t = gather_uneven(t, 0, sizes) if t is not None else None
        sae.init_from_data(x, t)
    dist.broadcast_module_(
        sae
    )  # identical already; makes it so even if init were not deterministic
    if sharded:
        sae = ShardedTopK(sae, info)
    sae = sae.to(device)
    opt = make_optimizer([q for q in sae.parameters() if q is not sae.W_dec])
    opt_dec = make_optimizer([sae.W_dec])
    n = sae.W_dec.shape[0]
    slot = _Slot(
        p,
        sae,
        opt,
        opt_dec,
        torch.zeros(n, dtype=torch.long, device=device),
        torch.zeros(n, dtype=torch.float64, device=device),
    )
    sae.W_dec.register_post_accumulate_grad_hook(lambda _: _update_decoder(slot))
    return slot


def make_optimizer(params: list[torch.nn.Parameter]) -> torch.optim.Adam:
    """Adam(0.9, 0.999) (Gao et al. 2024), fused: one pass over each tensor and no full-size
    temporaries, which is what lets a 1M-latent dictionary step within 24 GB (docs/scaling.md)."""
    try:
        return torch.optim.Adam(params, lr=1.0, betas=(0.9, 0.999), fused=True)
    except (RuntimeError, TypeError, ValueError):  # a device without a fused kernel
        return torch.optim.Adam(params, lr=1.0, betas=(0.9, 0.999), foreach=False)


def _slot_state(s: _Slot) -> dict:
    return {
        "model": s.sae.state_dict(),
        "optim": s.opt.state_dict(),
        "optim_dec": s.opt_dec.state_dict(),
        "since_fired": s.since_fired.cpu(),
        "freq": s.freq.cpu(),
        "history": [m.__dict__ for m in s.history[-1000:]],
    }


def _load_slot_state(s: _Slot, st: dict) -> None:
    s.sae.load_state_dict(st["model"])
    s.opt.load_state_dict(st["optim"])
    s.opt_dec.load_state_dict(st["optim_dec"])
    s.since_fired.copy_(st["since_fired"])
    s.freq.copy_(st["freq"])
    s.history = [StepMetrics(**m) for m in st["history"]]


# --- one step ----------------------------------------------------------------------------
def _slot_batch(p: DictionaryPlan, batch: Batch, device: torch.device | None = None) -> Batch:
    """One dictionary's hooks of the batch as float32 (on `device`).

    Sources hand out the model's dtype (a bf16 model's activations stay bf16 in the shuffle
    buffer); casting here, one dictionary at a time, means the float32 copies of 60 hook
    points never exist together (60 x 4096 x 576 x 4 bytes = 566 MB otherwise).
    """
    hooks = (p.hook, p.out_hook) if p.out_hook else (p.hook,)
    return {h: batch[h].to(device or batch[h].device, torch.float32) for h in hooks}


def _allreduce_grads(params: list[torch.nn.Parameter]) -> None:
    """Sum gradients over ranks in one flat buffer (each rank pre-weighted by its token share)."""
    if not dist.is_active():
        return
    grads = [p.grad for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce_sum_(flat)
    off = 0
    for g in grads:
        g.copy_(flat[off : off + g.numel()].view_as(g))
        off += g.numel()


@torch.no_grad()
def _remove_parallel_grad_(W: Tensor, g: Tensor, rows: int = 65536) -> None:
    """Gao et al. 2024 App. A.4: project out each decoder row's gradient component along the row.

    Same math as SparseDictionary.remove_parallel_grad_, a block of rows at a time, so a
    1M-latent decoder needs no full-size temporaries; on CPU, one native pass per row.
    """
    if native.remove_parallel_(W.data, g):
        return
    for i in range(0, W.shape[0], rows):
        w = W[i : i + rows]
        w = w / w.norm(dim=1, keepdim=True).clamp_min(1e-8)
        g[i : i + rows] -= (g[i : i + rows] * w).sum(1, keepdim=True) * w


@torch.no_grad()
def _update_decoder(s: _Slot) -> None:
    """(DDP all-reduce,) parallel-gradient removal, Adam step and row renormalization of W_dec.

    Runs from W_dec's post-accumulate-grad hook, i.e. during backward, once every use of
    W_dec has contributed; its gradient is then freed before the encoder's is formed, so
    the two full-size gradients never coexist (what lets 1M latents step in 24 GB).
    """
    W = s.sae.W_dec
    if W.grad is None:
        W.grad = torch.zeros_like(W)
    if s.ddp:
        dist.all_reduce_sum_(W.grad)
    if s.sae.cfg.unit_norm_decoder:
        _remove_parallel_grad_(W, W.grad)
    for g in s.opt_dec.param_groups:
        g["lr"] = s.lr
    s.opt_dec.step()
    W.grad = None
    s.sae.normalize_decoder_()
    s.decoder_done = True


def _autocast(device: torch.device, on: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if on else contextlib.nullcontext()


def _step(
    s: _Slot,
    batch: Batch,
    lr: float,
    plan: TrainPlan,
    autocast: bool,
    ddp: bool,
    count: bool = False,
) -> tuple[StepMetrics, bool]:
    """One optimizer step of one dictionary. With `count`, adds the latents' firing counts of
    this step's code to s.freq where the architecture hands them out (TrainOutput.fire_counts);
    returns (metrics, whether it counted)."""
    x = batch[s.plan.hook]
    t = batch[s.plan.out_hook] if s.plan.out_hook else None
    n_local = x.shape[0]
    dead = s.since_fired >= plan.dead_tokens
    s.opt.zero_grad(set_to_none=True)  # no full-size grad buffers held during the forward
    s.opt_dec.zero_grad(set_to_none=True)
    s.lr, s.ddp, s.decoder_done = lr, ddp, False
    if n_local > 0:
        with _autocast(x.device, autocast):
            out = s.sae.loss(x, t, dead_mask=dead)
        # DDP: the global loss is the token-weighted mean of the ranks' losses.
        weight = n_local / plan.batch_size if ddp else 1.0
        (out.loss * weight).backward()
        fired = out.fired
        metrics = [float(out.loss.detach()), float(out.fvu), float(out.l0), float(out.aux_loss)]
        counted = count and out.fire_counts is not None
        if counted:
            # The code this step trained on: counting it costs a bincount, where a second
            # encode after the update (_count_firing) cost a GEMM and a top-k per step.
            s.freq += out.fire_counts.to(s.freq.dtype)
    else:  # an empty slice of an uneven batch: still take part in the all-reduces
        fired = torch.zeros_like(dead)
        metrics = [0.0, 0.0, 0.0, 0.0]
        counted = count
    if not s.decoder_done:  # no backward reached W_dec on this rank
        _update_decoder(s)
    params = [p for p in s.sae.parameters() if p is not s.sae.W_dec]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if ddp:
        _allreduce_grads(params)
        fired = dist.all_reduce_max_(fired.to(torch.uint8)).bool()
    for g in s.opt.param_groups:
        g["lr"] = lr
    s.opt.step()
    s.since_fired += plan.batch_size
    s.since_fired[fired] = 0
    metrics = StepMetrics(
        loss=metrics[0],
        fvu=metrics[1],
        l0=metrics[2],
        aux_loss=metrics[3],
        dead_frac=float(dead.float().mean()),
    )
    return metrics, counted


@torch.no_grad()
def _count_firing(s: _Slot, batch: Batch, sharded: bool) -> None:
    """Add this batch's per-latent firing counts (for sparsity.safetensors) by encoding it
    again: only for architectures whose training forward hands out no counts (relu, jumprelu)."""
    x = batch[s.plan.hook]
    if x.shape[0] == 0:
        return
    if sharded:
        # The top-k across shards again (cheap next to the training step).
        from .sharded import global_topk

        sae: ShardedTopK = s.sae
        x_n = x * sae.act_scale
        x_in = x_n - sae.b_dec if sae.apply_b_dec_to_input else x_n
        codes = global_topk(torch.addmm(sae.b_enc, x_in, sae.W_enc), sae.cfg.k, sae.lo)
        own = (codes.indices >= sae.lo) & (codes.indices < sae.hi) & (codes.values > 0)
        s.freq.index_add_(
            0,
            (codes.indices[own] - sae.lo),
            torch.ones(int(own.sum()), dtype=torch.float64, device=x.device),
        )
        return
    if s.sae.cfg.arch == "topk":
        # The k winners only: no dense [batch, d_sae] scatter per dictionary and step.
        codes = s.sae.encode_topk(x)
        hit = codes.indices[codes.values > 0]
        s.freq += torch.bincount(hit, minlength=s.freq.shape[0]).double()
        return
    acts = s.sae.encode(x)  # [batch, d_sae]
    s.freq += acts.gt(0).sum(0).double()


# --- the run ---------------------------------------------------------------------------
class _SigintFlag:
    """Turn Ctrl-C into a flag checked between steps, so a step is never half applied."""

    def __init__(self) -> None:
        self.hit = False
        self._old = None

    def __enter__(self) -> _SigintFlag:
        try:
            self._old = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: leave Ctrl-C alone
            self._old = None
        return self

    def _handle(self, signum, frame) -> None:
        if self.hit:  # a second Ctrl-C: give up at once
            raise KeyboardInterrupt
        self.hit = True

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def run_training(
    cfg: TrainConfig,
    plan: TrainPlan,
    source: ActivationSource,
    *,
    lm: LanguageModel | None = None,
    info: DistInfo | None = None,
    stop_after: int | None = None,
) -> TrainResult:
    """Train every dictionary of `plan` on `source`, resuming from --out's checkpoint if any.

    `lm` (optional) supplies SAELens metadata (module names). `stop_after` stops (with a
    checkpoint, like Ctrl-C) once that many steps are done: tests use it to interrupt.
    """
    info = info or dist.env_info()
    device = dist.device_for(info, cfg.device)
    layout = AtlasLayout(cfg.out)
    ckpts = Checkpoints(layout)
    sharded = plan.mode == "shard_features"
    ddp = plan.mode == "ddp"
    hooks = [d.hook for d in plan.dictionaries]
    _check_finished(layout, plan, cfg.force)

    # Resume or start fresh.
    state = ckpts.read_state()
    saved_cfg = ckpts.read_config()
    if cfg.force and info.is_main:
        ckpts.clear(hooks)
        for h in hooks:
            shutil.rmtree(layout.dictionary_dir(h), ignore_errors=True)
        state = None
    if state is not None and saved_cfg is not None:
        diff = changed_settings(saved_cfg, cfg)
        if plan.world_size != (state.sharded_ranks or plan.world_size) and sharded:
            diff.append(f"ranks: {state.sharded_ranks} -> {plan.world_size}")
        if diff:
            raise UserError(
                f"{layout.root} holds an interrupted run with other settings ({'; '.join(diff)}); "
                "rerun it with the same settings, or pass --force to start over"
            )
    dist.barrier()
    if info.is_main:
        ckpts.write_config(to_dict(cfg), plan.to_dict())
    start = state.step if state is not None else 0

    torch.manual_seed(cfg.seed)
    batches = source.batches(start)
    first = next(batches) if start == 0 else None
    slots = []
    for p in plan.dictionaries:
        first_dev = _slot_batch(p, first, device) if first is not None else None
        slots.append(
            _make_slot(cfg, p, plan.model, info, sharded, device, first_dev, plan.batch_size)
        )
    if state is not None:
        for s in slots:
            rank = info.rank if sharded else None
            _load_slot_state(s, ckpts.load_dictionary(s.plan.hook, state.step, rank))
        if info.is_main:
            print(
                f"lmscope: resuming {layout.root} at step {state.step}/{plan.steps}",
                file=sys.stderr,
            )

    def save(step: int) -> None:
        for s in slots:
            if sharded:
                ckpts.save_dictionary(s.plan.hook, step, _slot_state(s), rank=info.rank)
            elif info.is_main:
                ckpts.save_dictionary(s.plan.hook, step, _slot_state(s))
        dist.barrier()
        if info.is_main:
            ckpts.commit(
                hooks, RunState(step, step * plan.batch_size, info.world_size if sharded else None)
            )
        dist.barrier()

    freq_from = max(0, plan.steps - max(1, math.ceil(FREQ_TOKENS / plan.batch_size)))
    bar = None
    if info.is_main and cfg.progress:
        from tqdm import tqdm

        bar = tqdm(
            total=plan.steps * plan.batch_size,
            initial=start * plan.batch_size,
            unit="tok",
            unit_scale=True,
            desc="train",
            dynamic_ncols=True,
            file=sys.stderr,
        )
    t0 = time.perf_counter()
    step = start
    autocast = cfg.dtype == "bfloat16"
    if autocast and info.is_main:
        from ..models.load import warn_if_slow_half

        warn_if_slow_half(torch.bfloat16, device, "--dtype")
    with _SigintFlag() as sigint:
        try:
            while step < plan.steps:
                batch = first if first is not None else next(batches)
                first = None
                batch = {h: v.to(device, non_blocking=True) for h, v in batch.items()}
                lr = plan.lr_at(step)
                for s in slots:
                    mine = _slot_batch(s.plan, batch)
                    count = step >= freq_from
                    m, counted = _step(s, mine, lr, plan, autocast, ddp, count)
                    s.history.append(m)
                    if count and not counted:
                        # Under the step's autocast: in fp32 this extra encode cost as much
                        # as a whole bf16 training step on this CPU.
                        with _autocast(device, autocast):
                            _count_firing(s, mine, sharded)
                    del mine
                step += 1
                if bar is not None:
                    m0 = [s.history[-1] for s in slots]
                    bar.update(plan.batch_size)
                    bar.set_postfix(
                        fvu=f"{sum(m.fvu for m in m0) / len(m0):.3f}",
                        l0=f"{sum(m.l0 for m in m0) / len(m0):.1f}",
                        dead=f"{sum(m.dead_frac for m in m0) / len(m0):.1%}",
                        refresh=False,
                    )
                end_of_step(
                    step, plan.steps, cfg.checkpoint_every, sigint, stop_after, save, device
                )
        finally:
            if bar is not None:
                bar.close()
    seconds = time.perf_counter() - t0
    docs = source.documents() if hasattr(source, "documents") else None
    written = _write_dictionaries(cfg, plan, slots, layout, lm, info, sharded, docs)
    dist.barrier()
    if info.is_main:
        ckpts.clear(hooks)
    tail = max(1, plan.steps // 10)
    metrics = {}
    for s in slots:
        h = s.history[-tail:] or [StepMetrics(0, 0, 0, 0, 0)]
        metrics[s.plan.hook] = StepMetrics(
            *(
                sum(getattr(m, f) for m in h) / len(h)
                for f in ("loss", "fvu", "l0", "dead_frac", "aux_loss")
            )
        )
    return TrainResult(
        out=layout.root,
        dictionaries=written,
        steps=plan.steps,
        tokens=plan.steps * plan.batch_size,
        seconds=seconds,
        metrics=metrics,
        plan=plan,
        history={s.plan.hook: s.history for s in slots},
    )


def _write_dictionaries(
    cfg: TrainConfig,
    plan: TrainPlan,
    slots: list[_Slot],
    layout: AtlasLayout,
    lm: LanguageModel,
    info: DistInfo,
    sharded: bool,
    docs: tuple[dict, Any] | None = None,
) -> dict[str, Path]:
    """SAELens folders (+ sparsity.safetensors, + train_documents.npy), then the manifest entry:
    rank 0 only.

    `docs` is the source's record of the documents it read (lmscope.capture.documents): it goes
    into the manifest entry as `train_data`, so `lmscope eval` can refuse held-out text the
    dictionary saw. None (in-memory tensors, an old store): the entry says `train_data: null`.
    """
    from ..capture.documents import record
    from .io.saelens import saelens_metadata

    written: dict[str, Path] = {}
    counted = (
        plan.steps - max(0, plan.steps - max(1, math.ceil(FREQ_TOKENS / plan.batch_size)))
    ) * plan.batch_size
    for s in slots:
        sae: SparseDictionary = s.sae.gather_full() if sharded else s.sae
        freq = s.freq.clone()
        if sharded:
            freq = gather_uneven(freq, 0, s.sae.sizes)
        elif dist.is_active():
            dist.all_reduce_sum_(freq)
        if not info.is_main:
            continue
        meta: dict[str, Any] = {
            "context_size": cfg.ctx_len,
            "prepend_bos": True,
            "exclude_special_tokens": True,
            "dataset_path": cfg.from_store or cfg.corpus,
            "lmscope_train_tokens": plan.steps * plan.batch_size,
        }
        if lm is not None:
            meta = saelens_metadata(lm, s.plan.hook, **meta)
        path = layout.dictionary_dir(s.plan.hook)
        sae.float().cpu().save(path, sparsity=(freq / max(1, counted)).float().cpu(), metadata=meta)
        train_data = None
        if docs is not None:
            train_data = record(file=TRAIN_DOCUMENTS, keys=docs[1], folder=path, **docs[0])
        last = s.history[-max(1, plan.steps // 10) :]
        layout.add_dictionary(
            s.plan.hook,
            model=plan.model,
            arch=cfg.arch,
            d_sae=s.plan.d_sae,
            extra={
                "d_in": s.plan.d_in,
                "out_hook": s.plan.out_hook,
                "k": cfg.k,
                "tokens": plan.steps * plan.batch_size,
                "train_fvu": sum(m.fvu for m in last) / len(last),
                "train_l0": sum(m.l0 for m in last) / len(last),
                "dead_frac": float((s.freq == 0).double().mean()) if not sharded else None,
                "train_data": train_data,
            },
        )
        written[s.plan.hook] = path
    return written


# --- from a TrainConfig (what the CLI calls) ----------------------------------------------
def train(
    cfg: TrainConfig,
    *,
    lm: LanguageModel | None = None,
    source: ActivationSource | None = None,
    stop_after: int | None = None,
) -> TrainResult:
    """Resolve the run against the model / store, build the source and train (see run_training).

    Under torchrun this joins the process group; `lm` may be passed to reuse a loaded model.
    """
    from .sources import (
        StoreSource,
        StreamSource,
        check_store_matches,
        resolve_store_hooks,
        store_info,
    )

    info = dist.setup(cfg.device)
    if cfg.shard_features and not info.enabled and info.is_main:
        print(
            "lmscope: --shard-features with one process: nothing to shard, training normally",
            file=sys.stderr,
        )
    data_info = DistInfo() if (cfg.shard_features and info.enabled) else info
    world = info.world_size
    if lm is None:  # also for a store: hook names, SAELens module names and eval need it
        from ..models import load_model

        lm = load_model(
            cfg.model,
            dtype=getattr(torch, cfg.model_dtype),
            device=str(dist.device_for(info, cfg.device)),
        )
    fingerprint = lm.fingerprint()
    if cfg.clt and cfg.hooks.strip() == "middle":
        hooks_arg = "blocks.*.mlp_in"  # a CLT's default is every layer, not the middle one
    else:
        hooks_arg = _expand_middle(cfg.hooks, lm)
    if cfg.from_store is not None:
        si = store_info(cfg.from_store)
        check_store_matches(si, lm.name, lm.d_model)
        ins = resolve_store_hooks(si["hooks"], hooks_arg)
        for h in ins:
            lm.hooks[h]  # the hook must exist in the model too (one line otherwise)
        dims = dict(si["dims"])
    else:
        ins = lm.hooks.resolve(hooks_arg)
        dims = {h: lm.hooks[h].d for h in lm.hooks.points}
    if cfg.clt:
        from .clt_trainer import clt_layers

        n_clt = clt_layers(ins)
        ins = [f"blocks.{i}.mlp_in" for i in range(n_clt)]
    pairs = _pairs(ins, cfg.transcode or cfg.clt)
    if cfg.from_store is not None:
        missing = [o for _, o in pairs if o and o not in dims]
        if missing:
            raise UserError(
                f"the store has no {', '.join(missing)} to train transcoders on; "
                "capture the mlp_out hooks too"
            )
    try:
        plan = resolve_plan(
            cfg,
            hooks=pairs,
            dims=dims,
            model=lm.name,
            world_size=world,
            source=cfg.from_store or "stream",
            fingerprint=fingerprint,
        )
    except ValueError as e:
        raise UserError(str(e)) from None
    if source is None:
        needed = plan.hooks_needed
        if cfg.from_store is not None:
            source = StoreSource(
                cfg.from_store, needed, batch_size=cfg.batch_size, seed=cfg.seed, info=data_info
            )
        else:
            source = StreamSource(
                lm,
                needed,
                corpus=cfg.corpus,
                ctx_len=cfg.ctx_len,
                batch_size=cfg.batch_size,
                buffer_mb=cfg.buffer_mb,
                max_batches=plan.steps,
                model_batch=cfg.model_batch,
                seed=cfg.seed,
                info=data_info,
            )
    if cfg.clt:
        from .clt_trainer import run_clt_training

        return run_clt_training(cfg, plan, source, lm=lm, info=info, stop_after=stop_after)
    return run_training(cfg, plan, source, lm=lm, info=info, stop_after=stop_after)


def _expand_middle(hooks: str, lm: LanguageModel) -> str:
    return ",".join(
        f"blocks.{lm.n_layers // 2}.resid_post" if h.strip() == "middle" else h.strip()
        for h in hooks.split(",")
    )


def _pairs(hooks: list[str], transcode: bool) -> list[tuple[str, str | None]]:
    """SAEs: (hook, None). Transcoders: (blocks.L.mlp_in, blocks.L.mlp_out) per layer of the
    hooks."""
    if not transcode:
        return [(h, None) for h in hooks]
    layers = []
    for h in hooks:
        if not h.startswith("blocks."):
            raise UserError(f"--transcode needs block hook points (blocks.L.*), got {h}")
        L = int(h.split(".")[1])
        if L not in layers:
            layers.append(L)
    return [(f"blocks.{L}.mlp_in", f"blocks.{L}.mlp_out") for L in layers]


__all__ = ["Interrupted", "StepMetrics", "TrainResult", "run_training", "train"]
