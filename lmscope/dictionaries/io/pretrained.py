"""Published dictionaries as users find them -> what the rest of lmscope reads.

    pre = load_pretrained("mwhanna/gemma-scope-2-270m-pt/transcoder_all")   # or a local folder
    pre.dictionaries   {hook: transcoder}  (per-layer sets, single SAEs/transcoders)
    pre.clt            CrossLayerTranscoder or None
    import_pretrained(SOURCE, "atlas/", lm)  # checks widths against the model, writes lmscope files

Formats (detect_pretrained decides from the files, never from the repository's name):
circuit-tracer transcoder sets and CLTs (circuit_tracer.py), Gemma Scope 2 per-layer
dictionaries and CLTs (gemmascope2.py), and every single-dictionary format load_dictionary
reads (lmscope/SAELens, sparsify, Gemma Scope). A source containing `{layer}` names one
folder per layer (e.g. Gemma Scope 2's transcoder_all/layer_{layer}_width_16k_l0_small) and
is expanded over the model's layers.

Hook names: every reader maps the names its files use with models/hook_names.py where the
name alone decides; import_pretrained resolves the rest against the model (a module's own
output means different tensors on Llama and Gemma) and refuses, in one line, a hook with no
lmscope equivalent or a width that is not the model's.

Sources may also be a release name from releases.py (`lmscope pretrained list`), or a SAELens
registry release with its sae_id (resolve_source).

What import writes: per-layer dictionaries become an atlas (atlas.json + dictionaries/<hook>/
in lmscope's SAELens folder, as `lmscope train` writes them), so every command that takes an
atlas uses them; a CLT becomes lmscope's CLT folder (CrossLayerTranscoder.save).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

from ...errors import UserError
from ...models import hook_names
from ..base import SparseDictionary
from .circuit_tracer import (
    CROSS_LAYER,
    CT_CONFIG,
    load_circuit_tracer_transcoders,
    read_circuit_tracer_clt,
    read_ct_config,
)
from .gemmascope import load_gemmascope
from .gemmascope2 import GS2_CONFIG, load_gemmascope2, read_gemmascope2_clt, read_gs2_config
from .hub import resolve_folder

PRETRAINED_FORMATS = (
    "circuit-tracer",
    "circuit-tracer-clt",
    "gemmascope2",
    "gemmascope2-clt",
    "single",
)
# A hub download fetches the configs first, then only the weights that layout names (a folder
# such as Gemma Scope 2's transcoder_all holds hundreds of dictionaries below it).
_CONFIGS = ["config.yaml", "config.json", "cfg.json"]


def _weight_patterns(folder: Path) -> list[str]:
    if (folder / CT_CONFIG).is_file():
        cfg = read_ct_config(folder)
        if cfg.get("transcoders"):
            return []  # listed files are fetched one by one
        if cfg["model_kind"] == CROSS_LAYER:
            return ["W_enc_*.safetensors", "W_dec_*.safetensors"]
        return ["layer_*.safetensors"]
    if (folder / GS2_CONFIG).is_file():
        clt = read_gs2_config(folder)["type"] == "clt"
        return ["params_layer_*.safetensors"] if clt else ["params.safetensors"]
    if (folder / "cfg.json").is_file():
        return ["sae_weights.safetensors", "sparsity.safetensors", "sae.safetensors"]
    return ["*.safetensors", "*.npz"]


def _fetch(source: str, cache_dir: str | Path | None) -> Path:
    """A local folder as is; a hub folder's configs, then the weights its layout needs."""
    if Path(source).expanduser().exists():
        return Path(source).expanduser()
    # Configs first; a folder without one (Gemma Scope's params.npz alone) is then fetched whole.
    folder = resolve_folder(source, patterns=_CONFIGS, cache_dir=cache_dir, allow_missing=True)
    weights = _weight_patterns(folder)
    return resolve_folder(source, patterns=weights, cache_dir=cache_dir) if weights else folder


class Pretrained(NamedTuple):
    fmt: str
    """One of PRETRAINED_FORMATS ('single': a folder load_dictionary reads)."""
    dictionaries: dict[str, SparseDictionary]
    """hook -> dictionary (empty for a CLT)."""
    clt: object | None
    """CrossLayerTranscoder, or None."""
    model_name: str
    """The model named by the files ('' when they name none)."""


def detect_pretrained(folder: str | Path) -> str:
    """Which layout a local folder holds (see PRETRAINED_FORMATS); UserError if none."""
    from . import detect_format

    p = Path(folder)
    if (p / CT_CONFIG).is_file():
        kind = read_ct_config(p)["model_kind"]
        return "circuit-tracer-clt" if kind == CROSS_LAYER else "circuit-tracer"
    if (p / "W_enc_0.safetensors").is_file():
        return "circuit-tracer-clt"
    if (p / "layer_0.safetensors").is_file():
        return "circuit-tracer"
    if (p / GS2_CONFIG).is_file():
        return "gemmascope2-clt" if read_gs2_config(p)["type"] == "clt" else "gemmascope2"
    if (p / "params_layer_0.safetensors").is_file():
        return "gemmascope2-clt"
    try:
        detect_format(p)
    except UserError:
        raise UserError(
            f"{p} holds no dictionary lmscope reads: expected circuit-tracer files (config.yaml, "
            "layer_{i}.safetensors or W_enc_{i}/W_dec_{i}.safetensors), Gemma Scope 2 files "
            "(config.json + params.safetensors or params_layer_{i}.safetensors), or an "
            "lmscope/SAELens, sparsify or Gemma Scope dictionary"
        ) from None
    return "single"


# Gemma Scope (1) repositories name the site the release reads: google/gemma-scope-2b-pt-res.
_GS_SITE = re.compile(r"gemma-scope-[^/]*?-(res|mlp|att|transcoders)(?:-canonical)?(?:/|$)")


def _load_one(folder: Path, device, source: str = "") -> SparseDictionary:
    from . import detect_format, load_dictionary

    fmt = detect_pretrained(folder)
    if fmt == "gemmascope2":
        return load_gemmascope2(folder)[1].to(device)
    if fmt == "single" and detect_format(folder) == "gemmascope":
        # params.npz names no hook: the folder (layer_L/width_W/...) and the release's site do.
        m = _GS_SITE.search(str(source))
        site = m.group(1) if m else None
        where = str(source or folder)
        hook = hook_names.normalize(where, site=site, strict=True) if site else ""
        out = None
        if site and hook_names.GS_SITES.get(site, ("", None))[1]:
            out = hook.rsplit(".", 1)[0] + "." + hook_names.GS_SITES[site][1]
        return load_gemmascope(folder, device, hook_name=hook, out_hook_name=out)
    if fmt == "single":
        return load_dictionary(folder, device=device)
    raise UserError(f"{folder} is a {fmt} folder, not one layer's dictionary")


def load_pretrained(
    source: str | Path,
    *,
    n_layers: int | None = None,
    cache_dir: str | Path | None = None,
    device="cpu",
) -> Pretrained:
    """Load published dictionaries from a local folder or a Hugging Face reference (see hub.py)."""
    from .clt_state import clt_from_state

    source = str(source)
    if "{layer}" in source:
        if n_layers is None:
            raise UserError(f"{source} names one folder per layer: the number of layers is needed")
        dicts: dict[str, SparseDictionary] = {}
        fmt = "single"
        for layer in range(n_layers):
            one = source.format(layer=layer)
            folder = _fetch(one, cache_dir)
            fmt = detect_pretrained(folder)  # gemmascope2 or single: one layer's dictionary
            d = _load_one(folder, device, one)
            dicts[d.cfg.hook_name or one] = d
        model = next(iter(dicts.values())).cfg.model_name if dicts else ""
        return Pretrained(fmt, dicts, None, model)
    folder = _fetch(source, cache_dir)
    fmt = detect_pretrained(folder)
    if fmt in ("circuit-tracer-clt", "gemmascope2-clt"):
        read = read_circuit_tracer_clt if fmt == "circuit-tracer-clt" else read_gemmascope2_clt
        fields, st = read(folder)
        return Pretrained(fmt, {}, clt_from_state(fields, st).to(device), fields["model_name"])
    if fmt == "circuit-tracer":
        by_layer = load_circuit_tracer_transcoders(folder, cache_dir=cache_dir)
        dicts = {d.cfg.hook_name: d.to(device) for _, d in sorted(by_layer.items())}
    else:
        d = _load_one(folder, device, source)
        dicts = {d.cfg.hook_name or source: d}
    model = next(iter(dicts.values())).cfg.model_name
    return Pretrained(fmt, dicts, None, model)


def resolve_source(source: str, sae_id: str | None = None) -> tuple[str, str]:
    """A release name from `lmscope pretrained list` (or a SAELens release + sae_id), a hub
    reference or a local folder -> (what load_pretrained reads, the release's --model default
    or '')."""
    from .releases import find_release, saelens_source

    if Path(source).expanduser().exists():
        if sae_id:
            raise UserError(f"--sae-id is for SAELens releases; {source} is a local folder")
        return source, ""
    rel = find_release(source, sae_id)
    if rel is None:
        return source, ""
    if not rel.loads:
        raise UserError(f"{rel.name} cannot be loaded by lmscope yet: {rel.note}")
    if rel.origin == "lmscope":
        return rel.source, rel.lmscope_model
    return saelens_source(rel, sae_id), rel.lmscope_model


def source_model_name(source: str, cache_dir: str | Path | None = None) -> str:
    """The model the files name, reading only their configs (config.yaml / config.json /
    cfg.json; the first layer's for a {layer} source); '' when they name none."""
    import json

    folder = Path(source.format(layer=0)).expanduser()
    if not folder.exists():
        folder = resolve_folder(
            source.format(layer=0), patterns=_CONFIGS, cache_dir=cache_dir, allow_missing=True
        )
    if (folder / CT_CONFIG).is_file():
        return str(read_ct_config(folder).get("model_name") or "")
    if (folder / GS2_CONFIG).is_file():
        return str(read_gs2_config(folder).get("model_name") or "")
    if (folder / "cfg.json").is_file():
        from ...validate import read_json

        raw = read_json(folder / "cfg.json", what="dictionary config")
        meta = raw.get("metadata") if isinstance(raw, dict) else None
        name = (meta or {}).get("model_name") or (raw or {}).get("model_name") or ""
        return name if isinstance(name, str) else json.dumps(name)
    return ""


def resolve_hooks(d: SparseDictionary, lm, source: str) -> SparseDictionary:
    """The dictionary with its hooks in lmscope's names for model `lm` (models/hook_names.py);
    one-line UserError for a hook with no equivalent on this model."""
    c = d.cfg
    if not c.hook_name:
        raise UserError(
            f"{source} does not name the hook point it reads (a Gemma Scope params.npz outside "
            "its release's folders?); load it from google/gemma-scope-…-res|mlp|transcoders/"
            "layer_L/width_W/average_l0_N"
        )
    hook = hook_names.to_lmscope(c.hook_name, lm.hooks)
    out = c.out_hook_name
    if c.is_transcoder and out:
        out = hook_names.to_lmscope(out, lm.hooks)
    d.cfg = c.replace(hook_name=hook, out_hook_name=out)
    return d


def check_clt_fits(clt, lm, name: str = "the CLT") -> None:
    """UserError unless the CLT's hooks exist in `lm` with width d_model, for every layer."""
    c = clt.cfg
    if c.n_layers != lm.n_layers:
        raise UserError(
            f"{name} has {c.n_layers} layers but model {lm.name} has {lm.n_layers}; it belongs "
            "to another model"
        )
    for hook in (*c.hooks_in, *c.hooks_out):
        if hook not in lm.hooks:
            raise UserError(f"{name} uses hook {hook!r}, which model {lm.name} does not have")
        if lm.hooks[hook].d != c.d_model:
            raise UserError(
                f"{name} expects width {c.d_model} at {hook} but model {lm.name} has "
                f"{lm.hooks[hook].d}; it belongs to another model"
            )


def import_pretrained(
    source: str | Path,
    out: str | Path,
    lm,
    *,
    cache_dir: str | Path | None = None,
    force: bool = False,
    loaded: Pretrained | None = None,
) -> tuple[Pretrained, Path]:
    """Load `source`, check it against model `lm` (one line naming the mismatch), and write it as
    lmscope files at `out`: an atlas of dictionaries, or a CLT folder. Returns (what, out).
    `loaded`: the result of load_pretrained(source) when the caller already has it."""
    from ...layout import AtlasLayout
    from ..base import check_fits

    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise UserError(f"{out} exists and is not empty; pass --force to write into it")
    pre = loaded or load_pretrained(source, n_layers=lm.n_layers, cache_dir=cache_dir)
    meta = {"lmscope_pretrained_source": str(source), "lmscope_pretrained_format": pre.fmt}
    if pre.clt is not None:
        c = pre.clt.cfg
        hook_in = hook_names.to_lmscope(c.hook_in, lm.hooks)
        hook_out = hook_names.to_lmscope(c.hook_out, lm.hooks)
        pre.clt.cfg = c.replace(hook_in=hook_in, hook_out=hook_out)
        check_clt_fits(pre.clt, lm, str(source))
        pre.clt.cfg = pre.clt.cfg.replace(model_name=lm.name)  # as for dictionaries below
        pre.clt.save(out, metadata={**meta, "source_model_name": pre.model_name})
        return pre, out
    resolved: dict[str, SparseDictionary] = {}
    for d in pre.dictionaries.values():
        d = resolve_hooks(d, lm, str(source))
        if d.cfg.hook_name in resolved:
            raise UserError(f"{source}: two dictionaries read {d.cfg.hook_name}")
        check_fits(d, lm, d.cfg.hook_name)
        resolved[d.cfg.hook_name] = d
    pre = pre._replace(dictionaries=resolved)
    layout = AtlasLayout(out)
    for hook, d in pre.dictionaries.items():
        # Our model's name, so the atlas opens with it; the files' own stays in model_name.
        d.cfg = d.cfg.replace(model_name=lm.name)
        d.save(layout.dictionary_dir(hook), metadata={**meta, "source_model_name": pre.model_name})
        c = d.cfg
        extra = {"d_in": c.d_in, "out_hook": c.out_hook_name, "source": str(source)}
        if c.arch in ("topk", "batchtopk"):
            extra["k"] = c.k
        layout.add_dictionary(hook, model=lm.name, arch=c.arch, d_sae=c.d_sae, extra=extra)
    return pre, out


__all__ = [
    "PRETRAINED_FORMATS",
    "Pretrained",
    "check_clt_fits",
    "detect_pretrained",
    "import_pretrained",
    "load_pretrained",
    "resolve_hooks",
    "resolve_source",
    "source_model_name",
]
