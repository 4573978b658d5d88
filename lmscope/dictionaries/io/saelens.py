"""SAELens on-disk format: read and write `cfg.json` + `sae_weights.safetensors` (+
`sparsity.safetensors`).

The folder SAELens >= 6 writes with `SAE.save_model` and reads with `SAE.load_from_disk`:

    cfg.json               {"architecture", "d_in", "d_sae", "dtype", "device",
    "apply_b_dec_to_input",
                            "normalize_activations", "reshape_activations", "metadata": {...},
                            "k" (topk), "rescale_acts_by_decoder_norm" (topk), "d_out"
                            (transcoders)}
    sae_weights.safetensors W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_out], b_dec [d_out],
                            threshold [d_sae] (jumprelu), W_skip [d_out, d_in] (skip transcoders)
    sparsity.safetensors   sparsity [d_sae] = log10(firing frequency + 1e-10)   (optional)

Pre-6.0 flat configs (hook_point, activation_fn_str, ... at the top level) are read too.

What we write, and why:
- The weights act on RAW activations (`normalize_activations: "none"`): our act_scale is
  folded in (base.SparseDictionary.folded_state), and the decoder rows are saved as trained
  (unit norm for topk/batchtopk/jumprelu) by moving the output scale into the encoder, so
  latent activations are in raw-activation units. ReLU+L1 rows keep their learned norms
  (SAELens' `fold_W_dec_norm()` normalizes them, exactly, if a user wants unit rows); not
  folding them keeps save -> load exact, including the training state.
- Architecture names: topk SAE -> "topk"; batchtopk -> "jumprelu" with threshold = ones *
  running threshold (as SAELens saves BatchTopK); jumprelu -> "jumprelu"; relu -> "standard".
  Transcoders: "transcoder"/"skip_transcoder" (relu), "jumprelu_transcoder"/
  "jumprelu_skip_transcoder" (jumprelu, batchtopk). SAELens has no TopK transcoder class, so
  a topk transcoder is written as "topk_transcoder"/"topk_skip_transcoder", which only lmscope
  reads.
- `metadata.hook_name` is the model's module name (what SAELens/TransformerLens users hook);
  our own hook names and settings go under `metadata.lmscope_*`, so that a dictionary we
  wrote comes back exactly (same normalized-space parameters, ready to resume training).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from ...errors import UserError
from ...models import hook_names
from ...validate import MAX_DIM, MAX_LATENTS, Int, Obj, Str, check, read_json
from ..base import DictionaryConfig, SparseDictionary
from ..registry import build

if TYPE_CHECKING:
    from ...models import LanguageModel

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
SPARSITY_FILENAME = "sparsity.safetensors"
# The SAELens config generation we write; SAELens converts configs older than 6.0 on load.
SAELENS_FORMAT_VERSION = "6.0.0"
SCHEMA_VERSION = 1


# --- writing ----------------------------------------------------------------------------
def saelens_architecture(cfg: DictionaryConfig) -> str:
    """The SAELens `architecture` string a dictionary is saved under."""
    if not cfg.is_transcoder:
        return {
            "topk": "topk",
            "batchtopk": "jumprelu",
            "jumprelu": "jumprelu",
            "relu": "standard",
        }[cfg.arch]
    base = {"topk": "topk_", "batchtopk": "jumprelu_", "jumprelu": "jumprelu_", "relu": ""}[
        cfg.arch
    ]
    return f"{base}{'skip_' if cfg.skip else ''}transcoder"


@torch.no_grad()
def saelens_state(d: SparseDictionary) -> dict[str, Tensor]:
    """Raw-space weights with the training-time decoder rows (see the module docstring).

    folded_state() gives raw-space weights whose latent activations equal the normalized
    ones; every latent is then rescaled by c = act_scale_out (W_dec * c, encoder / c,
    threshold / c), so decoder rows are exactly the trained ones (unit norm except relu).
    """
    st = d.folded_state()  # raw space; decoder rows have norm ||W_dec_i|| / act_scale_out
    # One uniform factor: keeps the top-k choice exact and the training state recoverable.
    c = torch.full((d.d_sae,), float(d.act_scale_out))
    st["W_dec"] = st["W_dec"] * c[:, None]
    st["W_enc"] = st["W_enc"] / c
    st["b_enc"] = st["b_enc"] / c
    threshold = getattr(d, "threshold", None)
    if threshold is not None:
        st["threshold"] = threshold.detach().float() / c
    return {k: v.contiguous() for k, v in st.items()}


def save_saelens(
    d: SparseDictionary,
    path: str | Path,
    *,
    sparsity: Tensor | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write `d` as a SAELens folder at `path` (created; files replaced atomically)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = d.cfg
    meta: dict[str, Any] = {
        "sae_lens_version": SAELENS_FORMAT_VERSION,
        "sae_lens_training_version": None,
        "model_name": cfg.model_name,
        "hook_name": cfg.hook_name,
        "hook_head_index": None,
        "context_size": None,
        "prepend_bos": True,
        "dataset_path": None,
        "model_class_name": "AutoModelForCausalLM",
        "model_from_pretrained_kwargs": {},
        "exclude_special_tokens": False,
        "seqpos_slice": [None],
    }
    meta.update(metadata or {})
    meta.update(
        {
            "lmscope_schema_version": SCHEMA_VERSION,
            "lmscope_hook_name": cfg.hook_name,
            "lmscope_out_hook_name": cfg.out_hook_name,
            "lmscope_config": cfg.to_dict(),
            "lmscope_act_scale": float(d.act_scale),
            "lmscope_act_scale_out": float(d.act_scale_out),
        }
    )
    out: dict[str, Any] = {
        "architecture": saelens_architecture(cfg),
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": d.apply_b_dec_to_input,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": meta,
    }
    if cfg.arch == "topk":
        out["k"] = cfg.k
        out["rescale_acts_by_decoder_norm"] = False
    if cfg.is_transcoder:
        out["d_out"] = cfg.output_dim
    tensors = {k: v.cpu() for k, v in saelens_state(d).items()}
    _atomic(path / WEIGHTS_FILENAME, lambda p: save_file(tensors, p))
    if sparsity is not None:
        log_density = torch.log10(sparsity.detach().float().cpu() + 1e-10)
        _atomic(path / SPARSITY_FILENAME, lambda p: save_file({"sparsity": log_density}, p))
    _atomic(path / CFG_FILENAME, lambda p: Path(p).write_text(json.dumps(out, indent=2)))
    return path


def _atomic(target: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def saelens_metadata(lm: LanguageModel, hook_name: str, **extra: Any) -> dict[str, Any]:
    """SAELens metadata for a dictionary on `lm` at our `hook_name`: the model's module name etc."""
    meta = {
        "model_name": lm.name,
        "hook_name": lm.hooks.module_name(hook_name),
        "prepend_bos": True,
    }
    meta.update(extra)
    return meta


# --- reading ----------------------------------------------------------------------------
_ARCH_FROM_SAELENS = {
    "standard": "relu",
    "topk": "topk",
    "jumprelu": "jumprelu",
    "transcoder": "relu",
    "skip_transcoder": "relu",
    "jumprelu_transcoder": "jumprelu",
    "jumprelu_skip_transcoder": "jumprelu",
    "topk_transcoder": "topk",
    "topk_skip_transcoder": "topk",
}


# What cfg.json must hold before any of it is used (files from other people: see lmscope.validate).
# Sizes are bounded so that a config cannot make us allocate terabytes before the weights are read.
SAELENS_CFG_SCHEMA = {
    "d_in": Int(1, MAX_DIM),
    "d_sae": Int(1, MAX_LATENTS),
    "d_out": Int(1, MAX_DIM, required=False, nullable=True),
    "k": Int(1, MAX_LATENTS, required=False, nullable=True),
    "architecture": Str(100, required=False),
    "metadata": Obj(
        {
            "hook_name": Str(500, required=False, nullable=True),
            "hook_name_out": Str(500, required=False, nullable=True),
            "hf_hook_name": Str(500, required=False, nullable=True),
            "model_name": Str(500, required=False, nullable=True),
        },
        required=False,
        nullable=True,
    ),
}


def read_saelens_config(path: Path) -> dict[str, Any]:
    """cfg.json as a SAELens-6 style dict (pre-6.0 flat configs converted)."""
    raw = check(
        read_json(path / CFG_FILENAME, what="dictionary config"),
        SAELENS_CFG_SCHEMA,
        where=str(path / CFG_FILENAME),
    )
    meta = dict(raw.get("metadata") or {})
    if "architecture" not in raw or "metadata" not in raw:  # pre-6.0: one flat dict
        renames = {
            "hook_point": "hook_name",
            "hook_point_head_index": "hook_head_index",
            "activation_fn_str": "activation_fn",
        }
        raw = {renames.get(k, k): v for k, v in raw.items()}
        for key in (
            "model_name",
            "hook_name",
            "hook_head_index",
            "context_size",
            "prepend_bos",
            "dataset_path",
            "model_class_name",
            "model_from_pretrained_kwargs",
            "sae_lens_version",
        ):
            if key in raw:
                meta.setdefault(key, raw[key])
        arch = raw.get("architecture", "standard")
        kwargs = raw.get("activation_fn_kwargs") or {}
        if raw.get("activation_fn") == "topk" and kwargs.get("k") is not None:
            arch, raw["k"] = "topk", kwargs["k"]
        raw["architecture"] = arch
        raw.setdefault("apply_b_dec_to_input", True)
        norm = raw.get("normalize_activations", "none")
        raw["normalize_activations"] = {True: "expected_average_only_in", False: "none"}.get(
            norm, norm
        )
    raw["metadata"] = meta
    return raw


def load_saelens(path: str | Path, device: str | torch.device = "cpu") -> SparseDictionary:
    """A SAELens folder (written by SAELens or by us) -> SparseDictionary with the same outputs."""
    path = Path(path)
    raw = read_saelens_config(path)
    try:
        st = load_file(str(path / WEIGHTS_FILENAME))
    except (OSError, Exception) as e:  # safetensors raises its own error types
        raise UserError(f"cannot read {path / WEIGHTS_FILENAME}: {e}") from None
    arch_name = raw["architecture"]
    if arch_name not in _ARCH_FROM_SAELENS:
        raise UserError(
            f"{path}: SAELens architecture {arch_name!r} is not supported by lmscope "
            f"(supported: {', '.join(sorted(_ARCH_FROM_SAELENS))})"
        )
    meta = raw["metadata"]
    ours = meta.get("lmscope_config")
    if ours is not None:
        where = f"{path / CFG_FILENAME} metadata.lmscope_config"
        check(
            ours,
            {
                "d_in": Int(1, MAX_DIM),
                "d_sae": Int(1, MAX_LATENTS),
                "d_out": Int(1, MAX_DIM, required=False, nullable=True),
                "k": Int(1, MAX_LATENTS, required=False),
            },
            where=where,
        )
        for key in ("d_in", "d_sae"):
            if ours[key] != raw[key]:
                raise UserError(
                    f"{path / CFG_FILENAME}: {key}={raw[key]} but lmscope_config says "
                    f"{ours[key]}; the file was edited or damaged (re-download it)"
                )
        try:
            cfg = DictionaryConfig.from_dict(ours)
        except (TypeError, ValueError) as e:
            raise UserError(f"{where} is not valid ({str(e).splitlines()[0][:200]})") from None
    else:
        d_in, d_sae = int(raw["d_in"]), int(raw["d_sae"])
        d_out = int(raw["d_out"]) if "d_out" in raw else None
        names = ("hook_name", "hook_name_out", "hf_hook_name", "hf_hook_name_out")
        top = {k: raw[k] for k in names if isinstance(raw.get(k), str)}  # some loaders' place
        hook, out_hook = foreign_hooks({**top, **meta}, arch_name)
        cfg = DictionaryConfig(
            d_in=d_in,
            d_sae=d_sae,
            arch=_ARCH_FROM_SAELENS[arch_name],
            k=int(raw.get("k", 32)),
            d_out=d_out,
            skip="W_skip" in st,
            hook_name=hook,
            out_hook_name=out_hook,
            model_name=str(meta.get("model_name") or ""),
        )
    scales = _input_scales(raw, meta, path)
    return from_raw_state(
        cfg,
        st,
        apply_b_dec_to_input=bool(raw.get("apply_b_dec_to_input", True)),
        rescale_by_decoder_norm=bool(raw.get("rescale_acts_by_decoder_norm", False)),
        act_scale=scales[0],
        act_scale_out=scales[1],
    ).to(device)


def foreign_hooks(meta: dict[str, Any], arch_name: str) -> tuple[str, str | None]:
    """(hook, out hook) of a SAELens config in lmscope's names where the names alone decide
    (models/hook_names.py), else as written, for import_pretrained to resolve with the model.
    `hf_hook_name` (a module path, which SAELens's Gemma Scope 2 loader records next to its
    looser `hook_name`) wins when it maps; transcoders name their target in `hook_name_out`."""
    hook = ""
    for key in ("hf_hook_name", "hook_name"):
        name = hook_names.normalize(meta.get(key))
        hook = hook or name
        if name.startswith("blocks."):
            hook = name
            break
    out = None
    if "transcoder" in arch_name:
        for key in ("hf_hook_name_out", "hook_name_out"):
            name = hook_names.normalize(meta.get(key))
            out = out or name or None
            if name.startswith("blocks."):
                out = name
                break
    return hook, out


def _input_scales(raw: dict[str, Any], meta: dict[str, Any], path: Path) -> tuple[float, float]:
    norm = raw.get("normalize_activations", "none")
    if "lmscope_act_scale" in meta:
        return float(meta["lmscope_act_scale"]), float(meta["lmscope_act_scale_out"])
    if norm in ("none", None):
        return 1.0, 1.0
    if norm == "expected_average_only_in" and raw.get("norm_scaling_factor") is not None:
        s = float(raw["norm_scaling_factor"])
        return s, s
    raise UserError(
        f"{path}: normalize_activations={norm!r} needs run-time statistics lmscope cannot recover; "
        "fold the normalization into the weights in SAELens first (e.g. "
        "fold_activation_norm_scaling_factor)"
    )


@torch.no_grad()
def from_raw_state(
    cfg: DictionaryConfig,
    st: dict[str, Tensor],
    *,
    apply_b_dec_to_input: bool,
    rescale_by_decoder_norm: bool = False,
    act_scale: float = 1.0,
    act_scale_out: float = 1.0,
) -> SparseDictionary:
    """Build a dictionary from raw-space weights (the SAELens convention) and optional scales.

    With act_scale s and act_scale_out s_o (from our metadata; 1 for foreign files) the
    normalized-space parameters are W_enc*s_o/s, b_enc*s_o, b_dec*s_o, W_skip*s_o/s,
    threshold*s_o, and W_dec as saved (unit rows): the inverse of `saelens_state`.
    """
    st = {k: v.float() for k, v in st.items()}
    missing = [k for k in ("W_enc", "b_enc", "W_dec", "b_dec") if k not in st]
    if missing:
        raise UserError(f"dictionary weights lack {', '.join(missing)}")
    W_enc, b_enc, W_dec, b_dec = st["W_enc"], st["b_enc"], st["W_dec"], st["b_dec"]
    if tuple(W_enc.shape) != (cfg.d_in, cfg.d_sae) or tuple(W_dec.shape) != (
        cfg.d_sae,
        cfg.output_dim,
    ):
        raise UserError(
            f"weight shapes W_enc {tuple(W_enc.shape)}, W_dec {tuple(W_dec.shape)} do not match "
            "the config "
            f"(d_in={cfg.d_in}, d_sae={cfg.d_sae}, d_out={cfg.output_dim})"
        )
    threshold = st.get("threshold")
    if rescale_by_decoder_norm:
        # SAELens TopK option: pre-acts scaled by ||W_dec_i||, decoded acts divided by it.
        n = W_dec.norm(dim=1)
        W_enc, b_enc, W_dec = W_enc * n, b_enc * n, W_dec / n[:, None]
    if not apply_b_dec_to_input and not cfg.is_transcoder:
        # pre = x W_enc + b_enc == (x - b_dec) W_enc + (b_enc + b_dec W_enc): our SAEs subtract
        # b_dec.
        b_enc = b_enc + b_dec @ W_enc
    s, so = float(act_scale), float(act_scale_out)
    d = build(cfg)
    d.act_scale.fill_(s)
    d.act_scale_out.fill_(so)
    d.W_enc.copy_(W_enc * (so / s))
    d.b_enc.copy_(b_enc * so)
    d.W_dec.copy_(W_dec)
    d.b_dec.copy_(b_dec * so)
    if d.W_skip is not None:
        if "W_skip" not in st:
            raise UserError("a skip transcoder's weights lack W_skip")
        d.W_skip.copy_(st["W_skip"] * (so / s))
    if cfg.arch == "jumprelu":
        if threshold is None:
            raise UserError("a JumpReLU dictionary's weights lack `threshold`")
        d.log_threshold.copy_((threshold * so).clamp_min(1e-30).log())
    elif cfg.arch == "batchtopk":
        if threshold is not None:
            d.topk_threshold.fill_(float(threshold.float().mean()) * so)
            d.threshold_updates.fill_(1)
    return d


def read_sparsity(path: str | Path) -> Tensor | None:
    """log10 feature density [d_sae] from sparsity.safetensors, or None if absent."""
    p = Path(path) / SPARSITY_FILENAME
    if not p.exists():
        return None
    return load_file(str(p))["sparsity"]


__all__ = [
    "load_saelens",
    "save_saelens",
    "saelens_metadata",
    "read_sparsity",
    "from_raw_state",
    "saelens_architecture",
    "saelens_state",
]
