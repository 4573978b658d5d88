"""Hook-point names as publishers write them <-> lmscope's names (models/hooks.py).

Published dictionaries name the activation they were trained on in one of five vocabularies;
`to_lmscope` reads all of them, the `to_*` functions write three of them back:

    lmscope          blocks.12.resid_post                                itself
    TransformerLens  blocks.12.hook_resid_post (SAELens hook_name; circuit-tracer feature_*_hook,
                     block-relative: hook_mlp_out)                       blocks.12.resid_post
    HF module paths  model.layers.12, model.layers.12.mlp:input (SAELens hf_hook_name, nnsight,
                     sparsify hookpoints `layers.12.mlp`, our module_name()) resid_post, mlp_in
    Gemma Scope      layer_12/width_16k/average_l0_71 + the release's site (res, mlp,
                     transcoders)                                        blocks.12.resid_post
    Gemma Scope 2    resid_post/layer_12_width_16k_l0_small               blocks.12.resid_post

TransformerLens names follow TransformerLens's own definitions, which are not always what the
word suggests: `hook_mlp_in` is the residual stream *before* ln2 (our resid_mid; TransformerLens
2 and 3 agree), `mlp.hook_in` the MLP's input after its norm (our mlp_in), `ln2.hook_normalized`
the normalized input before the norm's gain, read as mlp_in because every publisher using it
(Gemma Scope transcoders, Dunefsky et al.) trained on the MLP's input. `hook_attn_out` /
`hook_mlp_out` are what a sublayer adds to the residual (after Gemma's post-norms), as ours.

Some names mean different tensors on different model families: a Hugging Face module's output
(`model.layers.12.mlp`, TransformerLens `mlp.hook_out`) is our mlp_out on Llama, but on Gemma it
is the MLP's output *before* post_feedforward_layernorm, which no lmscope hook reads. Those are
resolved against the model's own modules (`hooks`, a models.hooks.HookPoints) and refused, with
the reason, where the model has no such hook; without a model `to_lmscope` says it needs one
(`normalize` leaves them as written, for `import_pretrained` to resolve with the model).

Names with no lmscope equivalent (attention heads' `hook_z` / `o_proj` input, which Gemma Scope's
and Gemma Scope 2's attention SAEs read; the unscaled `hook_embed`; q/k/v) raise one UserError
that lists what is supported. A layer may be a number or a template (`{layer}`, Gemma Scope 2's
`{all}`), which comes back as `blocks.{layer}.KIND`.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from ..errors import UserError
from .hooks import KINDS

if TYPE_CHECKING:
    from .hooks import HookPoints

# TransformerLens hook, relative to a block -> our kind.
TL_KINDS = {
    "hook_resid_pre": "resid_pre",
    "hook_resid_mid": "resid_mid",
    "hook_resid_post": "resid_post",
    "hook_attn_out": "attn_out",
    "hook_mlp_out": "mlp_out",
    "mlp.hook_in": "mlp_in",
    "ln2.hook_normalized": "mlp_in",
    "hook_mlp_in": "resid_mid",
}
# TransformerLens names whose tensor depends on the model (the module's own output).
_TL_MODULE_OUT = {"mlp.hook_out": "mlp", "attn.hook_out": "self_attn"}
# What we write: one name per kind, the one circuit-tracer and TransformerLens 3 both resolve.
_TL_NAMES = {
    "resid_pre": "hook_resid_pre",
    "resid_mid": "hook_resid_mid",
    "resid_post": "hook_resid_post",
    "attn_out": "hook_attn_out",
    "mlp_out": "hook_mlp_out",
    "mlp_in": "mlp.hook_in",
}
# Gemma Scope 2 folder (and SAELens release) site -> (input kind, output kind or None).
GS2_SITES = {
    "resid_post": ("resid_post", None),
    "mlp_out": ("mlp_out", None),
    "transcoder": ("mlp_in", "mlp_out"),
    "clt": ("mlp_in", "mlp_out"),
}
# Gemma Scope (1) release site -> (input kind, output kind or None).
GS_SITES = {
    "res": ("resid_post", None),
    "mlp": ("mlp_out", None),
    "transcoders": ("mlp_in", "mlp_out"),
}
# Hugging Face module outputs that mean one kind on every family that has the module (Gemma 2/3).
_HF_FIXED = {
    "pre_feedforward_layernorm": "mlp_in",
    "post_feedforward_layernorm": "mlp_out",
}

SUPPORTED = (
    "lmscope names (blocks.L.resid_pre|attn_out|resid_mid|mlp_in|mlp_out|resid_post, embed, "
    "ln_final); TransformerLens (blocks.L.hook_resid_pre|hook_resid_mid|hook_resid_post|"
    "hook_attn_out|hook_mlp_out|hook_mlp_in|mlp.hook_in|ln2.hook_normalized|mlp.hook_out); "
    "Hugging Face module paths (model.layers.L[.output|:input], model.layers.L.mlp[:input], "
    "model.layers.L.pre_feedforward_layernorm.output, ...); Gemma Scope layer_L/width_W/... with "
    "site res|mlp|transcoders; Gemma Scope 2 resid_post|mlp_out|transcoder|clt folders"
)

_LAYER = r"(\d+|\{layer\}|\{all\})"
_OURS = re.compile(rf"^blocks\.{_LAYER}\.({'|'.join(KINDS)})$")
_TL = re.compile(rf"^blocks\.{_LAYER}\.(.+)$")
_GS2 = re.compile(
    r"^(?:.*/)?(resid_post|mlp_out|attn_out|transcoder|clt)(?:_all)?/(?:layer_(\d+)_)?"
)
_GS = re.compile(r"^(?:.*/)?layer_(\d+)/width_[^/]+/")
_MODULE = re.compile(rf"^(?:(.*)\.)?layers\.{_LAYER}(?:\.(.+?))?(?:[.:](input|output))?$")


class NeedsModel(UserError):
    """The name means different tensors on different model families: pass the model's hooks."""


def _refuse(name: str, why: str = "") -> UserError:
    return UserError(
        f"hook {name!r} has no lmscope equivalent{f' ({why})' if why else ''}; supported: "
        f"{SUPPORTED}"
    )


def _ours(layer: str, kind: str) -> str:
    return f"blocks.{'{layer}' if layer.startswith('{') else int(layer)}.{kind}"


def tl_kind(rel: str, hooks: HookPoints | None = None, layer: str = "", full: str = "") -> str:
    """A block-relative TransformerLens name ('mlp.hook_in') -> our kind ('mlp_in'); `full`:
    the name as written, for messages."""
    full = full or rel
    if rel in TL_KINDS:
        return TL_KINDS[rel]
    if rel in _TL_MODULE_OUT:
        child = _TL_MODULE_OUT[rel]
        if hooks is None:
            raise NeedsModel(
                f"hook {full!r} is the {child} module's own output: our "
                f"{'mlp_out' if child == 'mlp' else 'attn_out'} on models without a post-norm "
                "(Llama), no lmscope hook on Gemma; the model decides"
            )
        p = hooks.parts[_block(hooks, layer, full)]
        mod, out = (p.mlp, p.mlp_out) if child == "mlp" else (p.attn, p.attn_out)
        if mod is not out:
            raise _refuse(full, f"on this model it is the {child} output before its post-norm")
        return "mlp_out" if child == "mlp" else "attn_out"
    why = {
        "attn.hook_z": "the attention heads' outputs before o_proj",
        "hook_attn_in": "per-head attention inputs",
    }.get(rel, "")
    raise _refuse(full, why)


def _module_kind(layer: str, sub: str | None, side: str | None, hooks, name: str) -> str:
    """A Hugging Face module path inside block `layer` -> our kind."""
    side = side or "output"
    if sub is None:
        return "resid_pre" if side == "input" else "resid_post"
    if sub == "self_attn.o_proj" and side == "input":
        raise _refuse(name, "the attention heads' outputs before o_proj (hook_z)")
    if sub in _HF_FIXED and side == "output":
        if hooks is not None and layer.isdigit():
            _module(hooks, int(layer), sub, name)  # the model must have it
        return _HF_FIXED[sub]
    if sub.endswith("output+resid_pre"):  # what our module_name() writes for resid_mid
        return "resid_mid"
    if hooks is None:
        if sub == "mlp" and side == "input":
            return "mlp_in"
        if sub in ("mlp", "self_attn") and side == "output":
            raise NeedsModel(
                f"hook {name!r} is a module's own output, which means different tensors on "
                "different models; the model decides"
            )
        raise _refuse(name)
    L = _block(hooks, layer, name)
    mod = _module(hooks, L, sub, name)
    p = hooks.parts[L]
    if side == "input" and mod is p.mlp:
        return "mlp_in"
    if side == "output" and mod is p.mlp_out:
        return "mlp_out"
    if side == "output" and mod is p.attn_out:
        return "attn_out"
    if side == "output" and mod is p.mlp:
        raise _refuse(name, "the MLP's output before its post-norm; lmscope's mlp_out is after it")
    if side == "output" and mod is p.attn:
        raise _refuse(name, "attention's output before its post-norm; lmscope's attn_out is after")
    raise _refuse(name)


def _not_in(hooks: HookPoints, name: str, ours: str) -> UserError:
    said = "" if name == ours else f" ({ours} in lmscope's names)"
    return UserError(
        f"hook {name!r}{said} is not in this {hooks.n_layers}-layer model; is the dictionary "
        "for another model?"
    )


def _block(hooks: HookPoints, layer: str, name: str) -> int:
    """The block index of a layer token ({layer} templates are checked on block 0)."""
    L = int(layer) if layer.isdigit() else 0
    if L >= hooks.n_layers:
        raise _not_in(hooks, name, f"block {L}")
    return L


def _module(hooks: HookPoints, layer: int, sub: str, name: str):
    """Module `sub` of block `layer` (the path before `layers.L` may be anything: model.,
    model.language_model., or nothing as in sparsify's hookpoints)."""
    block = hooks.layers[_block(hooks, str(layer), name)]
    try:
        return block.get_submodule(sub)
    except AttributeError:
        raise _refuse(name, f"block {layer} of this model has no module {sub!r}") from None


def to_lmscope(
    name: str, hooks: HookPoints | None = None, *, site: str | None = None, layer: str = ""
) -> str:
    """Any supported hook name -> lmscope's (`blocks.12.resid_post`, or `blocks.{layer}.KIND`).

    hooks: the model's HookPoints, needed for module outputs whose tensor depends on the
    family (see the module docstring) and used to check the layer exists. site: Gemma Scope's
    release site (res, mlp, transcoders) for a bare `layer_L/width_W/...` path. layer: the block
    of a block-relative TransformerLens name (circuit-tracer's `mlp.hook_in`).
    UserError (one line, listing the supported names) when there is no equivalent."""
    name = str(name).strip()
    out = _resolve(name, hooks, site, layer)
    if hooks is not None and "{" not in out and out not in hooks:
        raise _not_in(hooks, name, out)
    return out


def _resolve(name: str, hooks, site, layer) -> str:
    if name in ("embed", "ln_final") or _OURS.match(name):
        m = _OURS.match(name)
        return _ours(m.group(1), m.group(2)) if m else name
    if layer != "" and not name.startswith("blocks."):  # block-relative TransformerLens
        return _ours(str(layer), tl_kind(name, hooks, str(layer), name))
    m = _TL.match(name)
    if m:
        return _ours(m.group(1), tl_kind(m.group(2), hooks, m.group(1), name))
    if name in ("hook_embed", "hook_pos_embed"):
        raise _refuse(name, "the token embedding before any scaling; use blocks.0.hook_resid_pre")
    m = _GS2.match(name)
    if m and (m.group(2) or m.group(1) == "clt"):
        if m.group(1) == "attn_out":
            raise _refuse(name, "Gemma Scope 2 attention SAEs read o_proj's input (hook_z)")
        return _ours(m.group(2) or "{layer}", GS2_SITES[m.group(1)][0])
    m = _GS.match(name + "/")
    if m:
        if site == "att":
            raise _refuse(name, "Gemma Scope attention SAEs read attn.hook_z")
        if site not in GS_SITES:
            raise UserError(
                f"Gemma Scope path {name!r} does not say its site: load it through its release "
                "(google/gemma-scope-…-res, -mlp or -transcoders/layer_L/width_W/…)"
            )
        return _ours(m.group(1), GS_SITES[site][0])
    m = _MODULE.match(name)
    if m:
        _, lay, sub, side = m.groups()
        if sub in ("input", "output"):  # model.layers.12.output: the block's own output
            sub, side = None, sub
        return _ours(lay, _module_kind(lay, sub, side, hooks, name))
    if hooks is not None and name == _final_norm_name(hooks):
        return "ln_final"
    raise _refuse(name)


def _final_norm_name(hooks: HookPoints) -> str | None:
    if hooks.final_norm is None:
        return None
    return next((n for n, m in hooks.model.named_modules() if m is hooks.final_norm), None)


def normalize(name: str | None, *, site: str | None = None, strict: bool = False) -> str:
    """Without a model: lmscope's name where the name alone decides it, else the name as written
    (import_pretrained resolves it with the model, or refuses it). strict: refuse (UserError) a
    name with no lmscope equivalent on any model; only model-dependent ones are kept."""
    if not name:
        return ""
    try:
        return to_lmscope(name, site=site)
    except NeedsModel:
        return str(name)
    except UserError:
        if strict:
            raise
        return str(name)


def _split(ours: str) -> tuple[str, str]:
    m = _OURS.match(ours)
    if not m:
        raise UserError(f"{ours!r} is not an lmscope block hook (blocks.L.KIND)")
    return m.group(1), m.group(2)


def to_transformer_lens(ours: str) -> str:
    """'blocks.12.resid_post' -> 'blocks.12.hook_resid_post' (mlp_in -> 'blocks.12.mlp.hook_in',
    TransformerLens 3's and circuit-tracer's name for the MLP's input); embed ->
    'blocks.0.hook_resid_pre'."""
    if ours == "embed":
        return "blocks.0.hook_resid_pre"
    layer, kind = _split(ours)
    return f"blocks.{layer}.{_TL_NAMES[kind]}"


def to_block_relative(ours: str) -> str:
    """'blocks.3.mlp_in' or 'blocks.{layer}.mlp_in' -> 'mlp.hook_in' (circuit-tracer configs)."""
    return _TL_NAMES[_split(ours)[1]]


def to_module(ours: str, hooks: HookPoints) -> str:
    """Our name -> the model's module path as SAELens metadata and nnsight users write it
    (models/hooks.py HookPoints.module_name: 'model.layers.12', 'model.layers.12.mlp:input')."""
    return hooks.module_name(ours)


def to_gemmascope2(ours: str) -> str:
    """'blocks.7.mlp_in' (or blocks.{layer}.…) -> Gemma Scope 2's hf_hook_point
    ('model.layers.7.pre_feedforward_layernorm.output'; a template gives {all})."""
    layer, kind = _split(ours)
    names = {
        "resid_post": "output",
        "mlp_in": "pre_feedforward_layernorm.output",
        "mlp_out": "post_feedforward_layernorm.output",
    }
    if kind not in names:
        raise UserError(f"hook {ours!r} has no Gemma Scope 2 name (resid_post, mlp_in, mlp_out)")
    return f"model.layers.{'{all}' if layer.startswith('{') else layer}.{names[kind]}"


def layer_of(ours: str) -> int | None:
    """The block index of 'blocks.L.KIND' (None for a template or embed/ln_final)."""
    m = _OURS.match(ours)
    return int(m.group(1)) if m and m.group(1).isdigit() else None


__all__ = [
    "GS2_SITES",
    "GS_SITES",
    "NeedsModel",
    "SUPPORTED",
    "TL_KINDS",
    "layer_of",
    "normalize",
    "tl_kind",
    "to_block_relative",
    "to_gemmascope2",
    "to_lmscope",
    "to_module",
    "to_transformer_lens",
]
