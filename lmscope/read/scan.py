"""The one reading engine: run a prompt through the model and every dictionary of an atlas.

    reader = Reader.open("atlas/")                 # model + dictionaries + labels, loaded once
    res = reader.scan("The horse galloped across the field", top_k=5)
    res.tokens                                     # ['<bos>', 'The', ' horse', ...]
    res.top["blocks.15.resid_post"][3]             # [FeatureHit(hook, feature, act, label), ...]
    at token 3
    res.brain                                      # [n_dicts][pos] activity in [0, 1] (the brain
    map)

The CLI (`lmscope scan`), the JSON API and the web viewer all call `Reader.scan`; there is
no second implementation of "which features fire". One forward pass captures every
dictionary's hook point (the forward stops after the deepest one, models.runtime.run), then
each dictionary encodes its activations.

Brain map (rows = dictionaries in model order, i.e. every layer of a whole-model run; columns =
tokens). Cell measure: the token's *activity* at that dictionary, the sum of its active feature
activations. Raw activity is not comparable across layers (SmolLM2-135M's per-layer means span
23 to 1,227), so each cell is divided by the layer's mean activity per token over the atlas
corpus (`layer_ref`: the sum over features of their profiled mean activation, which the atlas
DB already stores; mean_act = sum of activations / profiled tokens) and shown on a log scale:
`brain = clip(0.5 + log2(activity / layer_ref) / 4, 0, 1)` (0 where nothing fires), so the middle
of the colour scale is a typical token of that layer and each quarter of it a factor of 2 (1/4 x
the mean or less -> 0, 1/2 -> 0.25, 1 -> 0.5, 2 -> 0.75, 4 x the mean or more -> 1).
`brain_norm` says which normalization a result used: "corpus_mean", or "prompt_max" when the
atlas has no DB profile yet (then each row is divided by its largest non-BOS activity on this
prompt, which shows shape, not level). BOS is
left out of the prompt_max normalization because its residual is an outlier in most models (huge
norm, "attention sink", Xiao et al. 2023); its cell is clipped to 1.

Fit per layer (`explained`): 1 - FVU of the dictionary's output on this prompt's tokens (BOS
excluded): 1 - sum_t ||y_t - y_hat_t||^2 / sum_t ||y_t - mean_t(y)||^2, where y is the activation
the dictionary rebuilds (a transcoder's output hook, e.g. blocks.L.mlp_out; an SAE's own hook)
and y_hat its output (skip included). None with fewer than 2 non-BOS tokens. A low value marks a
layer where the "MRI is blurry": the features seen there explain little of what that layer does.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..dictionaries.feature_id import format_feature_id
from ..errors import UserError

if TYPE_CHECKING:
    from ..dictionaries import SparseDictionary
    from ..models import LanguageModel

SCHEMA_VERSION = 1
DEFAULT_MAX_TOKENS = 256

LabelFn = Callable[[str, int], "str | None"]


@dataclass(frozen=True)
class FeatureHit:
    """One active feature at one token."""

    hook: str
    feature: int
    act: float
    label: str | None = None

    @property
    def id(self) -> str:
        return format_feature_id(self.hook, self.feature)

    def display(self) -> str:
        """The label, or the feature's id marked unlabeled (explanations may not exist yet)."""
        return self.label if self.label else f"{self.id} (unlabeled)"

    def to_dict(self) -> dict:
        return {**asdict(self), "id": self.id}


@dataclass
class ScanResult:
    """Everything a scan shows: tokens, top features per dictionary and token, the brain map."""

    prompt: str
    model: str
    tokens: list[str]
    token_ids: list[int]
    hooks: list[str]
    """Dictionaries scanned, in model order (rows of the brain map)."""
    top: dict[str, list[list[FeatureHit]]]
    """hook -> per token, the top features by activation (only active ones)."""
    brain: list[list[float]]
    """[n_hooks][pos] activity normalized per dictionary to [0, 1]."""
    activity: list[list[float]]
    """[n_hooks][pos] raw activity: sum of the token's active feature activations."""
    n_active: list[list[int]]
    """[n_hooks][pos] number of active features."""
    has_bos: bool = True
    schema_version: int = SCHEMA_VERSION
    brain_norm: str = "prompt_max"
    """How `brain` is normalized: "corpus_mean" (log scale around the layer's corpus mean) or
    "prompt_max" (the row's largest non-BOS activity on this prompt; atlases without a DB)."""
    layer_ref: list[float | None] = field(default_factory=list)
    """[n_hooks] the layer's mean activity per token over the atlas corpus (None: not profiled)."""
    relative: list[list[float | None]] = field(default_factory=list)
    """[n_hooks][pos] activity / layer_ref (None where the layer has no reference)."""
    explained: list[float | None] = field(default_factory=list)
    """[n_hooks] 1 - FVU of the dictionary's output on this prompt's non-BOS tokens."""
    out_hooks: list[str] = field(default_factory=list)
    """[n_hooks] the activation each dictionary rebuilds (its output hook; an SAE's own hook)."""

    def token_features(self, pos: int, limit: int | None = None) -> list[FeatureHit]:
        """All dictionaries' top features at token `pos`, strongest first."""
        hits = [h for hook in self.hooks for h in self.top[hook][pos]]
        hits.sort(key=lambda h: -h.act)
        return hits[:limit] if limit else hits

    def to_dict(self) -> dict:
        return {
            "schema_version": self.schema_version,
            "prompt": self.prompt,
            "model": self.model,
            "tokens": self.tokens,
            "token_ids": self.token_ids,
            "hooks": self.hooks,
            "has_bos": self.has_bos,
            "brain": self.brain,
            "activity": self.activity,
            "n_active": self.n_active,
            "brain_norm": self.brain_norm,
            "layer_ref": self.layer_ref,
            "relative": self.relative,
            "explained": self.explained,
            "out_hooks": self.out_hooks,
            "top": {
                hook: [[h.to_dict() for h in row] for row in rows]
                for hook, rows in self.top.items()
            },
        }


# --- the engine ----------------------------------------------------------------------------
class Reader:
    """A model, its atlas dictionaries and their labels, loaded once; scans many prompts.

    Thread-safe: the model run registers hooks on shared modules, so runs are serialized by a
    lock (the web server calls `scan` from several threads); prompts waiting together run as
    one batch (see `encode`).
    """

    def __init__(
        self,
        lm: LanguageModel,
        dicts: dict[str, SparseDictionary],
        *,
        labels: LabelFn | None = None,
        atlas: str | Path | None = None,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        db=None,
    ) -> None:
        if not dicts:
            raise UserError("no dictionaries to scan with; train some with `lmscope train`")
        self.lm = lm
        order = {n: i for i, n in enumerate(lm.hooks.names())}
        self.hooks = sorted(dicts, key=lambda h: (order.get(h, len(order)), h))
        self.dicts = {h: dicts[h] for h in self.hooks}
        # What each dictionary rebuilds: a transcoder's output hook, an SAE's own hook. Captured
        # in the same forward pass for the per-layer fit.
        self.out_hooks = {
            h: (getattr(d.cfg, "out_hook_name", None) or h) for h, d in self.dicts.items()
        }
        self._capture = list(dict.fromkeys([*self.hooks, *self.out_hooks.values()]))
        self._layer_ref: dict[str, float] | None = None
        self.labels = labels
        self.atlas = Path(atlas) if atlas is not None else None
        self.max_tokens = max_tokens
        self.db = db
        self.max_batch = 8
        """Most prompts run in one forward when requests arrive together."""
        self._lock = threading.Lock()  # held while the model runs
        self._queue_lock = threading.Lock()
        self._queue: list[_Job] = []

    @classmethod
    def open(
        cls,
        atlas: str | Path,
        *,
        model: str | None = None,
        device: str = "cpu",
        hooks: str | None = None,
        max_tokens: int = DEFAULT_MAX_TOKENS,
    ) -> Reader:
        """Load the atlas's model, its dictionaries (optionally only `hooks`: names or globs) and
        its DB (labels, profiles) when it has one."""
        from ..atlas.db import open_atlas_db
        from ..dictionaries.folder import open_dictionaries

        folder, lm, dicts = open_dictionaries(atlas, hooks=hooks, model=model, device=device)
        db = open_atlas_db(folder.layout)
        return cls(
            lm,
            dicts,
            labels=db.label if db is not None else None,
            atlas=folder.root,
            max_tokens=max_tokens,
            db=db,
        )

    def label(self, hook: str, feature: int) -> str | None:
        if self.labels is None:
            return None
        try:
            return self.labels(hook, feature) or None
        except UserError:  # a dictionary the DB has not profiled yet
            return None

    def tokenize(self, prompt: str) -> torch.Tensor:
        """[1, pos] token ids with BOS; UserError when empty or longer than max_tokens."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise UserError("the prompt is empty; type some text to scan")
        # Cheap guard before tokenizing: no tokenizer makes fewer than 1 token per 64 chars.
        if len(prompt) > 64 * self.max_tokens:
            raise UserError(
                f"the prompt is too long ({len(prompt)} characters); "
                f"at most {self.max_tokens} tokens are scanned"
            )
        tokens = self.lm.to_tokens(prompt)  # [1, pos]
        if tokens.shape[1] > self.max_tokens:
            raise UserError(
                f"the prompt is {tokens.shape[1]} tokens long; at most {self.max_tokens} "
                f"are scanned (shorten it or raise --max-tokens)"
            )
        return tokens

    def encode(self, prompt: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(tokens [1, pos], {hook: dense feature activations [pos, d_sae]}) for one prompt."""
        tokens, feats, _ = self.encode_full(prompt)
        return tokens, feats

    def encode_full(
        self, prompt: str
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, float | None]]:
        """`encode` plus each dictionary's fit on the prompt ({hook: 1 - FVU}, see module doc).

        Concurrent callers are batched: the thread that gets the model runs every prompt waiting
        at that moment in one forward pass (right-padded; causal attention means padding after a
        prompt cannot change its activations). One batch of 4 x 64 tokens costs ~3/4 of four
        single passes on a CPU, and nobody waits behind a queue of single passes.
        """
        job = _Job(self.tokenize(prompt))
        with self._queue_lock:
            self._queue.append(job)
        while not job.done:
            with self._lock:
                if job.done:
                    break
                with self._queue_lock:
                    batch = self._queue[: self.max_batch]
                    del self._queue[: len(batch)]
                try:
                    outs = self._encode_tokens([j.tokens for j in batch])
                    for j, out in zip(batch, outs):
                        j.result = out
                except BaseException as e:  # give every waiter the error, not a hang
                    for j in batch:
                        j.error = e
                finally:
                    for j in batch:
                        j.done = True
        if job.error is not None:
            raise job.error
        return job.tokens, job.result[0], job.result[1]

    @torch.no_grad()
    def _encode_tokens(
        self, toks: list[torch.Tensor]
    ) -> list[tuple[dict[str, torch.Tensor], dict[str, float | None]]]:
        """Prompts [1, pos_i] -> per prompt ({hook: [pos_i, d_sae]}, {hook: fit}), one
        right-padded forward capturing every dictionary's input and output hook."""
        from ..models.runtime import run

        lengths = [t.shape[1] for t in toks]
        pad = self.lm.bos_token_id if self.lm.bos_token_id is not None else 0
        batch = torch.full((len(toks), max(lengths)), pad, dtype=torch.long, device=toks[0].device)
        for i, t in enumerate(toks):
            batch[i, : lengths[i]] = t[0]  # [batch, pos]
        acts = run(self.lm, batch, capture=self._capture).acts  # {hook: [batch, pos, d]}
        outs = []
        for i, n in enumerate(lengths):
            first = 1 if self._starts_with_bos(toks[i]) else 0
            feats, fit = {}, {}
            for hook, d in self.dicts.items():
                x = acts[hook][i, :n].to(d.W_dec.dtype)  # [pos, d_in]
                a = d.encode(x)  # [pos, d_sae]
                feats[hook] = a.float()
                y = acts[self.out_hooks[hook]][i, first:n]  # [pos - first, d_out]
                fit[hook] = explained_fraction(y, d.decode(a[first:], x[first:]))
            outs.append((feats, fit))
        return outs

    def _starts_with_bos(self, tokens: torch.Tensor) -> bool:
        """tokens [1, pos]: whether position 0 is BOS (left out of every per-prompt statistic)."""
        bos = self.lm.bos_token_id
        return bos is not None and tokens.shape[1] > 1 and int(tokens[0, 0]) == bos

    def layer_ref(self) -> dict[str, float]:
        """{hook: mean activity per token over the atlas corpus} for the profiled dictionaries
        (sum over features of the DB's mean_act); empty without a DB. Read once, then cached."""
        if self._layer_ref is None:
            ref = {}
            if self.db is not None:
                try:
                    ref = {h: v for h, v in self.db.activity_means().items() if v and v > 0}
                except UserError:  # a DB without profiles yet
                    ref = {}
            self._layer_ref = ref
        return self._layer_ref

    def labels_for(self, wanted: dict[str, set[int]]) -> dict[tuple[str, int], str | None]:
        """Labels of many features at once: one DB query per dictionary (the scan of 20 tokens
        over 30 layers shows ~2,000 distinct features), or the label function per feature."""
        out: dict[tuple[str, int], str | None] = {}
        bulk = getattr(self.db, "labels", None) if self.db is not None else None
        for hook, idxs in wanted.items():
            got = None
            if bulk is not None and self.labels == getattr(self.db, "label", None):
                try:
                    got = bulk(hook, sorted(idxs))
                except UserError:  # a dictionary the DB has not profiled yet
                    got = {}
            for i in idxs:
                out[(hook, i)] = (got.get(i) or None) if got is not None else self.label(hook, i)
        return out

    def scan(self, prompt: str, *, top_k: int = 5) -> ScanResult:
        """Scan one prompt: top_k features per dictionary and token, and the brain map."""
        if not 1 <= top_k <= 100:
            raise UserError(f"top_k must be between 1 and 100, got {top_k}")
        tokens, feats, fit = self.encode_full(prompt)
        ids = tokens[0].tolist()
        has_bos = self._starts_with_bos(tokens) or (
            len(ids) == 1 and ids[0] == self.lm.bos_token_id
        )
        refs = self.layer_ref()
        use_ref = bool(refs) and all(h in refs for h in self.hooks)
        picks: dict[str, tuple[list[list[float]], list[list[int]]]] = {}
        wanted: dict[str, set[int]] = {}
        brain, activity, n_active, relative, layer_ref = [], [], [], [], []
        for hook in self.hooks:
            f = feats[hook]  # [pos, d_sae]
            k = min(top_k, f.shape[1])
            vals, idx = f.topk(k, dim=1)  # [pos, k]
            vals, idx = vals.tolist(), idx.tolist()
            picks[hook] = (vals, idx)
            wanted[hook] = {i for vs, ix in zip(vals, idx) for v, i in zip(vs, ix) if v > 0}
            pos_act = f.clamp(min=0).sum(dim=1)  # [pos]
            activity.append(pos_act.tolist())
            n_active.append((f > 0).sum(dim=1).tolist())
            ref = refs.get(hook)
            layer_ref.append(ref)
            relative.append((pos_act / ref).tolist() if ref else [None] * len(ids))
            if use_ref:
                brain.append(log_scale(pos_act / ref))
            else:
                brain.append(_normalize(pos_act, skip_first=has_bos and f.shape[0] > 1))
        labels = self.labels_for(wanted)  # one bulk lookup, not one query per feature
        top = {}
        for hook, (vals, idx) in picks.items():
            top[hook] = [
                [FeatureHit(hook, i, v, labels[(hook, i)]) for v, i in zip(vs, ix) if v > 0]
                for vs, ix in zip(vals, idx)
            ]
        return ScanResult(
            prompt=prompt,
            model=self.lm.name,
            tokens=self.lm.to_str_tokens(ids),
            token_ids=ids,
            hooks=list(self.hooks),
            top=top,
            brain=brain,
            activity=activity,
            n_active=n_active,
            has_bos=has_bos,
            brain_norm="corpus_mean" if use_ref else "prompt_max",
            layer_ref=layer_ref,
            relative=relative,
            explained=[fit[h] for h in self.hooks],
            out_hooks=[self.out_hooks[h] for h in self.hooks],
        )


class _Job:
    """One prompt waiting for the model (see Reader.encode)."""

    def __init__(self, tokens: torch.Tensor) -> None:
        self.tokens = tokens  # [1, pos]
        self.result: dict[str, torch.Tensor] | None = None
        self.error: BaseException | None = None
        self.done = False


def log_scale(relative: torch.Tensor) -> list[float]:
    """activity / layer mean [pos] -> [0, 1]: 0.5 + log2(r) / 4, clipped; 0 where r == 0.

    The middle of the scale is the layer's typical (mean) token; 1/4 x the mean or less is 0,
    4 x the mean or more is 1. Log, not linear, because activity ratios span orders of
    magnitude (BOS and massive-activation tokens) while most tokens sit within 4x of the mean.
    """
    r = relative.double()
    v = (0.5 + torch.log2(r.clamp(min=1e-30)) / 4).clamp(0.0, 1.0)
    return torch.where(r > 0, v, torch.zeros_like(v)).tolist()


def explained_fraction(y: torch.Tensor, y_hat: torch.Tensor) -> float | None:
    """1 - FVU = 1 - sum ||y - y_hat||^2 / sum ||y - mean(y)||^2 over rows [n, d] (float64).

    None with fewer than 2 rows or no variance (the fraction is undefined there)."""
    if y.shape[0] < 2:
        return None
    y, y_hat = y.double(), y_hat.double()
    var = float(((y - y.mean(0)) ** 2).sum())
    if var <= 0:
        return None
    return 1.0 - float(((y - y_hat) ** 2).sum()) / var


def _normalize(activity: torch.Tensor, *, skip_first: bool) -> list[float]:
    """activity [pos] -> [0, 1] by the max over positions (BOS excluded when skip_first)."""
    ref = activity[1:] if skip_first else activity
    peak = float(ref.max()) if ref.numel() else 0.0
    if peak <= 0:
        return [0.0] * activity.numel()
    return (activity / peak).clamp(max=1.0).tolist()


# --- convenience -------------------------------------------------------------------------
def scan(atlas: str | Path, prompt: str, *, top_k: int = 5, **open_kw) -> ScanResult:
    """One-shot scan (loads the atlas each call; keep a Reader to scan many prompts)."""
    return Reader.open(atlas, **open_kw).scan(prompt, top_k=top_k)


__all__ = ["FeatureHit", "Reader", "ScanResult", "explained_fraction", "log_scale", "scan"]
