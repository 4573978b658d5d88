"""How much memory an attribution graph needs, and the plan that makes it fit.

A graph build holds, at its peak (names as in `MemoryEstimate`):

- weights:       the model and the transcoders (already loaded when the graph starts);
- frozen:        the replacement model's state on the prompt: every layer's attention pattern
                 [heads, pos, pos], the captured MLP inputs/outputs, each layer's dense feature
                 activations [pos, d_sae] and raw-unit encoder copy [d_model, d_sae];
- forward:       the one forward kept for the backward passes (saved tensors ~24 d_model-sized
                 per layer and token; the frozen attention patterns it saves are the cached ones
                 above, not copies) and the active features' index, activation and padded layout
                 (what a feature writes, activation x decoder row, is recomputed in each backward
                 from those, not stored: that was n_active x d_model floats, 2.1 GB at 1,024
                 tokens on SmolLM2);
- edges:         the rows of the adjacency being filled (one per visited feature and logit):
                 either every active feature's edge (dense, 4 bytes each) or the `row_edges`
                 largest per row (value + index, 8 bytes each), plus dense error/token columns;
- backward:      one batch of `batch_size` vmapped backward passes: the injected and returned
                 gradients of every layer ([batch, pos, d_model] each, ~2 per layer), the
                 [batch, n_active] block of edges before it is stored, and the decoder rows and
                 gradients gathered to compute it (GATHER_FLOATS at a time);
- prune:         the graph's adjacency as its non-zero rows [visited features + logits, n_nodes]
                 (and the folded part of their error columns), the bool edge-mask rows, and the
                 copies of those rows that pruning and scoring make (prune.py): nothing
                 n_nodes x n_nodes (that was 8.8 GB at 1,024 tokens).

`plan_memory` picks the largest batch and edge storage that fit under a limit, or refuses. A
lower batch gives the same graph (the next features are still chosen as many at a time as
asked, then filled in smaller backward chunks), fewer stored edges an approximate one.
The test (tests/test_graph_memory.py) checks the estimate against the measured peak RSS on a
tiny model at several prompt lengths.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from ..errors import UserError

if TYPE_CHECKING:
    from ..models import LanguageModel

GB = 2**30
# Saved tensors of the kept forward per layer and token, in d_model-sized vectors (norm inputs,
# q/k/v, attention output, residuals, MLP in/out, the write leaves): an upper count for the
# llama/gpt2 blocks lmscope supports.
FORWARD_VECTORS = 24
# Copies of the adjacency's non-zero rows ([visited features + logits, n_nodes]) alive at once
# while pruning and scoring (prune.py works on those rows only): the pruned copy, its
# normalization, circuit_tracer_scores' own rows and their pruned copy.
PRUNE_ROW_COPIES = 4
# Entries of |edges| one influence update takes at once (graph.py; ~16 bytes each in temporaries).
CHUNK_ENTRIES = 2**24
# Floats of decoder rows (and of gradients) gathered at once to compute a batch's feature edges
# (graph.py; ~32 MB each, three such temporaries alive).
GATHER_FLOATS = 2**23
# Bytes per active feature outside the edges: (layer, pos, feature) int64, activation, its error
# bucket and row index, and the padded write layout (feature, activation, column; ~1.3x padding).
ACTIVE_BYTES = 96


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes by part of a graph build (see the module docstring), and the plan they assume."""

    weights: int
    frozen: int
    forward: int
    edges: int
    backward: int
    prune: int
    batch_size: int
    row_edges: int | None
    """Feature edges kept per row (None: all of them, dense)."""
    n_pos: int
    n_active: int

    @property
    def total(self) -> int:
        return self.weights + self.new

    @property
    def new(self) -> int:
        """What the graph adds on top of the loaded model and transcoders."""
        return self.frozen + self.forward + self.edges + self.backward + self.prune

    def describe(self) -> str:
        parts = ", ".join(
            f"{f.name} {getattr(self, f.name) / GB:.2f}"
            for f in fields(self)
            if f.name in ("weights", "frozen", "forward", "edges", "backward", "prune")
        )
        store = "all feature edges" if self.row_edges is None else f"{self.row_edges} per row"
        return (
            f"memory estimate for a {self.n_pos}-token graph ({self.n_active:,} active features, "
            f"backward batch {self.batch_size}, {store}): {self.total / GB:.2f} GB = {parts} GB"
        )


def available_bytes() -> int:
    """MemAvailable from /proc/meminfo (Linux), else the physical memory, else 16 GB."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 16 * GB


def default_limit_gb() -> float:
    """The default --max-memory-gb: 80% of the memory available now."""
    return 0.8 * available_bytes() / GB


def estimate_memory(
    lm: LanguageModel,
    n_pos: int,
    n_active: int,
    *,
    d_sae: int,
    dictionary_bytes: int = 0,
    batch_size: int = 64,
    max_feature_nodes: int = 4096,
    n_logits: int = 10,
    row_edges: int | None = None,
    write_targets: float = 1.0,
) -> MemoryEstimate:
    """Bytes each part of a graph build needs (see the module docstring for the parts).

    write_targets: MLP outputs a feature writes to (1 for a per-layer transcoder, (L + 1) / 2 on
    average for a CLT): the width of the decoder rows gathered to compute edges."""
    cfg = lm.model.config
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", 8)
    d, L = lm.d_model, lm.n_layers
    item = 4  # graph math is float32
    weights = sum(p.numel() * p.element_size() for p in lm.model.parameters()) + dictionary_bytes
    frozen = L * heads * n_pos * n_pos * item  # attention patterns
    frozen += (3 * L + 2) * n_pos * d * item  # captured mlp_in/out, errors, embeddings
    frozen += L * (n_pos * d_sae + d * d_sae) * item  # dense activations + encoder copy
    forward = L * n_pos * FORWARD_VECTORS * d * item
    forward += n_active * ACTIVE_BYTES  # index and layout; the writes are recomputed
    rows = min(max_feature_nodes, n_active) + n_logits
    n_err, n_tok = L * n_pos, n_pos
    dense = row_edges is None or row_edges >= n_active
    # dense: one float per edge; top edges: value + int32 column
    feat = rows * n_active * item if dense else rows * row_edges * 2 * item
    edges = feat + rows * (n_err + n_tok) * item * (1 if dense else 2)  # + dropped sums
    b = max(1, min(batch_size, rows))
    backward = (2 * L + 4) * b * n_pos * d * item + 3 * b * n_active * item
    width = n_active if dense else row_edges
    backward += min(CHUNK_ENTRIES, rows * width) * 16  # influence update: |edges| temporaries
    backward += rows * min(max_feature_nodes, n_active) * item  # and its [rows, features] block
    # gathered decoder rows [pos, k, width], gradients [b, pos, width] and products [pos, b, k]
    # of one layer (k: its features per position), at most GATHER_FLOATS each
    dec_width = int(write_targets * d)
    kp = -(-n_active // max(1, L * n_pos))
    backward += min(GATHER_FLOATS, n_pos * kp * dec_width) * item
    backward += min(GATHER_FLOATS, b * n_pos * dec_width) * item
    backward += min(GATHER_FLOATS, n_pos * b * kp) * item
    side = min(max_feature_nodes, n_active) + n_err + n_tok + n_logits
    # the graph's rows and their fold record, the bool edge-mask rows, pruning's row copies
    prune = rows * side * item + rows * n_err * item + 2 * rows * side
    prune += PRUNE_ROW_COPIES * rows * side * item
    return MemoryEstimate(
        weights,
        frozen,
        forward,
        edges,
        backward,
        prune,
        b,
        None if dense else row_edges,
        n_pos,
        n_active,
    )


def plan_memory(
    estimate: Callable[[int, int | None], MemoryEstimate],
    limit_bytes: float,
    *,
    batch_size: int,
    row_edges: int | None,
    fixed_batch: bool = False,
    fixed_edges: bool = False,
) -> MemoryEstimate:
    """The estimate with the largest batch and edge storage that fit under `limit_bytes`.

    `estimate(batch_size, row_edges)` is estimate_memory with the other arguments bound.
    Tries the requested plan, then halves the backward batch down to 16, then keeps fewer
    feature edges per row (powers of two down to 1,024), then halves the batch down to 1;
    UserError when even that does not fit. A part the user set (`fixed_batch`, `fixed_edges`)
    is not changed.
    """
    first = cur = estimate(batch_size, row_edges)
    if cur.total <= limit_bytes:
        return cur
    b, k = first.batch_size, first.row_edges
    tries: list[tuple[int, int | None]] = []
    while not fixed_batch and b > 16:
        b //= 2
        tries.append((b, k))
    k0 = first.n_active if k is None else k
    kk = 1 << max(10, (k0 - 1).bit_length() - 1) if k0 > 1 else 1024
    while not fixed_edges and 1024 <= kk < k0:
        k = kk
        tries.append((b, k))
        kk //= 2
    while not fixed_batch and b > 1:
        b //= 2
        tries.append((b, k))
    for b_, k_ in tries:
        cur = estimate(b_, k_)
        if cur.total <= limit_bytes:
            return cur
    raise UserError(
        f"a graph of this {first.n_pos}-token prompt needs about {cur.total / GB:.1f} GB even "
        f"with backward batch {cur.batch_size} and "
        f"{'all' if cur.row_edges is None else cur.row_edges} feature edges per row (limit "
        f"--max-memory-gb {limit_bytes / GB:.3g}); shorten the prompt, lower "
        "--max-feature-nodes, or raise the limit. " + cur.describe()
    )


__all__ = [
    "MemoryEstimate",
    "available_bytes",
    "default_limit_gb",
    "estimate_memory",
    "plan_memory",
]
