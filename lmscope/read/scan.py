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

Brain map: for each dictionary and token, the sum of the token's active feature activations
(the dictionary's "activity"), divided by that dictionary's largest activity over the
prompt's non-BOS tokens, so each row spans [0, 1] and rows of dictionaries with different
scales are comparable by shape. BOS is left out of the normalization because its residual is
an outlier in most models (huge norm, "attention sink", Xiao et al. 2023) and would flatten
every other column; its cell is clipped to 1.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
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
        """(tokens [1, pos], {hook: dense feature activations [pos, d_sae]}) for one prompt.

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
        return job.tokens, job.result

    @torch.no_grad()
    def _encode_tokens(self, toks: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Prompts [1, pos_i] -> per prompt {hook: [pos_i, d_sae]}, one right-padded forward."""
        from ..models.runtime import run

        lengths = [t.shape[1] for t in toks]
        pad = self.lm.bos_token_id if self.lm.bos_token_id is not None else 0
        batch = torch.full((len(toks), max(lengths)), pad, dtype=torch.long, device=toks[0].device)
        for i, t in enumerate(toks):
            batch[i, : lengths[i]] = t[0]  # [batch, pos]
        acts = run(self.lm, batch, capture=self.hooks).acts  # {hook: [batch, pos, d]}
        outs = []
        for i, n in enumerate(lengths):
            feats = {}
            for hook, d in self.dicts.items():
                x = acts[hook][i, :n].to(d.W_dec.dtype)  # [pos, d_in]
                feats[hook] = d.encode(x).float()  # [pos, d_sae]
            outs.append(feats)
        return outs

    def scan(self, prompt: str, *, top_k: int = 5) -> ScanResult:
        """Scan one prompt: top_k features per dictionary and token, and the brain map."""
        if not 1 <= top_k <= 100:
            raise UserError(f"top_k must be between 1 and 100, got {top_k}")
        tokens, feats = self.encode(prompt)
        ids = tokens[0].tolist()
        has_bos = self.lm.bos_token_id is not None and ids[0] == self.lm.bos_token_id
        top, brain, activity, n_active = {}, [], [], []
        labels: dict[tuple[str, int], str | None] = {}  # one DB lookup per distinct feature
        for hook in self.hooks:
            f = feats[hook]  # [pos, d_sae]
            k = min(top_k, f.shape[1])
            vals, idx = f.topk(k, dim=1)  # [pos, k]
            rows = []
            for p in range(f.shape[0]):
                hits = []
                for v, i in zip(vals[p].tolist(), idx[p].tolist()):
                    if v > 0:
                        if (hook, i) not in labels:
                            labels[(hook, i)] = self.label(hook, i)
                        hits.append(FeatureHit(hook, i, v, labels[(hook, i)]))
                rows.append(hits)
            top[hook] = rows
            pos_act = f.clamp(min=0).sum(dim=1)  # [pos]
            activity.append(pos_act.tolist())
            n_active.append((f > 0).sum(dim=1).tolist())
            brain.append(_normalize(pos_act, skip_first=has_bos and f.shape[0] > 1))
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
        )


class _Job:
    """One prompt waiting for the model (see Reader.encode)."""

    def __init__(self, tokens: torch.Tensor) -> None:
        self.tokens = tokens  # [1, pos]
        self.result: dict[str, torch.Tensor] | None = None
        self.error: BaseException | None = None
        self.done = False


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


__all__ = ["FeatureHit", "Reader", "ScanResult", "scan"]
