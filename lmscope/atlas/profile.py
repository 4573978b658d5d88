"""The one streaming pass: bounded per-feature accumulators updated from each batch of activations.

For every feature of one dictionary, `ProfileState` keeps, in memory O(features x K) and never
O(features x tokens):

- exact counts: valid tokens seen, firing tokens, sum of activations (float64), max activation;
- a histogram of nonzero activations on FIXED log2-spaced bins (HIST_PER_OCTAVE bins per octave
  over [2^LOG2_LO, 2^LOG2_HI); values outside are clamped into the end bins). Fixed bins need no
  re-binning when the running max grows and add exactly across ranks;
- the top-K activating tokens and that feature's activation on the `window` tokens around each
  (3/4 before the peak); the window's TOKENS are not kept here: the build keeps each context's
  tokens once and the DB cuts every window from them (schema 2);
- quantile samples: activations fall into fixed log2 buckets (one per octave, BUCKET_LO..); each
  (feature, bucket) keeps the `samples` items with the SMALLEST hash key, a bottom-k sample
  (Cohen & Kaplan 2007): uniform without replacement inside the bucket, single pass, bounded,
  and mergeable exactly because the key is a deterministic function of (seed, global token id,
  feature) - a 1-process and an N-process build keep the very same samples. SAEDashboard's
  equal-width intervals of [0, max] need the max first (its second pass); octave buckets are
  the one-pass equivalent and the dashboard shows them as "lower activation ranges";
- non-activating contexts: tokens picked by a hash of their id (about 1 in NEG_RATE) whose whole
  window has the feature at zero; per feature the `negatives` with the smallest keys (for
  explanation scoring, where a scorer needs contexts a feature ignores).

Every update is vectorized over the batch's nonzero pairs (sort-based top-k and bottom-k merges);
there is no Python loop over tokens or features. Global token ids (context index x ctx_len +
position) make everything independent of batch composition and rank split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import Tensor

LOG2_LO, LOG2_HI, HIST_PER_OCTAVE = -10, 10, 4
N_HIST = (LOG2_HI - LOG2_LO) * HIST_PER_OCTAVE
BUCKET_LO, N_BUCKETS = -6, 12  # reservoir buckets: octaves [2^-6, 2^6), clamped at both ends
NEG_RATE = 64
EMPTY_KEY = torch.iinfo(torch.int64).max
_M62 = (1 << 62) - 1


def hash_ids(x: Tensor, salt: int) -> Tensor:
    """Deterministic 62-bit hash of int64 ids (splitmix64-style mixing, kept non-negative)."""
    x = (x * 0x9E3779B1 + (salt & _M62) * 0x7F4A7C15 + 0x632BE59B) & _M62
    x = ((x ^ (x >> 30)) * 0xBF58476D) & _M62
    x = ((x ^ (x >> 27)) * 0x94D049BB) & _M62
    return x ^ (x >> 31)


def pair_key(token_ids: Tensor, features: Tensor, seed: int) -> Tensor:
    """Sampling key of (token, feature): same value on every rank, batch and resume."""
    return hash_ids(hash_ids(token_ids, seed) ^ (features * 0x2545F491), seed + 1)


def window_offsets(window: int) -> Tensor:
    """Positions of a window relative to its peak: 3/4 of the tokens before it."""
    after = window // 4
    return torch.arange(-(window - 1 - after), after + 1)


def peak_index(window: int) -> int:
    return window - 1 - window // 4


@dataclass
class ProfileState:
    """Accumulators of one dictionary (all tensors; `empty` builds them, `update` fills them)."""

    n_tokens: Tensor  # [] int64 valid tokens seen
    fires: Tensor  # [F] int64 tokens with activation > 0
    act_sum: Tensor  # [F] float64
    max_act: Tensor  # [F] float32
    hist: Tensor  # [F, N_HIST] int64 counts of nonzero activations per log2 bin
    top_val: Tensor  # [F, K] float32 (-inf = empty), sorted descending
    top_id: Tensor  # [F, K] int64 global token id (-1 = empty)
    top_act: Tensor  # [F, K, W] float32 the feature's activation on each window token
    res_key: Tensor  # [F*N_BUCKETS, S] int64 (EMPTY_KEY = empty), ascending
    res_val: Tensor  # [F*N_BUCKETS, S] float32
    res_id: Tensor  # [F*N_BUCKETS, S] int64
    res_act: Tensor  # [F*N_BUCKETS, S, W] float32
    neg_key: Tensor  # [F, M] int64
    neg_id: Tensor  # [F, M] int64

    @classmethod
    def empty(
        cls, d_sae: int, *, top_k: int, window: int, samples: int, negatives: int
    ) -> ProfileState:
        F, K, W, S, M, G = d_sae, top_k, window, samples, negatives, d_sae * N_BUCKETS
        i64 = dict(dtype=torch.int64)
        return cls(
            n_tokens=torch.zeros((), **i64),
            fires=torch.zeros(F, **i64),
            act_sum=torch.zeros(F, dtype=torch.float64),
            max_act=torch.zeros(F),
            hist=torch.zeros(F, N_HIST, **i64),
            top_val=torch.full((F, K), -math.inf),
            top_id=torch.full((F, K), -1, **i64),
            top_act=torch.zeros(F, K, W),
            res_key=torch.full((G, S), EMPTY_KEY, **i64),
            res_val=torch.zeros(G, S),
            res_id=torch.full((G, S), -1, **i64),
            res_act=torch.zeros(G, S, W),
            neg_key=torch.full((F, M), EMPTY_KEY, **i64),
            neg_id=torch.full((F, M), -1, **i64),
        )

    @property
    def d_sae(self) -> int:
        return self.fires.shape[0]

    @property
    def window(self) -> int:
        return self.top_act.shape[2]

    def tensors(self) -> dict[str, Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())


def _bucket_of(vals: Tensor) -> Tensor:
    return (torch.floor(torch.log2(vals)) - BUCKET_LO).clamp(0, N_BUCKETS - 1).long()


def _hist_bin(vals: Tensor) -> Tensor:
    return (torch.floor((torch.log2(vals) - LOG2_LO) * HIST_PER_OCTAVE)).clamp(0, N_HIST - 1).long()


def _top_merge(val: Tensor, ids: Tensor, k: int) -> Tensor:
    """Indices [F, k] of the k best per row: activation descending, ties by smaller token id."""
    order = ids.masked_fill(ids < 0, EMPTY_KEY).argsort(dim=1, stable=True)
    v = val.gather(1, order)
    order2 = v.argsort(dim=1, descending=True, stable=True)
    return order.gather(1, order2)[:, :k]


def _bottom_k_groups(group: Tensor, key: Tensor, n_groups: int, k: int):
    """For items (group, key): keep the k smallest keys per group. Returns (kept item idx, slot)."""
    o1 = key.argsort(stable=True)
    o2 = group[o1].argsort(stable=True)
    order = o1[o2]
    g = group[order]
    counts = torch.bincount(g, minlength=n_groups)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(g.numel()) - starts[g]
    keep = rank < k
    return order[keep], g[keep], rank[keep]


def _rank_in_group(group: Tensor, n_groups: int) -> Tensor:
    """For items already sorted by group: each item's rank inside its group."""
    counts = torch.bincount(group, minlength=n_groups)
    starts = torch.cumsum(counts, 0) - counts
    return torch.arange(group.numel()) - starts[group]


@torch.no_grad()
def update(
    state: ProfileState,
    acts: Tensor,
    tokens: Tensor,
    valid: Tensor,
    token_ids: Tensor,
    *,
    seed: int = 0,
) -> None:
    """Fold one batch into `state`.

    acts [B, P, F] feature activations; tokens [B, P] token ids (not read: windows keep acts
    only); valid [B, P] bool (positions that
    count: not BOS/special); token_ids [B, P] int64 global ids (context index x ctx_len + pos).

    Sparse first: the batch's nonzero (token, feature) pairs are extracted once and every
    accumulator works on them (a sparse dictionary has ~k of F features on per token), so the
    dense [tokens, features] matrix is read twice, never sorted or copied. The reservoir windows
    are written in place into the slots their items take (slots are unordered; `canonical` and
    the DB writer order them by key): a batch copies only the windows that enter.
    """
    B, P, F = acts.shape
    N = B * P
    K, W = state.top_val.shape[1], state.window
    S, M = state.res_key.shape[1], state.neg_key.shape[1]
    flat = acts.reshape(N, F)
    if flat.dtype != torch.float32:
        flat = flat.float()
    vflat = valid.reshape(N)
    ids_flat = token_ids.reshape(-1)  # [N]
    offs = window_offsets(W)  # [W]

    def windows(n: Tensor, feat: Tensor) -> Tensor:
        """The feature's acts [..., W] (0 outside the context and at invalid positions) around
        flat token index n (the window's tokens are cut from the stored context later)."""
        pos = n % P
        p = pos[..., None] + offs  # [..., W]
        inside = (p >= 0) & (p < P)
        src = (n - pos)[..., None] + p.clamp(0, P - 1)  # flat index of each window token
        return flat[src, feat[..., None].expand_as(src)] * (inside & vflat[src])

    # --- the batch's nonzero (token, feature) pairs --------------------------------------
    n_idx, f_idx = (flat > 0).nonzero(as_tuple=True)  # [nnz], by token then feature
    ok = vflat[n_idx]  # invalid positions never count
    n_idx, f_idx = n_idx[ok], f_idx[ok]
    vals = flat[n_idx, f_idx]  # [nnz]

    # --- exact counts -------------------------------------------------------------------
    state.n_tokens += valid.sum()
    state.fires += torch.bincount(f_idx, minlength=F)
    state.act_sum += torch.bincount(f_idx, weights=vals.double(), minlength=F)
    state.max_act.scatter_reduce_(0, f_idx, vals, "amax")
    state.hist.view(-1).add_(torch.bincount(f_idx * N_HIST + _hist_bin(vals), minlength=F * N_HIST))

    # --- top-K: the batch's best K per feature (ties: smaller token id), merged with the running K
    # Only pairs reaching their feature's current K-th example can enter (>=: an equal value with
    # a smaller token id still may).
    c = (vals >= state.top_val[f_idx, -1]).nonzero(as_tuple=True)[0]
    if c.numel():
        cf, cv, cn = f_idx[c], vals[c], n_idx[c]
        o = ids_flat[cn].argsort(stable=True)
        o = o[cv[o].argsort(descending=True, stable=True)]
        o = o[cf[o].argsort(stable=True)]  # by feature, then value desc, then token id
        cf, cv, cn = cf[o], cv[o], cn[o]
        rank = _rank_in_group(cf, F)
        keep = rank < K
        cf, cv, cn, rank = cf[keep], cv[keep], cn[keep], rank[keep]
        rows, local = torch.unique(cf, return_inverse=True)  # [R]
        R = rows.numel()
        new_val = torch.full((R, K), -math.inf)
        new_id = torch.full((R, K), -1, dtype=torch.int64)
        new_n = torch.zeros((R, K), dtype=torch.int64)
        new_val[local, rank], new_id[local, rank], new_n[local, rank] = cv, ids_flat[cn], cn
        all_val = torch.cat([state.top_val.index_select(0, rows), new_val], 1)
        all_id = torch.cat([state.top_id.index_select(0, rows), new_id], 1)
        sel = _top_merge(all_val, all_id, K)  # [R, K]
        selw = sel.clamp(max=K - 1)[..., None].expand(R, K, W)
        act = state.top_act.index_select(0, rows).gather(1, selw)
        fresh = (sel >= K).nonzero(as_tuple=True)  # (row, slot) taken by this batch's tokens
        act[fresh] = windows(new_n[fresh[0], sel[fresh] - K], rows[fresh[0]])
        state.top_val.index_copy_(0, rows, all_val.gather(1, sel))
        state.top_id.index_copy_(0, rows, all_id.gather(1, sel))
        state.top_act.index_copy_(0, rows, act)

    # --- quantile reservoirs: bottom-S keys per (feature, octave bucket) -----------------
    if vals.numel() and S > 0:
        group = f_idx * N_BUCKETS + _bucket_of(vals)  # [nnz]
        key = pair_key(ids_flat[n_idx], f_idx, seed)
        # only items that can enter: below their reservoir's largest key (EMPTY_KEY = room left)
        cand = key < state.res_key.index_select(0, group).amax(1)
        rn, rf, rv, group, key = n_idx[cand], f_idx[cand], vals[cand], group[cand], key[cand]
    else:
        rn = torch.zeros(0, dtype=torch.int64)
    if rn.numel():
        touched, local = torch.unique(group, return_inverse=True)  # [T], [c]
        T = touched.numel()
        old_key = state.res_key.index_select(0, touched)  # [T, S]
        all_group = torch.cat([torch.arange(T).repeat_interleave(S), local])
        all_key = torch.cat([old_key.reshape(-1), key])
        kept, kg, _ = _bottom_k_groups(all_group, all_key, T, S)
        n_old = T * S
        kept_old = torch.zeros(n_old, dtype=torch.bool)
        kept_old[kept[kept < n_old]] = True
        free = ~kept_old.view(T, S)  # empty or evicted slots: the entering items take them
        free_rank = free.cumsum(1) - 1
        slot_of = torch.full((T, S), S, dtype=torch.int64)  # [group, j] -> its j-th free slot
        fg, fs = free.nonzero(as_tuple=True)
        slot_of[fg, free_rank[fg, fs]] = fs
        new = kept >= n_old
        j = kept[new] - n_old  # candidate index, kept in group order
        g = kg[new]
        slot = slot_of[g, _rank_in_group(g, T)]
        row = touched[g]
        state.res_key[row, slot] = key[j]
        state.res_val[row, slot] = rv[j]
        state.res_id[row, slot] = ids_flat[rn[j]]
        state.res_act[row, slot] = windows(rn[j], rf[j])

    # --- non-activating contexts ---------------------------------------------------------
    pick = vflat & (hash_ids(ids_flat, seed + 7) % NEG_RATE == 0)
    c_idx = pick.nonzero(as_tuple=True)[0]  # [C]
    if c_idx.numel() and M > 0:
        C = c_idx.numel()
        pos = c_idx % P
        p = pos[:, None] + offs  # [C, W]
        inside = (p >= 0) & (p < P)
        src = (c_idx - pos)[:, None] + p.clamp(0, P - 1)
        live = (inside & vflat[src]).unsqueeze(-1)
        wmax = (flat[src] * live).amax(1)  # [C, F]
        quiet = wmax.t() <= 0  # [F, C]
        feats = torch.arange(F)
        key = pair_key(ids_flat[c_idx][None, :].expand(F, C), feats[:, None], seed + 13)
        key = key.masked_fill(~quiet, EMPTY_KEY)
        # only features where a quiet pick beats the current M-th key change
        rows = (key.amin(1) < state.neg_key[:, -1]).nonzero(as_tuple=True)[0]
        if rows.numel():
            R = rows.numel()
            allk = torch.cat([state.neg_key.index_select(0, rows), key.index_select(0, rows)], 1)
            allid = torch.cat(
                [
                    state.neg_id.index_select(0, rows),
                    ids_flat[c_idx][None, :].expand(R, C).masked_fill(~quiet[rows], -1),
                ],
                1,
            )
            order = allk.argsort(dim=1, stable=True)[:, :M]  # [R, M]
            state.neg_key.index_copy_(0, rows, allk.gather(1, order))
            state.neg_id.index_copy_(0, rows, allid.gather(1, order))


@torch.no_grad()
def canonical(s: ProfileState) -> ProfileState:
    """The state with every accumulator in key order (top: activation desc, ties smaller id;
    reservoirs and negatives: key asc): equal streams give equal canonical states whatever the
    batching, rank split or slot history."""
    return merge(s, ProfileState.empty(
        s.d_sae, top_k=s.top_val.shape[1], window=s.window, samples=s.res_key.shape[1],
        negatives=s.neg_key.shape[1]))  # fmt: skip


@torch.no_grad()
def merge(a: ProfileState, b: ProfileState) -> ProfileState:
    """Exact merge of two states built on disjoint tokens (counts add, top-K / bottom-k merge)."""
    K, S, M, W = a.top_val.shape[1], a.res_key.shape[1], a.neg_key.shape[1], a.window
    F, G = a.d_sae, a.res_key.shape[0]
    sel = _top_merge(torch.cat([a.top_val, b.top_val], 1), torch.cat([a.top_id, b.top_id], 1), K)
    selw = sel[..., None].expand(F, K, W)
    r_sel = torch.cat([a.res_key, b.res_key], 1).argsort(dim=1, stable=True)[
        :, :S
    ]  # keys unique per group
    r_selw = r_sel[..., None].expand(G, S, W)
    n_sel = torch.cat([a.neg_key, b.neg_key], 1).argsort(dim=1, stable=True)[:, :M]
    cat1 = lambda x, y, s: torch.cat([x, y], 1).gather(1, s)  # noqa: E731
    return ProfileState(
        n_tokens=a.n_tokens + b.n_tokens,
        fires=a.fires + b.fires,
        act_sum=a.act_sum + b.act_sum,
        max_act=torch.maximum(a.max_act, b.max_act),
        hist=a.hist + b.hist,
        top_val=cat1(a.top_val, b.top_val, sel),
        top_id=cat1(a.top_id, b.top_id, sel),
        top_act=cat1(a.top_act, b.top_act, selw),
        res_key=cat1(a.res_key, b.res_key, r_sel),
        res_val=cat1(a.res_val, b.res_val, r_sel),
        res_id=cat1(a.res_id, b.res_id, r_sel),
        res_act=cat1(a.res_act, b.res_act, r_selw),
        neg_key=cat1(a.neg_key, b.neg_key, n_sel),
        neg_id=cat1(a.neg_id, b.neg_id, n_sel),
    )


def bucket_range(b: int) -> tuple[float, float]:
    """Activation range of reservoir bucket b (end buckets are open-ended)."""
    lo = 0.0 if b == 0 else 2.0 ** (BUCKET_LO + b)
    hi = math.inf if b == N_BUCKETS - 1 else 2.0 ** (BUCKET_LO + b + 1)
    return lo, hi
