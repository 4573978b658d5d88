"""Train one cross-layer transcoder (`lmscope train --clt`): all layers from one activation stream.

    lmscope train --clt --model smollm2-135m --arch topk --width 4x --k 32 --tokens 200k --out a/
    torchrun --nproc-per-node 2 -m lmscope train --clt ... --shard-features --out a/

What differs from the per-layer trainer (trainer.py), and why:

- One model pass feeds every layer: the source captures blocks.l.mlp_in and blocks.l.mlp_out
  of all L layers together, and each batch row is the SAME token at every hook (StreamSource
  draws one permutation per buffer refill for all hooks; StoreSource gives every hook the same
  seed). A CLT's loss couples the layers, so its rows must be aligned across layers; the shuffle
  buffer holds all 2L hooks within --buffer-mb (its size is a byte budget for all hooks
  together, sources.buffer_batches_for).
- One model, one Adam over all its parameters; the step is loss -> backward -> (DDP: all-reduce
  gradients) -> remove each latent's decoder-gradient component along its (concatenated)
  decoder -> Adam at the scheduled LR -> renormalize decoders, clamp thresholds > 0.
- The checkpoint conventions are the per-layer trainer's (checkpoint.py): train/clt/ckpt-N.pt
  (.rank{r} per rank with --shard-features), state.json written last, the saved TrainConfig
  compared on resume; an interrupted run resumed with the same command ends with the same
  weights (tests/test_clt_train.py).
- Output: OUT/dictionaries/clt/ (clt_cfg.json + clt.safetensors, CrossLayerTranscoder.load), its
  train_documents.npy, and an entry under "clts" in OUT/atlas.json (not under "dictionaries":
  the per-layer stages open every dictionary listed there as a SAELens folder).
"""

from __future__ import annotations

import shutil
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
from ..layout import AtlasLayout, write_json_atomic
from .checkpoint import Checkpoints, RunState
from .clt import CLT_CFG_FILENAME, CLTConfig, CrossLayerTranscoder
from .clt_sharded import ShardedCLT
from .sharded import gather_uneven
from .sources import ActivationSource, Batch
from .train_config import TrainConfig, TrainPlan, changed_settings
from .trainer import (
    TRAIN_DOCUMENTS,
    StepMetrics,
    TrainResult,
    _autocast,
    _SigintFlag,
    end_of_step,
    make_optimizer,
)

if TYPE_CHECKING:
    from ..models import LanguageModel

CLT_NAME = "clt"
"""The CLT's name in the atlas: OUT/dictionaries/clt/, OUT/train/clt/, atlas.json "clts"."""


@dataclass
class _CLTSlot:
    clt: Any  # CrossLayerTranscoder or ShardedCLT
    opt: torch.optim.Adam
    since_fired: Tensor  # [L, n_local] int64 tokens since the latent last fired
    history: list[StepMetrics] = field(default_factory=list)
    layer_fvu: list[list[float]] = field(default_factory=list)
    """Per-step FVU of every target layer (the last 1000 steps)."""


def clt_layers(hooks: list[str]) -> int:
    """The number of layers L of the CLT that --hooks asks for: the layers named must be 0..L-1
    (a CLT's layers are a prefix of the model's, since every layer writes to all later ones;
    the trainer turns the default 'middle' into every layer)."""
    layers = set()
    for h in hooks:
        parts = h.split(".")
        if len(parts) < 2 or parts[0] != "blocks" or not parts[1].isdigit():
            raise UserError(f"--clt needs block hook points (blocks.L.mlp_in), got {h}")
        layers.add(int(parts[1]))
    want = set(range(max(layers) + 1))
    if layers != want:
        raise UserError(
            f"--clt covers layers 0..L-1 without gaps, but --hooks names layers "
            f"{sorted(layers)}; use --hooks 'blocks.*.mlp_in' (every layer) or a prefix such as "
            f"'blocks.[0-3].mlp_in'"
        )
    return len(want)


def clt_config(cfg: TrainConfig, plan: TrainPlan) -> CLTConfig:
    p0 = plan.dictionaries[0]
    extra: dict[str, Any] = {}
    if cfg.l0_coeff is not None:
        extra["l0_coeff"] = cfg.l0_coeff
    return CLTConfig(
        n_layers=len(plan.dictionaries),
        d_model=p0.d_in,
        d_sae=p0.d_sae,
        arch=cfg.arch,  # type: ignore[arg-type]  (TrainConfig checked it is topk or jumprelu)
        k=min(cfg.k, p0.d_sae),
        model_name=plan.model,
        aux_coeff=cfg.aux_coeff,
        seed=cfg.seed,
        **extra,
    )


def _stack(batch: Batch, hooks: list[str], device: torch.device) -> Tensor:
    """[L, n, d] float32 from one batch's per-hook [n, d] tensors (model dtype)."""
    return torch.stack([batch[h].to(device, torch.float32) for h in hooks])


def _make_slot(
    cfg: TrainConfig,
    plan: TrainPlan,
    info: DistInfo,
    device: torch.device,
    first: tuple[Tensor, Tensor] | None,
) -> _CLTSlot:
    clt: Any = CrossLayerTranscoder(clt_config(cfg, plan))
    if first is not None:
        x, t = first
        if plan.mode == "ddp":
            # DDP ranks hold disjoint slices of the first batch: initialize from the whole batch.
            sizes = dist.split_sizes(plan.batch_size, info.world_size)
            x, t = gather_uneven(x, 1, sizes), gather_uneven(t, 1, sizes)
        clt.init_from_data(x, t)
    dist.broadcast_module_(clt)
    if plan.mode == "shard_features":
        clt = ShardedCLT(clt, info)
    clt = clt.to(device)
    n_local = clt.W_enc.shape[2]
    return _CLTSlot(
        clt,
        make_optimizer(list(clt.parameters())),
        torch.zeros(clt.n_layers, n_local, dtype=torch.long, device=device),
    )


def _slot_state(s: _CLTSlot) -> dict:
    return {
        "model": s.clt.state_dict(),
        "optim": s.opt.state_dict(),
        "since_fired": s.since_fired.cpu(),
        "history": [m.__dict__ for m in s.history[-1000:]],
        "layer_fvu": s.layer_fvu[-1000:],
    }


def _load_slot_state(s: _CLTSlot, st: dict) -> None:
    try:
        s.clt.load_state_dict(st["model"])
        s.opt.load_state_dict(st["optim"])
        s.since_fired.copy_(st["since_fired"])
    except (KeyError, RuntimeError, ValueError) as e:
        raise UserError(
            f"the CLT checkpoint does not match this run ({type(e).__name__}); pass --force "
            "to start over"
        ) from None
    s.history = [StepMetrics(**m) for m in st["history"]]
    s.layer_fvu = [list(v) for v in st.get("layer_fvu", [])]


def _step(
    s: _CLTSlot, x: Tensor, t: Tensor, lr: float, plan: TrainPlan, autocast: bool, ddp: bool
) -> StepMetrics:
    n_local = x.shape[1]
    dead = s.since_fired >= plan.dead_tokens
    s.opt.zero_grad(set_to_none=True)
    if n_local > 0:
        with _autocast(x.device, autocast):
            out = s.clt.loss(x, t, dead_mask=dead)
        weight = n_local / plan.batch_size if ddp else 1.0
        (out.loss * weight).backward()
        fired = out.fired
        vals = [float(out.loss.detach()), float(out.fvu.mean()), float(out.l0.mean())]
        vals.append(float(out.aux_loss))
        s.layer_fvu.append([round(float(v), 6) for v in out.fvu])
    else:  # an empty slice of an uneven DDP batch: still take part in the all-reduces
        fired = torch.zeros_like(dead)
        vals = [0.0, 0.0, 0.0, 0.0]
    params = list(s.clt.parameters())
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if ddp:
        for p in params:  # one tensor at a time: no flat copy of 600M decoder gradients
            dist.all_reduce_sum_(p.grad)
        fired = dist.all_reduce_max_(fired.to(torch.uint8)).bool()
    s.clt.remove_parallel_grad_()
    for g in s.opt.param_groups:
        g["lr"] = lr
    s.opt.step()
    s.clt.constrain_()
    s.since_fired += plan.batch_size
    s.since_fired[fired] = 0
    return StepMetrics(
        loss=vals[0],
        fvu=vals[1],
        l0=vals[2],
        aux_loss=vals[3],
        dead_frac=float(dead.float().mean()),
    )


def run_clt_training(
    cfg: TrainConfig,
    plan: TrainPlan,
    source: ActivationSource,
    *,
    lm: LanguageModel | None = None,
    info: DistInfo | None = None,
    stop_after: int | None = None,
) -> TrainResult:
    """Train the CLT of `plan` (one DictionaryPlan per layer, mlp_in -> mlp_out) on `source`,
    resuming from --out's checkpoint if any; `stop_after` interrupts (tests)."""
    info = info or dist.env_info()
    device = dist.device_for(info, cfg.device)
    layout = AtlasLayout(cfg.out)
    ckpts = Checkpoints(layout)
    sharded, ddp = plan.mode == "shard_features", plan.mode == "ddp"
    hooks_in = [d.hook for d in plan.dictionaries]
    hooks_out = [d.out_hook for d in plan.dictionaries]
    assert all(hooks_out), "a CLT plan pairs every mlp_in with its mlp_out"
    out_dir = layout.dictionary_dir(CLT_NAME)
    if (out_dir / CLT_CFG_FILENAME).is_file() and not cfg.force:
        raise UserError(
            f"{layout.root} already holds a trained CLT ({out_dir}); pass --force to retrain it "
            "or choose another --out"
        )
    state = ckpts.read_state()
    saved_cfg = ckpts.read_config()
    if cfg.force and info.is_main:
        ckpts.clear([CLT_NAME])
        shutil.rmtree(out_dir, ignore_errors=True)
        state = None
    if state is not None and saved_cfg is not None:
        diff = changed_settings(saved_cfg, cfg)
        if sharded and plan.world_size != (state.sharded_ranks or plan.world_size):
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

    if info.is_main and cfg.progress:
        ccfg = clt_config(cfg, plan)
        est = memory_estimate(ccfg, plan.batch_size, plan.world_size if sharded else 1)
        print(
            f"lmscope: CLT of {ccfg.n_layers} layers x {ccfg.d_sae} latents: "
            f"{ccfg.n_params / 1e6:,.1f}M parameters ({ccfg.n_decoder_params / 1e6:,.1f}M in "
            f"decoders); training state ~{est['train_state'] / 2**30:.2f} GiB per process "
            "(weights, gradients, Adam's two moments) + "
            f"~{est['activations'] / 2**30:.2f} GiB for a step's activations",
            file=sys.stderr,
        )
    torch.manual_seed(cfg.seed)
    batches = source.batches(start)
    first = next(batches) if start == 0 else None
    first_xt = None
    if first is not None:
        first_xt = (_stack(first, hooks_in, device), _stack(first, hooks_out, device))
    s = _make_slot(cfg, plan, info, device, first_xt)
    del first_xt
    if state is not None:
        rank = info.rank if sharded else None
        _load_slot_state(s, ckpts.load_dictionary(CLT_NAME, state.step, rank))
        if info.is_main:
            print(
                f"lmscope: resuming {layout.root} at step {state.step}/{plan.steps}",
                file=sys.stderr,
            )

    def save(step: int) -> None:
        if sharded:
            ckpts.save_dictionary(CLT_NAME, step, _slot_state(s), rank=info.rank)
        elif info.is_main:
            ckpts.save_dictionary(CLT_NAME, step, _slot_state(s))
        dist.barrier()
        if info.is_main:
            ckpts.commit(
                [CLT_NAME],
                RunState(step, step * plan.batch_size, info.world_size if sharded else None),
            )
        dist.barrier()

    bar = None
    if info.is_main and cfg.progress:
        from tqdm import tqdm

        bar = tqdm(
            total=plan.steps * plan.batch_size,
            initial=start * plan.batch_size,
            unit="tok",
            unit_scale=True,
            desc="train clt",
            dynamic_ncols=True,
            file=sys.stderr,
        )
    autocast = cfg.dtype == "bfloat16"
    t0 = time.perf_counter()
    step = start
    with _SigintFlag() as sigint:
        try:
            while step < plan.steps:
                batch = first if first is not None else next(batches)
                first = None
                x, t = _stack(batch, hooks_in, device), _stack(batch, hooks_out, device)
                del batch
                m = _step(s, x, t, plan.lr_at(step), plan, autocast, ddp)
                del x, t
                s.history.append(m)
                step += 1
                if bar is not None:
                    bar.update(plan.batch_size)
                    bar.set_postfix(
                        fvu=f"{m.fvu:.3f}",
                        l0=f"{m.l0:.1f}",
                        dead=f"{m.dead_frac:.1%}",
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
    path = _write_clt(cfg, plan, s, layout, info, sharded, docs)
    dist.barrier()
    if info.is_main:
        ckpts.clear([CLT_NAME])
    tail = s.history[-max(1, plan.steps // 10) :] or [StepMetrics(0, 0, 0, 0, 0)]
    metrics = StepMetrics(
        *(
            sum(getattr(m, f) for m in tail) / len(tail)
            for f in ("loss", "fvu", "l0", "dead_frac", "aux_loss")
        )
    )
    return TrainResult(
        out=layout.root,
        dictionaries={CLT_NAME: path} if path is not None else {},
        steps=plan.steps,
        tokens=plan.steps * plan.batch_size,
        seconds=seconds,
        metrics={CLT_NAME: metrics},
        plan=plan,
        history={CLT_NAME: s.history},
    )


def _write_clt(
    cfg: TrainConfig,
    plan: TrainPlan,
    s: _CLTSlot,
    layout: AtlasLayout,
    info: DistInfo,
    sharded: bool,
    docs: tuple[dict, Any] | None,
) -> Path | None:
    """The CLT folder (rank 0), its training documents and its atlas.json "clts" entry."""
    from ..capture.documents import record

    full = s.clt.gather_full() if sharded else s.clt
    since = s.since_fired
    if sharded:
        since = gather_uneven(since, 1, s.clt.sizes)
    if not info.is_main:
        return None
    path = layout.dictionary_dir(CLT_NAME)
    tokens = plan.steps * plan.batch_size
    meta = {
        "context_size": cfg.ctx_len,
        "prepend_bos": True,
        "exclude_special_tokens": True,
        "dataset_path": cfg.from_store or cfg.corpus,
        "lmscope_train_tokens": tokens,
    }
    full.float().cpu().save(path, metadata=meta)
    train_data = None
    if docs is not None:
        train_data = record(file=TRAIN_DOCUMENTS, keys=docs[1], folder=path, **docs[0])
    n_last = max(1, plan.steps // 10)
    last = s.layer_fvu[-n_last:]
    per_layer = [sum(v[i] for v in last) / len(last) for i in range(full.n_layers)] if last else []
    entry = {
        "path": str(path.relative_to(layout.root)),
        "arch": cfg.arch,
        "n_layers": full.n_layers,
        "d_sae": full.d_sae,
        "k": full.cfg.k,
        "hook_in": full.cfg.hook_in,
        "hook_out": full.cfg.hook_out,
        "tokens": tokens,
        "train_fvu_by_layer": per_layer,
        "train_l0": sum(m.l0 for m in s.history[-n_last:]) / max(1, len(s.history[-n_last:])),
        "dead_frac": float((since >= plan.dead_tokens).double().mean()),
        "train_data": train_data,
    }
    if layout.exists():
        m = layout.read()
        if m.get("model") != plan.model:
            raise UserError(
                f"atlas {layout.root} belongs to model {m.get('model')!r}, not {plan.model!r}; "
                "use another --out"
            )
    else:
        m = {
            "schema_version": 1,
            "model": plan.model,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "dictionaries": {},
        }
    m.setdefault("clts", {})[CLT_NAME] = entry
    m["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    write_json_atomic(layout.manifest_path, m)
    return path


def memory_estimate(ccfg: CLTConfig, batch_size: int, shards: int = 1) -> dict[str, float]:
    """Rough bytes of float32 CLT training per process (docs/scaling.md, "Cross-layer
    transcoders"): weights, gradients and Adam's two moments are 4 copies of every parameter
    (1/shards of them with --shard-features), plus the step's stacked inputs and targets
    [2, L, B, d] and dense pre-activations [L, B, n / shards] (jumprelu keeps ~3 of those)."""
    state = 4 * 4 * ccfg.n_params / shards
    dense = 3 if ccfg.arch == "jumprelu" else 1
    acts = 4 * ccfg.n_layers * batch_size * (2 * ccfg.d_model + dense * ccfg.d_sae / shards)
    return {"train_state": state, "activations": acts}


__all__ = ["CLT_NAME", "clt_config", "clt_layers", "memory_estimate", "run_clt_training"]
