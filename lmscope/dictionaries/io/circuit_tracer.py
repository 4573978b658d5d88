"""circuit-tracer's transcoder files (decoderesearch/circuit-tracer 0.5): read and write.

A transcoder folder (local, in circuit-tracer's cache, or a Hugging Face repository) holds
`config.yaml` and the weights:

    config.yaml   model_kind: transcoder_set | cross_layer_transcoder
                  model_name, feature_input_hook, feature_output_hook  (TransformerLens names
                  relative to a block: mlp.hook_in, hook_resid_mid, hook_mlp_out, mlp.hook_out)
                  optional `transcoders:` a list (one per layer) of files or hf:// URIs, which
                  may be Gemma Scope 2 files (gemmascope2.py reads those)
    per-layer     layer_{i}.safetensors:  W_enc [d_tc, d_model]   (nn.Linear order: the transpose
                  of ours), W_dec [d_tc, d_model], b_enc [d_tc], b_dec [d_model],
                  optional activation_function.threshold [d_tc] (JumpReLU; absent: ReLU) and
                  W_skip [d_model, d_model] (added as x @ W_skip.T, our convention)
    CLT           W_enc_{i}.safetensors:  W_enc_{i} [d_tc, d_model], b_enc_{i} [d_tc],
                  b_dec_{i} [d_model], optional threshold_{i} [d_tc]
                  W_dec_{i}.safetensors:  W_dec_{i} [d_tc, n_layers - i, d_model]

circuit-tracer encodes `act(x @ W_enc.T + b_enc)` with nothing subtracted from x, JumpReLU
being `x * (x > threshold)`, and decodes `acts @ W_dec + b_dec (+ x @ W_skip.T)`, so a file
maps exactly onto our transcoders (b_dec in output space) and onto the CLT contract
(clt.py: W_enc [L, d, n] is the stack of the transposes, W_dec[l] is W_dec_{l} as is). Its CLT
files carry no skip matrix (its loader reads none). Its file loaders know no TopK, so a TopK
dictionary cannot be exported without changing what it computes: we refuse it rather than
write a file circuit-tracer would read as ReLU ("loaded successfully but incorrectly").

Hook names are mapped by models/hook_names.py (one table for every format): `mlp.hook_in` (the
MLP's input after its pre-norm) is our mlp_in; `hook_mlp_out` (what the MLP adds to the
residual, after Gemma's post-norm) is our mlp_out; `mlp.hook_out` (the MLP module's own output)
is our mlp_out on models without a post-MLP norm (Llama, Qwen) and has no lmscope name on Gemma:
it is resolved against the model at import. Exports write `mlp.hook_in` / `hook_mlp_out`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from ...errors import UserError
from ...models import hook_names
from ..base import DictionaryConfig, SparseDictionary
from .saelens import _atomic, from_raw_state, saelens_state

CT_CONFIG = "config.yaml"
TRANSCODER_SET = "transcoder_set"
CROSS_LAYER = "cross_layer_transcoder"
MAX_CONFIG_BYTES = 1 << 20

_BLOCK_PREFIX = re.compile(r"^blocks\.(\d+|\{layer\})\.")


# --- hook names (models/hook_names.py does the mapping; circuit-tracer writes them per block) ---
def ct_hook(hook: str, *, side: str) -> str:
    """A circuit-tracer hook ('mlp.hook_in', 'blocks.{layer}.hook_mlp_out', 'blocks.3.hook_mlp_out')
    -> our template 'blocks.{layer}.mlp_in'. A name whose tensor depends on the model
    (`mlp.hook_out`: our mlp_out on Llama, nothing on Gemma) stays in TransformerLens form
    ('blocks.{layer}.mlp.hook_out'); import_pretrained resolves it with the model."""
    rel = _BLOCK_PREFIX.sub("", str(hook))
    try:
        return hook_names.normalize(f"blocks.{{layer}}.{rel}", strict=True)
    except UserError as e:
        raise UserError(f"circuit-tracer {side} {hook!r} has no lmscope hook point: {e}") from None


def ct_hook_name(our_hook: str) -> str:
    """Our 'blocks.3.mlp_in' (or template) -> circuit-tracer's block-relative 'mlp.hook_in'."""
    try:
        return hook_names.to_block_relative(our_hook)
    except (UserError, KeyError):
        raise UserError(
            f"hook {our_hook!r} has no circuit-tracer name; circuit-tracer transcoders read and "
            "write lmscope block hooks (mlp_in -> mlp_out)"
        ) from None


# --- config.yaml ----------------------------------------------------------------------------
def read_ct_config(folder: str | Path) -> dict[str, Any]:
    """config.yaml of a circuit-tracer folder, checked (UserError when missing or malformed)."""
    path = Path(folder) / CT_CONFIG
    if not path.is_file():
        raise UserError(f"{folder} has no {CT_CONFIG}: not a circuit-tracer transcoder folder")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise UserError(f"{path} is larger than {MAX_CONFIG_BYTES} bytes: not a transcoder config")
    try:
        import yaml
    except ImportError:  # pyyaml comes with huggingface_hub / transformers
        raise UserError("reading circuit-tracer configs needs pyyaml: pip install pyyaml") from None
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise UserError(f"cannot read {path}: {str(e).splitlines()[0][:200]}") from None
    if not isinstance(cfg, dict):
        raise UserError(f"{path} is not a mapping of settings")
    kind = cfg.get("model_kind")
    if kind not in (TRANSCODER_SET, CROSS_LAYER):
        raise UserError(f"{path}: model_kind {kind!r} is not {TRANSCODER_SET!r} or {CROSS_LAYER!r}")
    for key in ("feature_input_hook", "feature_output_hook"):
        if not isinstance(cfg.get(key), str):
            raise UserError(f"{path} lacks {key} (a TransformerLens hook name, e.g. mlp.hook_in)")
    tcs = cfg.get("transcoders")
    if tcs is not None and not (isinstance(tcs, list) and all(isinstance(t, str) for t in tcs)):
        raise UserError(f"{path}: `transcoders` must be a list of file paths or hf:// URIs")
    return cfg


def _write_config(out: Path, cfg: dict[str, Any]) -> Path:
    import yaml

    path = out / CT_CONFIG
    _atomic(path, lambda p: Path(p).write_text(yaml.safe_dump(cfg, sort_keys=False)))
    return path


# --- safetensors helpers --------------------------------------------------------------------
def _read(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own types (truncated file, bad header)
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"cannot read {path}: {first}") from None


def _need(st: dict[str, Tensor], keys: tuple[str, ...], where: Path | str) -> None:
    missing = [k for k in keys if k not in st]
    if missing:
        raise UserError(f"{where} lacks {', '.join(missing)}: not a circuit-tracer transcoder file")


def _shape(t: Tensor, want: tuple[int, ...], name: str, where: Path | str) -> None:
    if tuple(t.shape) != want:
        raise UserError(f"{where}: {name} has shape {tuple(t.shape)}, expected {want}")


def check_threshold(thr: Tensor, where: Path | str) -> None:
    """Our JumpReLU thresholds are exp(log theta) > 0; a negative one would change outputs."""
    bad = int((thr < 0).sum())
    if bad:
        raise UserError(
            f"{where}: {bad} JumpReLU thresholds are negative; lmscope's JumpReLU needs "
            "thresholds >= 0"
        )


# --- per-layer transcoders ------------------------------------------------------------------
def ct_layer_to_dictionary(
    st: dict[str, Tensor],
    layer: int,
    *,
    hook_in: str = "blocks.{layer}.mlp_in",
    hook_out: str = "blocks.{layer}.mlp_out",
    model_name: str = "",
    where: Path | str = "",
) -> SparseDictionary:
    """One circuit-tracer layer file's tensors -> our JumpReLU (or ReLU) transcoder, same
    outputs. hook_in / hook_out: templates over {layer} (ct_hook)."""
    _need(st, ("W_enc", "W_dec", "b_enc", "b_dec"), where)
    d_sae, d_in = st["W_enc"].shape
    d_out = st["b_dec"].shape[0]
    _shape(st["W_dec"], (d_sae, d_out), "W_dec", where)
    _shape(st["b_enc"], (d_sae,), "b_enc", where)
    thr = st.get("activation_function.threshold", st.get("threshold"))
    raw = {
        "W_enc": st["W_enc"].float().t(),
        "b_enc": st["b_enc"],
        "W_dec": st["W_dec"],
        "b_dec": st["b_dec"],
    }
    if thr is not None:
        thr = thr.float().reshape(-1)
        _shape(thr, (d_sae,), "threshold", where)
        check_threshold(thr, where)
        raw["threshold"] = thr
    if "W_skip" in st:
        _shape(st["W_skip"], (d_out, d_in), "W_skip", where)
        raw["W_skip"] = st["W_skip"]
    cfg = DictionaryConfig(
        d_in=d_in,
        d_sae=d_sae,
        arch="jumprelu" if thr is not None else "relu",
        d_out=d_out,
        skip="W_skip" in st,
        hook_name=hook_in.format(layer=layer),
        out_hook_name=hook_out.format(layer=layer),
        model_name=model_name,
    )
    return from_raw_state(cfg, raw, apply_b_dec_to_input=False)


def _layer_files(folder: Path) -> dict[int, Path]:
    files = {}
    for p in folder.glob("layer_*.safetensors"):
        m = re.fullmatch(r"layer_(\d+)\.safetensors", p.name)
        if m:
            files[int(m.group(1))] = p
    return files


def _contiguous(layers, what: str, where: Path | str) -> int:
    """Number of layers; UserError unless they are exactly 0..n-1 (circuit-tracer's rule)."""
    layers = sorted(layers)
    if not layers:
        raise UserError(f"{where} holds no {what}")
    if layers != list(range(len(layers))):
        missing = sorted(set(range(layers[-1] + 1)) - set(layers))
        raise UserError(
            f"{where}: {what} must cover layers 0..{layers[-1]} without gaps; missing "
            f"{', '.join(map(str, missing[:10]))}"
        )
    return len(layers)


def load_circuit_tracer_transcoders(
    folder: str | Path, *, model_name: str = "", cache_dir: str | Path | None = None
) -> dict[int, SparseDictionary]:
    """A circuit-tracer transcoder set (folder with config.yaml, or bare layer_{i}.safetensors
    files) -> {layer: transcoder}. A config's `transcoders:` list may name Gemma Scope 2 files
    (keys w_enc/w_dec/...), local files or hf:// URIs (resolved through the HF cache/hub)."""
    from .gemmascope2 import gs2_params_to_dictionary, is_gs2_params
    from .hub import resolve_file

    folder = Path(folder)
    has_cfg = (folder / CT_CONFIG).is_file()
    cfg = read_ct_config(folder) if has_cfg else {}
    if has_cfg and cfg["model_kind"] != TRANSCODER_SET:
        raise UserError(f"{folder} holds a cross-layer transcoder, not a per-layer transcoder set")
    kin = ct_hook(cfg.get("feature_input_hook", "mlp.hook_in"), side="feature_input_hook")
    kout = ct_hook(cfg.get("feature_output_hook", "hook_mlp_out"), side="feature_output_hook")
    model_name = model_name or str(cfg.get("model_name") or "")
    if cfg.get("transcoders"):
        files = {
            i: resolve_file(s, base=folder, cache_dir=cache_dir)
            for i, s in enumerate(cfg["transcoders"])
        }
    else:
        files = _layer_files(folder)
        _contiguous(files, "layer_{i}.safetensors files", folder)
    out = {}
    for layer, path in sorted(files.items()):
        st = _read(path)
        if is_gs2_params(st):
            out[layer] = gs2_params_to_dictionary(
                st, layer, hook_in=kin, hook_out=kout, model_name=model_name, where=path
            )
        else:
            out[layer] = ct_layer_to_dictionary(
                st, layer, hook_in=kin, hook_out=kout, model_name=model_name, where=path
            )
    return out


def save_circuit_tracer_transcoders(
    dicts: Mapping[int, SparseDictionary],
    out: str | Path,
    *,
    model_name: str = "",
    scan: str | None = None,
) -> list[Path]:
    """Write per-layer transcoders as circuit-tracer reads them: config.yaml + layer_{i}.safetensors
    (float32). The folder loads with circuit-tracer's load_transcoder_set / its cache loader
    (`CIRCUIT_TRACER_CACHE_DIR/<name>/`) and can be pushed to the hub as a transcoder repo."""
    out = Path(out)
    if not dicts:
        raise UserError("no transcoders to export")
    _contiguous(dicts, "transcoders", "the export")
    hooks_in, hooks_out = set(), set()
    widths = {d.d_sae for d in dicts.values()}
    if len(widths) > 1:
        raise UserError(
            "circuit-tracer needs the same number of features in every layer; these have "
            f"{sorted(widths)}"
        )
    for layer, d in dicts.items():
        c = d.cfg
        if not c.is_transcoder:
            raise UserError(
                f"{c.hook_name or layer} is an SAE; circuit-tracer loads transcoders "
                "(mlp_in -> mlp_out)"
            )
        if c.arch == "topk":
            raise UserError(
                f"{c.hook_name} is a TopK transcoder: circuit-tracer's files have no TopK "
                "activation (it would load it as ReLU and compute something else); train with "
                "--arch jumprelu or batchtopk to export"
            )
        for hook, what in ((c.hook_name, "reads"), (c.out_hook_name or "", "writes")):
            if hook_names.layer_of(hook) != layer:
                raise UserError(
                    f"the layer-{layer} transcoder {what} {hook!r}: circuit-tracer's layer i must "
                    "read and write layer i"
                )
        hooks_in.add(ct_hook_name(c.hook_name))
        hooks_out.add(ct_hook_name(c.out_hook_name or ""))
    if len(hooks_in) > 1 or len(hooks_out) > 1:
        raise UserError(
            f"circuit-tracer needs one input and one output hook for every layer; got "
            f"{sorted(hooks_in)} -> {sorted(hooks_out)}"
        )
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for layer, d in sorted(dicts.items()):
        st = saelens_state(d)  # raw units, latents as lmscope's encode gives them
        tensors = {
            "W_enc": st["W_enc"].t().contiguous(),
            "W_dec": st["W_dec"].contiguous(),
            "b_enc": st["b_enc"].contiguous(),
            "b_dec": st["b_dec"].contiguous(),
        }
        thr = getattr(d, "threshold", None)
        if thr is not None:
            tensors["activation_function.threshold"] = st["threshold"].reshape(-1).contiguous()
        if "W_skip" in st:
            tensors["W_skip"] = st["W_skip"].contiguous()
        path = out / f"layer_{layer}.safetensors"
        _atomic(path, lambda p, t=tensors: save_file({k: v.cpu() for k, v in t.items()}, p))
        written.append(path)
    cfg = {
        "model_kind": TRANSCODER_SET,
        "model_name": model_name,
        "feature_input_hook": hooks_in.pop(),
        "feature_output_hook": hooks_out.pop(),
    }
    if scan:
        cfg["scan"] = scan
    written.append(_write_config(out, cfg))  # last: a folder with a config is complete
    return written


# --- cross-layer transcoders -----------------------------------------------------------------
def clt_hook_templates(cfg: dict[str, Any]) -> tuple[str, str]:
    """(hook_in, hook_out) templates of a CLT from circuit-tracer's config hooks."""
    kin = ct_hook(cfg.get("feature_input_hook", "hook_resid_mid"), side="feature_input_hook")
    kout = ct_hook(cfg.get("feature_output_hook", "hook_mlp_out"), side="feature_output_hook")
    return kin, kout


def read_circuit_tracer_clt(folder: str | Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """A circuit-tracer CLT folder -> (CLTConfig fields, tensors in the clt.py contract:
    W_enc [L, d, n], b_enc [L, n], b_dec [L, d], W_dec.{l} [n, L - l, d], threshold [L, n]).

    A file without thresholds is a ReLU CLT: it becomes a JumpReLU CLT with thresholds 0,
    which computes the same function (x * (x > 0) == relu(x))."""
    folder = Path(folder)
    cfg = read_ct_config(folder) if (folder / CT_CONFIG).is_file() else {}
    if cfg and cfg["model_kind"] != CROSS_LAYER:
        raise UserError(f"{folder} holds a per-layer transcoder set, not a cross-layer transcoder")
    enc = {}
    for p in folder.glob("W_enc_*.safetensors"):
        m = re.fullmatch(r"W_enc_(\d+)\.safetensors", p.name)
        if m:
            enc[int(m.group(1))] = p
    L = _contiguous(enc, "W_enc_{i}.safetensors files", folder)
    W_enc, b_enc, b_dec, thr, st = [], [], [], [], {}
    n = d = None
    for i in range(L):
        e = _read(enc[i])
        _need(e, (f"W_enc_{i}", f"b_enc_{i}", f"b_dec_{i}"), enc[i])
        if n is None:
            n, d = e[f"W_enc_{i}"].shape
        _shape(e[f"W_enc_{i}"], (n, d), f"W_enc_{i}", enc[i])
        _shape(e[f"b_enc_{i}"], (n,), f"b_enc_{i}", enc[i])
        _shape(e[f"b_dec_{i}"], (d,), f"b_dec_{i}", enc[i])
        W_enc.append(e[f"W_enc_{i}"].float().t())
        b_enc.append(e[f"b_enc_{i}"].float())
        b_dec.append(e[f"b_dec_{i}"].float())
        if f"threshold_{i}" in e:
            t = e[f"threshold_{i}"].float().reshape(-1)
            _shape(t, (n,), f"threshold_{i}", enc[i])
            thr.append(t)
        dec_p = folder / f"W_dec_{i}.safetensors"
        if not dec_p.is_file():
            raise UserError(f"{folder} lacks W_dec_{i}.safetensors (the layer-{i} decoders)")
        w = _read(dec_p)
        _need(w, (f"W_dec_{i}",), dec_p)
        _shape(w[f"W_dec_{i}"], (n, L - i, d), f"W_dec_{i}", dec_p)
        st[f"W_dec.{i}"] = w[f"W_dec_{i}"].float()
    if thr and len(thr) != L:
        raise UserError(f"{folder}: only {len(thr)} of {L} layers have JumpReLU thresholds")
    st["W_enc"] = torch.stack(W_enc)
    st["b_enc"] = torch.stack(b_enc)
    st["b_dec"] = torch.stack(b_dec)
    st["threshold"] = torch.stack(thr) if thr else torch.zeros(L, n)
    check_threshold(st["threshold"], folder)
    hook_in, hook_out = clt_hook_templates(cfg)
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


def write_circuit_tracer_clt(
    fields: Mapping[str, Any],
    st: Mapping[str, Tensor],
    out: str | Path,
    *,
    model_name: str = "",
    scan: str | None = None,
) -> list[Path]:
    """Contract tensors (see read_circuit_tracer_clt) -> circuit-tracer's CLT folder: config.yaml,
    W_enc_{i}.safetensors, W_dec_{i}.safetensors (float32)."""
    if fields.get("arch") != "jumprelu":
        raise UserError(
            "circuit-tracer's CLT files have no TopK activation (its loader would read the CLT "
            "as ReLU and compute something else); export a JumpReLU CLT"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    L = int(fields["n_layers"])
    written = []
    for i in range(L):
        enc = {
            f"W_enc_{i}": st["W_enc"][i].t().contiguous().float(),
            f"b_enc_{i}": st["b_enc"][i].contiguous().float(),
            f"b_dec_{i}": st["b_dec"][i].contiguous().float(),
            f"threshold_{i}": st["threshold"][i].contiguous().float(),
        }
        dec = {f"W_dec_{i}": st[f"W_dec.{i}"].contiguous().float()}
        for name, tensors in ((f"W_enc_{i}", enc), (f"W_dec_{i}", dec)):
            path = out / f"{name}.safetensors"
            _atomic(path, lambda p, t=tensors: save_file({k: v.cpu() for k, v in t.items()}, p))
            written.append(path)
    cfg = {
        "model_kind": CROSS_LAYER,
        "model_name": model_name or str(fields.get("model_name") or ""),
        "feature_input_hook": ct_hook_name(str(fields.get("hook_in", "blocks.{layer}.mlp_in"))),
        "feature_output_hook": ct_hook_name(str(fields.get("hook_out", "blocks.{layer}.mlp_out"))),
    }
    if scan:
        cfg["scan"] = scan
    written.append(_write_config(out, cfg))
    return written


def load_circuit_tracer_clt(folder: str | Path, device: str | torch.device = "cpu"):
    """A circuit-tracer CLT folder -> lmscope CrossLayerTranscoder with the same outputs."""
    from .clt_state import clt_from_state

    fields, st = read_circuit_tracer_clt(folder)
    return clt_from_state(fields, st).to(device)


def save_circuit_tracer_clt(clt, out: str | Path, *, model_name: str = "", scan=None) -> list[Path]:
    """An lmscope CrossLayerTranscoder -> circuit-tracer's CLT folder (write_circuit_tracer_clt)."""
    from .clt_state import clt_to_state

    fields, st = clt_to_state(clt)
    return write_circuit_tracer_clt(fields, st, out, model_name=model_name, scan=scan)


__all__ = [
    "CT_CONFIG",
    "ct_hook",
    "ct_hook_name",
    "ct_layer_to_dictionary",
    "load_circuit_tracer_clt",
    "load_circuit_tracer_transcoders",
    "read_circuit_tracer_clt",
    "read_ct_config",
    "save_circuit_tracer_clt",
    "save_circuit_tracer_transcoders",
    "write_circuit_tracer_clt",
]
