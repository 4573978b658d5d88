"""Which features push an output token up or down: direct logit attribution and gradient x
activation.

For a dictionary at hook h (an SAE, or a transcoder whose decoder writes to its output
hook) and a feature f active at position p with activation a:

- Direct logit attribution (DLA): what the feature writes, a * W_dec[f], carried
  straight to the output through the final norm *with its scale frozen* at the value on
  the prompt (the norm is then linear), dotted with the unembedding column of the target
  (minus that of `vs` for a logit difference). Only the direct path: later layers that
  read the feature are ignored (nostalgebraist 2020; Elhage et al. 2021).
- Gradient x activation: a * dT/da with the feature spliced in and its dictionary's error
  term kept, x = decode(acts) + (x - decode(acts)), so the forward is exact; then
  dT/da_f = <W_dec[f], dT/dx> and one backward pass from the target T serves every
  feature of every dictionary (Marks et al. 2024, "Sparse Feature Circuits"). It is the
  first-order prediction of what ablating the feature (a -> 0, error kept) changes in T,
  which `verify.py` measures.

T is the logit of the target token at the last position, or the logit difference
target - vs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..dictionaries.dictmath import decoder_rows
from ..dictionaries.feature_id import format_feature_id
from ..errors import UserError, close_matches
from ..models.runtime import hooked
from .frozen import _NormLinearization

if TYPE_CHECKING:
    from ..dictionaries import SparseDictionary
    from ..models import LanguageModel


@dataclass
class FeatureAttribution:
    """One feature at one position and how much it pushes the target."""

    hook: str
    feature: int
    pos: int
    token: str
    activation: float
    dla: float
    """Direct logit attribution (direct path through the frozen final norm)."""
    grad_x_act: float
    """activation x gradient of the target w.r.t. it (all paths, first order)."""
    label: str = ""

    @property
    def id(self) -> str:
        return format_feature_id(self.hook, self.feature)


@dataclass
class TraceResult:
    """What `trace` returns: the target and the features ranked by |grad x act|."""

    prompt: str
    str_tokens: list[str]
    target: str
    target_id: int
    vs: str | None
    vs_id: int | None
    value: float
    """The target logit (or logit difference) on the prompt."""
    prob: float
    """The model's probability of the target token."""
    features: list[FeatureAttribution] = field(default_factory=list)
    verification: list[dict] | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        for f, fd in zip(self.features, d["features"]):
            fd["id"] = f.id
        return d


def resolve_target(lm: LanguageModel, target: str | int) -> int:
    """A token string (e.g. ' Paris') or id -> one token id; UserError showing how it tokenizes."""
    if isinstance(target, int):
        return target
    if target.lstrip("-").isdigit() and target not in lm.tokenizer.get_vocab():
        return int(target)
    ids = lm.tokenizer(target, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        pieces = [lm.tokenizer.decode([i]) for i in ids]
        raise UserError(
            f"target {target!r} is {len(ids)} tokens {pieces!r}, not one; pass a single "
            f"token such as {pieces[0]!r}"
            if ids
            else f"target {target!r} tokenizes to nothing"
        )
    unk = getattr(lm.tokenizer, "unk_token_id", None)
    if unk is not None and ids[0] == unk and target.strip() != lm.tokenizer.unk_token:
        raise UserError(
            f"target {target!r} is not in the vocabulary (it becomes the unknown token)"
        )
    return ids[0]


def out_hook(d: SparseDictionary) -> str:
    """The hook point a dictionary's decoder writes to (its own hook for an SAE)."""
    return d.cfg.out_hook_name or d.cfg.hook_name


def target_direction(lm: LanguageModel, target_id: int, vs_id: int | None) -> Tensor:
    """[d_model] the unembedding direction of the target (minus that of `vs`)."""
    W_U = lm.model.get_output_embeddings().weight.detach()
    u = W_U[target_id].float()
    return u - W_U[vs_id].float() if vs_id is not None else u


def trace(
    lm: LanguageModel,
    dictionaries: dict[str, SparseDictionary],
    prompt: str,
    *,
    target: str | int | None = None,
    vs: str | int | None = None,
    top: int = 20,
    labels=None,
    include_special: bool = False,
    tokens: torch.Tensor | None = None,
) -> TraceResult:
    """Rank the features of `dictionaries` {hook: dictionary} by their effect on the target.

    labels: optional callable (hook, feature) -> str.
    include_special: also rank features at position 0 / special tokens. Off by default: the
    dictionaries never saw those positions in training (lmscope.models.tokens.token_mask),
    and BOS is an attention sink with outlier norms (~4,000+ in SmolLM2's middle layers) whose
    encodings are off-distribution; their effect stays in the model (not attributed), as an error
    term would.
    tokens: the prompt's token ids [1, pos] when they are not `lm.to_tokens(prompt)` (a chat
    template's, as lmscope fix runs chat prompts).
    """
    from ..models.tokens import token_mask

    if tokens is None:
        tokens = lm.to_tokens(prompt)
    for d in dictionaries.values():  # UserError with close matches for hooks this model lacks
        lm.hooks[d.cfg.hook_name]
        lm.hooks[out_hook(d)]
    ins = sorted({d.cfg.hook_name for d in dictionaries.values()})
    outs = sorted({out_hook(d) for d in dictionaries.values()})
    cap = sorted(
        set(ins) | set(outs) | ({"ln_final"} if lm.hooks.final_norm is not None else set()),
        key=lambda n: lm.hooks[n].order,
    )
    # Pre-final-norm residual at the last position: for the frozen norm scale.
    last_resid = f"blocks.{lm.n_layers - 1}.resid_post"
    cap = sorted(set(cap) | {last_resid}, key=lambda n: lm.hooks[n].order)
    params = [p for p in lm.model.parameters() if p.requires_grad]
    # A zero leaf added where each dictionary writes: its gradient is dT/dx there, and
    # x + 0 keeps the forward bit-exact (the spliced decode(acts) + error is x itself).
    leaves = {
        n: torch.zeros(
            1, tokens.shape[1], lm.hooks[n].d, dtype=lm.dtype, device=lm.device, requires_grad=True
        )
        for n in outs
    }
    edits = {n: (lambda leaf: lambda x: x + leaf)(leaves[n]) for n in outs}
    try:
        for p in params:  # gradients w.r.t. activations only
            p.requires_grad_(False)
        with torch.enable_grad(), hooked(lm, cap, edits) as acts:
            out = lm.model(tokens, use_cache=False)
        logits = out.logits[0, -1].float()
        target_id = int(logits.argmax()) if target is None else resolve_target(lm, target)
        vs_id = None if vs is None else resolve_target(lm, vs)
        value = logits[target_id] - (logits[vs_id] if vs_id is not None else 0)
        grads = torch.autograd.grad(value, [leaves[n] for n in outs], allow_unused=True)
    finally:
        for p in params:
            p.requires_grad_(True)
    grad_at = {
        n: (g[0] if g is not None else torch.zeros_like(leaves[n][0])).float()
        for n, g in zip(outs, grads)
    }
    # DLA through the final norm frozen at the last position.
    u = target_direction(lm, target_id, vs_id)  # [d_model]
    if lm.hooks.final_norm is not None:
        norm = _NormLinearization(lm.hooks.final_norm)
        resid = acts[last_resid][0, -1:].detach()  # [1, d_model]
        inv = norm.inv_sigma(resid)
        dla_dir = _norm_transpose(norm, u, inv)  # [d_model]: J^T u
    else:
        dla_dir = u
    str_tokens = lm.to_str_tokens(tokens[0])
    rows: list[FeatureAttribution] = []
    with torch.no_grad():
        for hook, d in dictionaries.items():
            x = acts[d.cfg.hook_name][0].detach()  # [pos, d_in]
            a = d.encode(x).float()  # [pos, d_sae]
            dec = decoder_rows(d).float()  # [d_sae, d_out] raw decoder rows
            g = grad_at[out_hook(d)]  # [pos, d_out]
            gxa = a * (g @ dec.t())  # [pos, d_sae]
            dla = a * (dec @ dla_dir)[None, :]  # [pos, d_sae]
            # DLA is a direct path to the *last* position's logits only.
            dla[:-1] = 0
            if not include_special:
                a = a * token_mask(lm, tokens)[0, :, None].to(a.device)  # [pos, d_sae]
            pos, f = a.nonzero(as_tuple=True)
            for p_, f_ in zip(pos.tolist(), f.tolist()):
                rows.append(
                    FeatureAttribution(
                        hook,
                        f_,
                        p_,
                        str_tokens[p_],
                        float(a[p_, f_]),
                        float(dla[p_, f_]),
                        float(gxa[p_, f_]),
                    )
                )
    rows.sort(key=lambda r: -abs(r.grad_x_act))
    rows = rows[:top]
    if labels is not None:
        for r in rows:
            r.label = labels(r.hook, r.feature) or ""
    probs = torch.softmax(logits.detach(), -1)
    return TraceResult(
        prompt,
        str_tokens,
        lm.tokenizer.decode([target_id]),
        target_id,
        None if vs_id is None else lm.tokenizer.decode([vs_id]),
        vs_id,
        float(value.detach()),
        float(probs[target_id]),
        rows,
    )


def _norm_transpose(norm: _NormLinearization, u: Tensor, inv: Tensor) -> Tensor:
    """J^T u for the frozen norm's linear part J (elementwise scale, centering for LayerNorm)."""
    v = torch.zeros(1, u.shape[0], requires_grad=True)
    with torch.enable_grad():
        (norm.linear(v, inv.float()) * u).sum().backward()
    return v.grad[0]


def resolve_feature_id(spec: str, dictionaries: dict[str, object]) -> tuple[str, int]:
    """'blocks.6.resid_post/123' -> (hook, 123) of a feature these dictionaries have; UserError
    (with close matches for an unknown hook) otherwise."""
    from ..dictionaries.feature_id import parse_feature_id

    hook, f = parse_feature_id(spec)
    if hook not in dictionaries:
        raise UserError(
            f"no dictionary at {hook!r} in this atlas{close_matches(hook, dictionaries)}; "
            f"it has: {', '.join(sorted(dictionaries)) or 'none'}"
        )
    d_sae = dictionaries[hook].cfg.d_sae
    if f >= d_sae:
        raise UserError(
            f"feature {f} does not exist at {hook}: its dictionary has {d_sae} features "
            f"(0..{d_sae - 1})"
        )
    return hook, f
