"""Gemma Scope 2 (google/gemma-scope-2-{size}-{pt,it}): SAEs, transcoders and CLTs on Gemma 3.

Every dictionary is one folder with `config.json`; the weights are safetensors with
lower-case keys:

    config.json   {"hf_hook_point_in", "hf_hook_point_out", "width", "model_name",
                   "architecture": "jump_relu", "l0", "affine_connection", "type"}
                  type "sae" | "transcoder" | "clt" (also "crosscoder", not read here).
                  Hooks are Hugging Face module paths: model.layers.N.output (resid_post),
                  model.layers.N.pre_feedforward_layernorm.output (the MLP input),
                  model.layers.N.post_feedforward_layernorm.output (what the MLP adds);
                  a CLT writes N as {all}. `width` counts all features (a CLT: every layer's).
    per layer     params.safetensors, folders like transcoder_all/layer_7_width_16k_l0_big_affine:
                  w_enc [d_in, n], w_dec [n, d_out], b_enc [n], b_dec [d_out], threshold [n],
                  optional affine_skip_connection [d_in, d_out] (added as x @ A)
    CLT           clt/width_262k_l0_medium[_affine]/params_layer_{i}.safetensors, one per source
                  layer i: w_enc [d, n], b_enc [n], threshold [n], b_dec [d] (the bias of target
                  layer i), w_dec [n, L, d] (decoders into EVERY layer; causality lives in the
                  weights, the rows into layers < i are zero), optional affine_skip_connection.

Encoding is `relu(x @ w_enc + b_enc) * (pre > threshold)`, nothing subtracted from x: equal to
our JumpReLU `pre * (pre > theta)` with theta = max(threshold, 0), exactly. A
transcoder's b_dec is an output bias; an SAE's is folded into b_enc by from_raw_state, as for
the first Gemma Scope (gemmascope.py). Reading a CLT keeps w_dec[:, i:] (what our CLT and
circuit-tracer's loader keep) and refuses a file whose dropped rows are not zero. lmscope's
CrossLayerTranscoder has no skip connection yet, so `_affine` CLTs are refused with that
reason; per-layer `_affine` transcoders load as skip transcoders (W_skip = A^T).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from ...errors import UserError
from ...models import hook_names
from ...validate import MAX_CONFIG_BYTES, read_json
from ..base import DictionaryConfig, SparseDictionary
from .circuit_tracer import _contiguous, _read, _shape
from .saelens import _atomic, from_raw_state

GS2_CONFIG = "config.json"
GS2_PARAMS = "params.safetensors"
GS2_KEYS = ("w_enc", "w_dec", "b_enc", "b_dec", "threshold")


def is_gs2_params(st: Mapping[str, Tensor]) -> bool:
    """Whether a safetensors dict has Gemma Scope 2's lower-case keys."""
    return "w_enc" in st and "w_dec" in st


def gs2_hook(hf_hook: str) -> str:
    """'model.layers.7.pre_feedforward_layernorm.output' -> 'blocks.7.mlp_in' ({all} ->
    'blocks.{layer}.mlp_in'), through models/hook_names.py; UserError for one with no lmscope
    hook (the attention SAEs' self_attn.o_proj.input)."""
    try:
        return hook_names.normalize(str(hf_hook), strict=True)
    except UserError as e:
        raise UserError(f"Gemma Scope 2 hook {hf_hook!r} has no lmscope hook point: {e}") from None


def read_gs2_config(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / GS2_CONFIG
    cfg = read_json(path, max_bytes=MAX_CONFIG_BYTES, what="Gemma Scope 2 config")
    if not isinstance(cfg, dict):
        raise UserError(f"{path} is not a JSON object")
    if cfg.get("architecture", "jump_relu") != "jump_relu":
        raise UserError(
            f"{path}: architecture {cfg.get('architecture')!r} is not Gemma Scope 2's jump_relu"
        )
    if cfg.get("type") not in ("sae", "transcoder", "clt"):
        raise UserError(
            f"{path}: type {cfg.get('type')!r} is not read by lmscope (sae, transcoder or clt)"
        )
    for key in ("hf_hook_point_in", "hf_hook_point_out"):
        if not isinstance(cfg.get(key, ""), str):
            raise UserError(f"{path}: {key} must be a string")
    return cfg


def gs2_params_to_dictionary(
    st: Mapping[str, Tensor],
    layer: int,
    *,
    hook_in: str = "blocks.{layer}.mlp_in",
    hook_out: str | None = "blocks.{layer}.mlp_out",
    model_name: str = "",
    where: Path | str = "",
) -> SparseDictionary:
    """One Gemma Scope 2 params.safetensors -> our JumpReLU SAE (hook_out None, or the same hook)
    or transcoder, same outputs. hook_in / hook_out: our names, or templates over {layer}."""
    hook_in = hook_in.format(layer=layer)
    hook_out = None if hook_out is None else hook_out.format(layer=layer)
    missing = [k for k in GS2_KEYS if k not in st]
    if missing:
        raise UserError(f"{where} lacks {', '.join(missing)}: not a Gemma Scope 2 params file")
    d_in, n = st["w_enc"].shape
    d_out = st["b_dec"].shape[0]
    _shape(st["w_dec"], (n, d_out), "w_dec", where)
    _shape(st["b_enc"], (n,), "b_enc", where)
    # relu(pre) * (pre > t) == pre * (pre > max(t, 0)): a negative threshold is exactly 0 here
    thr = st["threshold"].float().reshape(-1).clamp_min(0)
    _shape(thr, (n,), "threshold", where)
    raw = {
        "W_enc": st["w_enc"],
        "b_enc": st["b_enc"],
        "W_dec": st["w_dec"],
        "b_dec": st["b_dec"],
        "threshold": thr,
    }
    transcoder = hook_out is not None and hook_out != hook_in
    if "affine_skip_connection" in st:
        if not transcoder:
            raise UserError(f"{where}: an SAE with a skip connection is not a Gemma Scope 2 layout")
        _shape(st["affine_skip_connection"], (d_in, d_out), "affine_skip_connection", where)
        raw["W_skip"] = st["affine_skip_connection"].float().t()
    cfg = DictionaryConfig(
        d_in=d_in,
        d_sae=n,
        arch="jumprelu",
        d_out=d_out if transcoder else None,
        skip="W_skip" in raw,
        hook_name=hook_in,
        out_hook_name=hook_out if transcoder else None,
        model_name=model_name,
    )
    return from_raw_state(cfg, raw, apply_b_dec_to_input=False)


def _folder_layer(folder: Path) -> int | None:
    m = re.match(r"^layer_(\d+)_", folder.name)
    return int(m.group(1)) if m else None


def load_gemmascope2(folder: str | Path, *, model_name: str = "") -> tuple[int, SparseDictionary]:
    """A Gemma Scope 2 SAE or transcoder folder (config.json + params.safetensors) -> (layer,
    dictionary). The layer comes from hf_hook_point_in (else the folder name layer_N_...)."""
    folder = Path(folder)
    cfg = read_gs2_config(folder)
    if cfg["type"] == "clt":
        raise UserError(f"{folder} is a Gemma Scope 2 CLT; it loads as a cross-layer transcoder")
    kin = gs2_hook(cfg.get("hf_hook_point_in", ""))
    kout = kin
    if cfg["type"] == "transcoder":
        kout = gs2_hook(cfg.get("hf_hook_point_out", ""))
    layer = hook_names.layer_of(kin)
    if layer is None:
        layer = _folder_layer(folder)
    if layer is None:
        raise UserError(f"{folder}: cannot tell the layer from its config or folder name")
    path = folder / GS2_PARAMS
    if not path.is_file():
        raise UserError(f"{folder} lacks {GS2_PARAMS}: not a Gemma Scope 2 dictionary")
    d = gs2_params_to_dictionary(
        _read(path),
        layer,
        hook_in=kin,
        hook_out=kout,
        model_name=model_name or str(cfg.get("model_name") or ""),
        where=path,
    )
    return layer, d


def _clt_files(folder: Path) -> dict[int, Path]:
    files = {}
    for p in folder.glob("params_layer_*.safetensors"):
        m = re.fullmatch(r"params_layer_(\d+)\.safetensors", p.name)
        if m:
            files[int(m.group(1))] = p
    return files


def read_gemmascope2_clt(folder: str | Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """A Gemma Scope 2 CLT folder -> (CLTConfig fields, tensors in the clt.py contract)."""
    folder = Path(folder)
    cfg = read_gs2_config(folder) if (folder / GS2_CONFIG).is_file() else {"type": "clt"}
    if cfg["type"] != "clt":
        raise UserError(f"{folder} is a Gemma Scope 2 {cfg['type']}, not a CLT")
    if cfg.get("affine_connection"):
        raise UserError(
            f"{folder} is an affine (skip) CLT; lmscope's CrossLayerTranscoder has no skip "
            "connection yet: use the variant without _affine"
        )
    hook_in = gs2_hook(
        cfg.get("hf_hook_point_in") or "model.layers.{all}.pre_feedforward_layernorm.output"
    )
    hook_out = gs2_hook(
        cfg.get("hf_hook_point_out") or "model.layers.{all}.post_feedforward_layernorm.output"
    )
    files = _clt_files(folder)
    L = _contiguous(files, "params_layer_{i}.safetensors files", folder)
    W_enc, b_enc, b_dec, thr, st = [], [], [], [], {}
    d = n = None
    for i in range(L):
        p = _read(files[i])
        missing = [k for k in GS2_KEYS if k not in p]
        if missing:
            raise UserError(f"{files[i]} lacks {', '.join(missing)}: not a Gemma Scope 2 CLT file")
        if "affine_skip_connection" in p:
            raise UserError(
                f"{files[i]} has a skip connection; lmscope's CrossLayerTranscoder has none yet"
            )
        if d is None:
            d, n = p["w_enc"].shape
        _shape(p["w_enc"], (d, n), "w_enc", files[i])
        _shape(p["w_dec"], (n, L, d), "w_dec", files[i])
        _shape(p["b_enc"], (n,), "b_enc", files[i])
        _shape(p["b_dec"], (d,), "b_dec", files[i])
        t = p["threshold"].float().reshape(-1).clamp_min(0)  # exact, see gs2_params_to_dictionary
        _shape(t, (n,), "threshold", files[i])
        w = p["w_dec"].float()
        dropped = w[:, :i]
        if dropped.numel() and bool(dropped.ne(0).any()):
            raise UserError(
                f"{files[i]}: layer-{i} features decode into earlier layers (w_dec[:, :{i}] is "
                "not zero); a CLT writes only to its own and later layers"
            )
        W_enc.append(p["w_enc"].float())
        b_enc.append(p["b_enc"].float())
        b_dec.append(p["b_dec"].float())
        thr.append(t)
        st[f"W_dec.{i}"] = w[:, i:].contiguous()
    st["W_enc"] = torch.stack(W_enc)
    st["b_enc"] = torch.stack(b_enc)
    st["b_dec"] = torch.stack(b_dec)
    st["threshold"] = torch.stack(thr)
    fields = {
        "n_layers": L,
        "d_model": d,
        "d_sae": n,
        "arch": "jumprelu",
        "hook_in": hook_in,
        "hook_out": hook_out,
        "model_name": str(cfg.get("model_name") or ""),
    }
    return fields, st


def write_gemmascope2_clt(
    fields: Mapping[str, Any],
    st: Mapping[str, Tensor],
    out: str | Path,
    *,
    model_name: str = "",
    l0: float | None = None,
) -> list[Path]:
    """Contract tensors -> a Gemma Scope 2 CLT folder (config.json + params_layer_{i}, float32;
    decoder rows into earlier layers written as zeros)."""
    if fields.get("arch") != "jumprelu":
        raise UserError("Gemma Scope 2 CLTs are JumpReLU; a TopK CLT has no such file")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    L, d, n = int(fields["n_layers"]), int(fields["d_model"]), int(fields["d_sae"])
    written = []
    for i in range(L):
        w_dec = torch.zeros(n, L, d)
        w_dec[:, i:] = st[f"W_dec.{i}"].float()
        tensors = {
            "w_enc": st["W_enc"][i].float().contiguous(),
            "w_dec": w_dec,
            "b_enc": st["b_enc"][i].float().contiguous(),
            "b_dec": st["b_dec"][i].float().contiguous(),
            "threshold": st["threshold"][i].float().contiguous(),
        }
        path = out / f"params_layer_{i}.safetensors"
        _atomic(path, lambda p, t=tensors: save_file(t, p))
        written.append(path)
    cfg = {
        "hf_hook_point_in": hook_names.to_gemmascope2(
            str(fields.get("hook_in", "blocks.{layer}.mlp_in"))
        ),
        "hf_hook_point_out": hook_names.to_gemmascope2(
            str(fields.get("hook_out", "blocks.{layer}.mlp_out"))
        ),
        "width": L * n,
        "model_name": model_name or str(fields.get("model_name") or ""),
        "architecture": "jump_relu",
        "l0": l0,
        "affine_connection": False,
        "type": "clt",
    }
    import json

    path = out / GS2_CONFIG
    _atomic(path, lambda p: Path(p).write_text(json.dumps(cfg, indent=2)))
    written.append(path)
    return written


def load_gemmascope2_clt(folder: str | Path, device: str | torch.device = "cpu"):
    """A Gemma Scope 2 CLT folder -> lmscope CrossLayerTranscoder with the same outputs."""
    from .clt_state import clt_from_state

    fields, st = read_gemmascope2_clt(folder)
    return clt_from_state(fields, st).to(device)


__all__ = [
    "GS2_CONFIG",
    "GS2_PARAMS",
    "gs2_params_to_dictionary",
    "gs2_hook",
    "is_gs2_params",
    "load_gemmascope2",
    "load_gemmascope2_clt",
    "read_gemmascope2_clt",
    "read_gs2_config",
    "write_gemmascope2_clt",
]
