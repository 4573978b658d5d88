"""Where training activations come from: the model itself (streaming), a store, or tensors.

A source yields this rank's part of each global batch as `{hook: [n, d]}` float tensors, for
every hook the run needs at once, and can restart at any global batch index (resume):

- `StreamSource` runs the model on packed corpus contexts and captures *all* requested hook
  points in one forward pass (lmscope.models.runtime.run, which stops after the deepest
  hook), so 30 dictionaries cost one model pass, not 30. Activations of several contexts
  go into a shuffle buffer and are drawn in a random order, so one step's batch mixes
  ~(contexts in the buffer) texts instead of being 30 neighbouring tokens of one text,
  which would correlate the gradient. The buffer's size is a byte budget for all hooks
  together (`buffer_mb`), not batches per hook: it holds
  floor(budget / (sum of the hooks' widths x bytes per value)) tokens, rounded down to whole
  batches, in the model's own dtype (bf16 activations stay bf16, which is lossless), so 60
  hook points cost the same buffer memory as one (docs/scaling.md has the formula).
- `StoreSource` reads an activation store written by `lmscope capture`.
- `TensorSource` wraps in-memory activations (tests, benchmarks, the Python API).

BOS and the other special tokens are excluded (position 0 of every context, and any
BOS/EOS/pad token inside one). They are attention sinks whose residual norms are far above
every text token: in SmolLM2-135M at blocks.15.resid_post, measured on packed fortunes
text, position 0 has norm ~25,000 and the <|im_end|> document separator ~17,600, against a
median of ~170 (p99 ~210) for text tokens; the one separator in 8 contexts held 91% of
the batch's sum of squares. Keeping them would spend the dictionary's capacity and its
normalization scale on a few constant vectors that carry no text, and make FVU a measure
of how well those are reconstructed. SAELens makes the same choice (`exclude_special_tokens`).

Distributed: in DDP mode every rank takes a disjoint part of each global batch
(dist.split_sizes, so uneven batches never hang); a streaming rank runs the model only on
its own contexts (global context i belongs to rank i % world). With --shard-features every
rank needs the whole batch, so sources are built with a world of one.
"""

from __future__ import annotations

import fnmatch
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor

from ..dist import DistInfo, rank_slice, split_sizes
from ..errors import UserError
from ..models.tokens import token_mask

if TYPE_CHECKING:
    from ..models import LanguageModel

Batch = dict[str, Tensor]
"""hook name -> [n_tokens, d] activations (this rank's part of one global batch)."""


class ActivationSource(Protocol):
    hooks: list[str]

    def batches(self, start: int = 0) -> Iterator[Batch]:
        """This rank's part of global batches start, start+1, ... (endless or until data runs
        out)."""
        ...

    def describe(self) -> str: ...


def local_batch_size(batch_size: int, info: DistInfo) -> int:
    return split_sizes(batch_size, info.world_size)[info.rank]


# --- in memory ------------------------------------------------------------------------
@dataclass
class TensorSource:
    """Global batches cut from in-memory activations {hook: [n, d]}, reshuffled every epoch."""

    acts: dict[str, Tensor]
    batch_size: int
    seed: int = 0
    info: DistInfo = DistInfo()
    shuffle: bool = True

    def __post_init__(self) -> None:
        self.hooks = list(self.acts)
        ns = {v.shape[0] for v in self.acts.values()}
        if len(ns) != 1:
            raise ValueError("all hooks need the same number of tokens")
        self.n = ns.pop()
        if self.n < self.batch_size:
            raise ValueError(f"{self.n} tokens is less than one batch of {self.batch_size}")

    def describe(self) -> str:
        return f"tensors ({self.n} tokens)"

    def batches(self, start: int = 0) -> Iterator[Batch]:
        per_epoch = self.n // self.batch_size
        mine = rank_slice(self.batch_size, self.info)
        step = start
        while True:
            epoch, j = divmod(step, per_epoch)
            if self.shuffle:
                gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                order = torch.randperm(self.n, generator=gen)
            else:
                order = torch.arange(self.n)
            idx = order[j * self.batch_size : (j + 1) * self.batch_size][mine]
            yield {h: v[idx].float() for h, v in self.acts.items()}
            step += 1


# --- streaming from the model -----------------------------------------------------------
def iter_contexts(
    lm: LanguageModel,
    corpus: str,
    *,
    ctx_len: int,
    split: str = "train",
    seed: int = 0,
    seen: set[int] | None = None,
) -> Iterator[Tensor]:
    """Packed token contexts [ctx_len] (BOS first) from a corpus, one at a time, deterministic.

    The same contexts `lmscope capture` stores (lmscope.capture.corpus.pack). `seen` receives
    the doc_key of every document with tokens in a context yielded so far.
    """
    from ..capture import corpus as C

    for batch in C.pack(
        lm.tokenizer,
        C.iter_documents(corpus, split=split),
        ctx_len=ctx_len,
        batch_size=1,
        bos_token_id=lm.bos_token_id,
        seed=seed,
        seen=seen,
    ):
        yield from batch


class StreamSource:
    """Run the model on corpus contexts; capture every requested hook in the same pass."""

    def __init__(
        self,
        lm: LanguageModel,
        hooks: list[str],
        *,
        corpus: str,
        ctx_len: int,
        batch_size: int,
        buffer_mb: float = 512,
        max_batches: int | None = None,
        model_batch: int = 16,
        seed: int = 0,
        info: DistInfo | None = None,
        split: str = "train",
        contexts=None,
    ) -> None:
        self.lm, self.hooks = lm, list(hooks)
        self.corpus, self.ctx_len, self.split, self.seed = corpus, ctx_len, split, seed
        self.batch_size, self.model_batch = batch_size, model_batch
        self.info = info = info or DistInfo()
        self.local = local_batch_size(batch_size, info)
        self.buffer_batches = buffer_batches_for(
            buffer_mb, [lm.hooks[h].d for h in self.hooks], self.local, _act_itemsize(lm)
        )
        if max_batches is not None:  # never buffer more than the run will use (small hooks)
            self.buffer_batches = max(1, min(self.buffer_batches, max_batches))
        self.buffer_nbytes = 0
        """Bytes of the shuffle buffer's tensors at the last refill (what the budget bounds)."""
        # The documents of every context read (this rank reads all contexts, keeping its share,
        # so rank 0's set covers every rank's). None when the caller supplies the contexts.
        self.seen: set[int] | None = None if contexts else set()
        # Tests may pass a function returning a fresh context iterator.
        self._contexts = contexts or (
            lambda: iter_contexts(
                lm, corpus, ctx_len=ctx_len, split=split, seed=seed, seen=self.seen
            )
        )

    def describe(self) -> str:
        return f"stream ({self.corpus}, ctx_len {self.ctx_len})"

    def documents(self) -> tuple[dict, set[int]] | None:
        """(what the record says, doc keys) of the documents read so far; None if unknown."""
        if self.seen is None:
            return None
        from ..capture.corpus import fingerprint

        return (
            {
                "source": "stream",
                "corpus": fingerprint(self.corpus),
                "split": self.split,
                "seed": self.seed,
            },
            self.seen,
        )

    def _my_contexts(self) -> Iterator[Tensor]:
        """This rank's contexts: global context i belongs to rank i % world_size."""
        epoch = 0
        while True:
            n = 0
            for i, ctx in enumerate(self._contexts()):
                n += 1
                if i % self.info.world_size == self.info.rank:
                    yield ctx
            if n < self.info.world_size:
                raise UserError(
                    f"the corpus {self.corpus!r} gave {n} contexts of {self.ctx_len} tokens; "
                    "use a larger --corpus or a smaller --ctx-len"
                )
            epoch += 1
            if epoch == 1 and self.info.is_main:
                print(
                    f"lmscope: the corpus ran out after {n} contexts; starting it again "
                    "(later tokens repeat earlier text)",
                    file=sys.stderr,
                )

    def _activations(self, contexts: list[Tensor]) -> Batch:
        """One forward pass over [n, ctx_len] contexts -> {hook: [tokens, d]} without BOS
        positions."""
        from ..models.runtime import run

        tokens = torch.stack(contexts).to(self.lm.device)  # [n, ctx_len]
        res = run(self.lm, tokens, capture=self.hooks)
        keep = token_mask(self.lm, tokens)
        return {h: res.acts[h][keep].cpu() for h in self.hooks}  # [tokens, d], model dtype

    def batches(self, start: int = 0) -> Iterator[Batch]:
        """Refill r holds buffer_batches local batches drawn from the same shuffled buffer.

        Refills are deterministic functions of (seed, rank, r), so a resume at global batch
        `start` replays contexts of earlier refills without running the model on them. The
        buffer is allocated once per hook and filled in place (no concatenation, which would
        hold it twice); batches come out in the model's dtype (the trainer casts each
        dictionary's slice to float32 when it uses it, so 60 hooks are never float32 at once).
        """
        need = self.buffer_batches * self.local
        if self.local == 0:  # more ranks than tokens per batch: this rank contributes nothing
            while True:
                yield {h: torch.zeros(0, self.lm.hooks[h].d) for h in self.hooks}
        ctxs = self._my_contexts()
        first_refill, skip = divmod(start, self.buffer_batches)
        buf: dict[str, Tensor] = {}
        refill = 0
        while True:
            have, filled, pending = 0, 0, []
            replay = refill < first_refill
            while have < need:
                ctx = next(ctxs)
                n_tokens = int(token_mask(self.lm, ctx[None])[0].sum())
                have += n_tokens
                if not replay:
                    pending.append(ctx)
                    if len(pending) == self.model_batch:
                        filled = self._fill(buf, need, filled, pending)
                        pending = []
            if not replay:
                if pending:
                    filled = self._fill(buf, need, filled, pending)
                assert filled == need
                gen = torch.Generator().manual_seed(
                    (self.seed * 1_000_003 + refill) * 131 + self.info.rank
                )
                order = torch.randperm(need, generator=gen)
                for j in range(skip if refill == first_refill else 0, self.buffer_batches):
                    idx = order[j * self.local : (j + 1) * self.local]
                    yield {h: a[idx] for h, a in buf.items()}
            refill += 1

    def _fill(self, buf: Batch, need: int, filled: int, contexts: list[Tensor]) -> int:
        """Run the model on `contexts` and copy their activations into the buffer after row
        `filled` (allocating it, `need` rows per hook, on first use); returns rows filled."""
        acts = self._activations(contexts)
        if not buf:
            buf.update({h: torch.empty(need, a.shape[1], dtype=a.dtype) for h, a in acts.items()})
            self.buffer_nbytes = sum(t.nbytes for t in buf.values())
        n = min(need - filled, next(iter(acts.values())).shape[0])
        for h, a in acts.items():
            buf[h][filled : filled + n] = a[:n]
        return filled + n


def _act_itemsize(lm: LanguageModel) -> int:
    """Bytes per activation value as the model produces it (its weights' dtype)."""
    return torch.empty(0, dtype=lm.dtype).element_size()


def buffer_batches_for(buffer_mb: float, dims: list[int], local: int, itemsize: int) -> int:
    """Whole local batches that fit a shuffle buffer of `buffer_mb` MiB over hooks of widths
    `dims` (one line if not even one batch fits)."""
    per_token = sum(dims) * itemsize
    if local == 0:
        return 1
    n = int(buffer_mb * 2**20) // (per_token * local)
    if n < 1:
        need = math.ceil(per_token * local / 2**20)
        raise UserError(
            f"--buffer-mb {buffer_mb:g} holds less than one batch of {local} tokens over "
            f"{len(dims)} hook points ({need} MiB); raise --buffer-mb to at least {need} "
            "or lower --batch-size"
        )
    return n


# --- from an activation store -----------------------------------------------------------
def resolve_store_hooks(store_hooks: list[str], pattern: str) -> list[str]:
    """Match --hooks names/globs against the hooks a store holds (one line if none match)."""
    out: list[str] = []
    for part in [p.strip() for p in pattern.split(",") if p.strip()]:
        hits = [h for h in store_hooks if fnmatch.fnmatchcase(h, part)]
        if not hits:
            raise UserError(
                f"hook {part!r} is not in the store (it holds: {', '.join(store_hooks)})"
            )
        out += [h for h in hits if h not in out]
    return out


class StoreSource:
    """Global batches read from an activation store (lmscope.capture.store.ActivationStore)."""

    def __init__(
        self,
        path: str | Path,
        hooks: list[str],
        *,
        batch_size: int,
        seed: int = 0,
        info: DistInfo | None = None,
    ) -> None:
        from ..capture.store import ActivationStore

        self.path, self.hooks, self.batch_size, self.seed = (
            Path(path),
            list(hooks),
            batch_size,
            seed,
        )
        self.info = info or DistInfo()
        self.store = ActivationStore(path)

    def describe(self) -> str:
        return f"store {self.path}"

    def documents(self) -> tuple[dict, object] | None:
        """The store's record of its documents (every stored context is read in an epoch); None if
        the store was captured before lmscope kept one."""
        rec = self.store.documents
        if rec is None:
            return None
        return (
            {
                "source": f"store {self.path}",
                "corpus": rec.get("corpus"),
                "split": rec.get("split"),
                "seed": rec.get("seed"),
            },
            self.store.document_keys(),
        )

    def _iter(self, hook: str, epoch: int) -> Iterator[Any]:
        """One shuffled pass over `hook`; every hook gets the same seed so transcoder in/out
        align."""
        kw = dict(shuffle=True, exclude_bos=True)
        try:
            return iter(self.store.batches(hook, self.batch_size, seed=self.seed + epoch, **kw))
        except TypeError:  # a store whose iterator takes no seed
            return iter(self.store.batches(hook, self.batch_size, **kw))

    def batches(self, start: int = 0) -> Iterator[Batch]:
        mine = rank_slice(self.batch_size, self.info)
        epoch, step = 0, 0
        iters = {h: self._iter(h, epoch) for h in self.hooks}
        while True:
            try:
                got = {h: _acts_of(next(it)) for h, it in iters.items()}
                if any(a.shape[0] < self.batch_size for a in got.values()):
                    raise StopIteration  # a short last batch: start the next epoch instead
            except StopIteration:
                epoch += 1  # one pass over the store is done: reshuffle and go again
                iters = {h: self._iter(h, epoch) for h in self.hooks}
                got = {h: _acts_of(next(it)) for h, it in iters.items()}
            if step >= start:
                yield {h: a[mine].float() for h, a in got.items()}
            step += 1


def _acts_of(item: Any) -> Tensor:
    """A store batch may be a tensor or a record with `.acts`."""
    return item if isinstance(item, Tensor) else item.acts


def store_info(path: str | Path) -> dict[str, Any]:
    """The store's manifest (model, hooks, d per hook), with one-line errors."""
    p = Path(path)
    if not p.is_dir():
        raise UserError(
            f"activation store not found: {p} (write one with `lmscope capture ... --out {p}`)"
        )
    from ..capture.store import ActivationStore

    try:
        st = ActivationStore(p)
    except UserError:
        raise
    except Exception as e:  # a folder that is not a store
        raise UserError(f"{p} is not a readable activation store ({e})") from None
    return {
        "model": getattr(st, "model", None),
        "hooks": list(st.hooks),
        "dims": _store_dims(st),
        "fingerprint": getattr(st, "fingerprint", None),
    }


def _store_dims(st) -> dict[str, int]:
    dims = getattr(st, "dims", None)
    if isinstance(dims, dict):
        return {h: int(d) for h, d in dims.items()}
    return {h: int(st.d(h)) for h in st.hooks}


def check_store_matches(info: dict[str, Any], model: str, d_model: int | None) -> None:
    """Refuse a store of another model (or d_model) with one line."""
    if info["model"] and info["model"] != model:
        raise UserError(
            f"the store holds activations of {info['model']!r}, not --model {model!r}; "
            f"pass --model {info['model']} or capture a store of {model}"
        )
    fp = info.get("fingerprint") or {}
    if d_model is not None and fp.get("d_model") not in (None, d_model):
        raise UserError(
            f"the store's d_model is {fp['d_model']}, the model's is {d_model}; "
            "it was captured from another model"
        )


__all__ = [
    "ActivationSource",
    "Batch",
    "StoreSource",
    "StreamSource",
    "TensorSource",
    "buffer_batches_for",
    "check_store_matches",
    "iter_contexts",
    "local_batch_size",
    "resolve_store_hooks",
    "store_info",
]
