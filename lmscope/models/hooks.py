"""Uniform hook points for every causal-LM family, found from the module structure.

Names (TransformerLens-style, one scheme for all families):

    embed                    = blocks.0.resid_pre (what enters the first block)
    blocks.{L}.resid_pre     input of block L            [batch, pos, d_model]
    blocks.{L}.attn_out      what attention adds to the residual stream
    blocks.{L}.resid_mid     resid_pre + attn_out (virtual: computed, see below)
    blocks.{L}.mlp_in        input of the MLP (after its pre-norm)
    blocks.{L}.mlp_out       what the MLP adds to the residual stream
    blocks.{L}.resid_post    output of block L = resid_mid + mlp_out
    ln_final                 output of the final norm (what the unembedding reads)

How we find them: the decoder blocks are the `ModuleList` whose length is the
config's layer count; in each block the attention and MLP children are found
by type/name, and one calibration forward on 6 tokens decides which module's
output is *added* to the residual stream (the attention itself, or a "sandwich"
post-norm after it as in Gemma 2/3 and OLMo 2). The calibration also checks
`resid_pre + attn_out + mlp_out == resid_post`, so an unsupported layout fails
loudly at load time instead of giving silently wrong activations.

On Gemma 2/3 (four norms per block) this gives: attn_out = the output of
post_attention_layernorm, mlp_in = the output of pre_feedforward_layernorm (the MLP's input),
mlp_out = the output of post_feedforward_layernorm, and embed = the *scaled* embedding
W_E[ids] * sqrt(d_model) that enters block 0; docs/models.md has the table and
tests/test_gemma.py pins each against the modules.

`resid_mid` is computed as resid_pre + attn_out rather than read off a module:
it is exactly the residual stream between the two sublayers in sequential
blocks, and a well-defined sum in parallel-residual blocks (GPT-NeoX, GPT-J),
where no module ever sees it.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UserError, close_matches

KINDS = ("resid_pre", "attn_out", "resid_mid", "mlp_in", "mlp_out", "resid_post")
_HOOK_RE = re.compile(r"^blocks\.(\d+)\.(" + "|".join(KINDS) + r")$")


@dataclass(frozen=True)
class HookPoint:
    """One named place in the forward pass."""

    name: str
    layer: int
    """Block index; `embed` is layer 0, `ln_final` is n_layers."""
    kind: str
    """One of KINDS, or 'ln_final'."""
    d: int
    """Width of the activation (d_model for every current kind)."""

    @property
    def order(self) -> float:
        """Position in the forward pass (for stopping after the deepest requested hook)."""
        if self.kind == "ln_final":
            return float(self.layer)
        return self.layer + KINDS.index(self.kind) / len(KINDS)


@dataclass
class BlockParts:
    """The modules of one decoder block that hook points attach to."""

    block: nn.Module
    attn: nn.Module
    attn_out: nn.Module
    """Module whose output is added to the residual (attn, or a post-attention norm)."""
    mlp: nn.Module
    mlp_out: nn.Module
    """Module whose output is added to the residual (mlp, or a post-MLP norm)."""


def first_tensor(x):
    """Modules return a tensor or a tuple whose first item is the hidden state."""
    return x[0] if isinstance(x, (tuple, list)) else x


def _is_norm(m: nn.Module) -> bool:
    return "norm" in type(m).__name__.lower()


def _find_child(block: nn.Module, words: tuple[str, ...]) -> tuple[str, nn.Module] | None:
    for name, child in block.named_children():
        cls = type(child).__name__.lower()
        if any(w == name.lower() for w in words) or any(cls.endswith(w) for w in words):
            return name, child
    for name, child in block.named_children():
        if any(w in name.lower() for w in words) and not _is_norm(child):
            return name, child
    return None


class HookPoints:
    """The hook points of one model: names -> HookPoint, plus the modules behind them."""

    def __init__(
        self,
        model: nn.Module,
        layers: nn.ModuleList,
        parts: list[BlockParts],
        final_norm: nn.Module | None,
        d_model: int,
    ) -> None:
        self.model = model
        self.layers = layers
        self.parts = parts
        self.final_norm = final_norm
        self.n_layers = len(layers)
        self.d_model = d_model
        pts: dict[str, HookPoint] = {"embed": HookPoint("embed", 0, "resid_pre", d_model)}
        for L in range(self.n_layers):
            for k in KINDS:
                pts[f"blocks.{L}.{k}"] = HookPoint(f"blocks.{L}.{k}", L, k, d_model)
        if final_norm is not None:
            pts["ln_final"] = HookPoint("ln_final", self.n_layers, "ln_final", d_model)
        self.points = pts

    # --- discovery ----------------------------------------------------------
    @classmethod
    def discover(cls, model: nn.Module) -> HookPoints:
        cfg = model.config
        n = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", None)
        layers, base = None, None
        for name, mod in model.named_modules():
            if isinstance(mod, nn.ModuleList) and len(mod) == n:
                layers = mod
                base = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
                break
        if layers is None:
            raise UserError(
                f"cannot find the decoder blocks of {type(model).__name__}: "
                "no ModuleList of num_hidden_layers modules"
            )
        norms = [m for _, m in base.named_children() if _is_norm(m)]
        final_norm = norms[-1] if norms else None
        d_model = model.get_input_embeddings().weight.shape[1]
        parts = []
        for block in layers:
            attn = _find_child(block, ("self_attn", "attention", "attn"))
            mlp = _find_child(block, ("mlp", "feed_forward", "ffn"))
            if attn is None or mlp is None:
                raise UserError(
                    f"cannot find attention/MLP inside {type(block).__name__}; "
                    "this model family is not supported yet"
                )
            parts.append(BlockParts(block, attn[1], attn[1], mlp[1], mlp[1]))
        hp = cls(model, layers, parts, final_norm, d_model)
        hp._calibrate()
        return hp

    @torch.no_grad()
    def _calibrate(self) -> None:
        """One tiny forward: find post-sublayer norms and check additivity per block."""
        seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(module) -> (input, output)
        handles = []

        def rec(mod, args, kwargs, out):
            x = args[0] if args else next(iter(kwargs.values()), None)
            if isinstance(x, torch.Tensor):
                seen[id(mod)] = (x, first_tensor(out))

        for p in self.parts:
            for child in p.block.children():
                handles.append(child.register_forward_hook(rec, with_kwargs=True))
            handles.append(p.block.register_forward_hook(rec, with_kwargs=True))
        vocab = self.model.get_input_embeddings().weight.shape[0]
        ids = (torch.arange(6) * 7 + 3) % vocab
        dev = next(self.model.parameters()).device
        try:
            self.model(ids[None].to(dev), use_cache=False)
        finally:
            for h in handles:
                h.remove()

        def follower(p: BlockParts, src: nn.Module) -> nn.Module:
            # A norm child whose input is exactly `src`'s output is a sandwich post-norm.
            out = seen[id(src)][1]
            for child in p.block.children():
                if child is not src and _is_norm(child) and id(child) in seen:
                    x = seen[id(child)][0]
                    if x.shape == out.shape and torch.equal(x, out):
                        return child
            return src

        for L, p in enumerate(self.parts):
            if id(p.attn) not in seen or id(p.mlp) not in seen or id(p.block) not in seen:
                raise UserError(
                    f"block {L}: attention or MLP did not run in a forward pass; "
                    "this model family is not supported yet"
                )
            p.attn_out = follower(p, p.attn)
            p.mlp_out = follower(p, p.mlp)
            pre, post = seen[id(p.block)]
            a, m = seen[id(p.attn_out)][1], seen[id(p.mlp_out)][1]
            err = (pre + a + m - post).abs().max().item()
            scale = post.abs().max().item() + 1e-6
            if err > 1e-3 * scale + 1e-4:
                raise UserError(
                    f"block {L} of {type(p.block).__name__} is not resid_pre + attn_out + "
                    f"mlp_out (max error {err:.3g}); this layout is not supported yet"
                )

    # --- names ----------------------------------------------------------------
    def __contains__(self, name: str) -> bool:
        return name in self.points

    def __getitem__(self, name: str) -> HookPoint:
        try:
            return self.points[name]
        except KeyError:
            raise UserError(
                f"unknown hook point {name!r}{close_matches(name, self.points)}; "
                "list them with `lmscope hooks --model M`"
            ) from None

    def names(self) -> list[str]:
        return list(self.points)

    def resolve(self, spec: str | list[str] | tuple[str, ...]) -> list[str]:
        """'blocks.6.resid_post,blocks.*.mlp_out' -> concrete names in forward order.

        Globs use fnmatch; `*` in a layer position matches every layer. Unknown
        names raise a UserError listing close matches.
        """
        items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
        out: list[str] = []
        for item in items:
            if not item:
                continue
            if any(c in item for c in "*?["):
                hits = [n for n in self.points if fnmatch.fnmatchcase(n, item)]
                if not hits:
                    raise UserError(
                        f"hook pattern {item!r} matches no hook point"
                        f"{close_matches(item, self.points)}"
                    )
                out += hits
            else:
                self[item]  # raises with close matches
                out.append(item)
        if not out:
            raise UserError("no hook points given; e.g. --hooks 'blocks.6.resid_post'")
        seen = set()
        uniq = [n for n in out if not (n in seen or seen.add(n))]
        return sorted(uniq, key=lambda n: self.points[n].order)

    @staticmethod
    def parse(name: str) -> tuple[int, str] | None:
        m = _HOOK_RE.match(name)
        return (int(m.group(1)), m.group(2)) if m else None

    def module_name(self, name: str) -> str:
        """The HF module path behind a hook point (recorded in SAELens metadata)."""
        hp = self[name]
        mods = {id(m): n for n, m in self.model.named_modules()}
        if hp.kind == "ln_final":
            return mods[id(self.final_norm)]
        p = self.parts[hp.layer]
        mod = {
            "resid_pre": p.block,
            "resid_post": p.block,
            "resid_mid": p.attn_out,
            "attn_out": p.attn_out,
            "mlp_in": p.mlp,
            "mlp_out": p.mlp_out,
        }[hp.kind]
        suffix = {"resid_pre": ":input", "mlp_in": ":input", "resid_mid": ":output+resid_pre"}.get(
            hp.kind, ""
        )
        return mods[id(mod)] + suffix
