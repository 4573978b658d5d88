"""Probe artifact: a folder with `probe.safetensors` (direction, mean) and `probe.json` (everything
else).

    my_probe/
      probe.safetensors   direction [d_model], mean [d_model]
      probe.json          schema_version, kind, hook, layer, bias, threshold (+ threshold_format and
                          thresholds per text format), model fingerprint, datasets, metrics (the
                          validation choice, the test score with its interval, the entity split;
                          written last: marks a complete artifact)

Schema 2 (this version) added the train/validation/test entity split and the
per-format thresholds; schema 1 probes (chosen on test, one threshold calibrated
on restated statements) are still read, with their threshold marked
'uncalibrated' because its format is not the one lie-check reads.

The folder is built under a temporary name and renamed into place, so a
crash never leaves a half probe. Loading checks the fingerprint against the
model it is applied to: a probe read at another model's or layer's residual
stream would silently score noise.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors.torch import load_file, save_file

from ..errors import UserError
from ..layout import write_json_atomic
from ..validate import Num, Obj, Str, check, read_json
from .probes import Probe, layer_of

if TYPE_CHECKING:
    from ..models import LanguageModel

SCHEMA_VERSION = 2
READABLE = (1, 2)
WEIGHTS = "probe.safetensors"
META = "probe.json"
_META_SCHEMA = {
    "kind": Str(100),
    "hook": Str(500),
    "bias": Num(-1e30, 1e30),
    "threshold": Num(-1e30, 1e30, required=False),
    "info": Obj(required=False),
    "model": Obj(required=False),
}


def save_probe(
    probe: Probe,
    path: str | Path,
    *,
    fingerprint: dict,
    datasets: list[str],
    metrics: dict,
    force: bool = False,
) -> Path:
    path = Path(path)
    if path.exists() and not force:
        raise UserError(f"{path} exists; pass --force to overwrite it or choose another --out")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    try:
        save_file(
            {
                "direction": probe.direction.float().contiguous(),
                "mean": probe.mean.float().contiguous(),
            },
            str(tmp / WEIGHTS),
        )
        write_json_atomic(
            tmp / META,
            {
                "schema_version": SCHEMA_VERSION,
                "kind": probe.kind,
                "hook": probe.hook,
                "layer": layer_of(probe.hook),
                "d_model": int(probe.direction.numel()),
                "bias": probe.bias,
                "threshold": probe.threshold,
                "threshold_format": probe.threshold_format,
                "thresholds": {},
                "model": fingerprint,
                "datasets": datasets,
                "metrics": metrics,
                "info": probe.info,
            },
        )
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def load_probe(path: str | Path) -> tuple[Probe, dict]:
    """(Probe, metadata) from a probe folder; a missing or foreign folder is a one-line
    UserError."""
    path = Path(path)
    if not (path / META).is_file() or not (path / WEIGHTS).is_file():
        raise UserError(
            f"{path} is not a probe (no {META} + {WEIGHTS}); train one with `lmscope probe train`"
        )
    meta = check(
        read_json(path / META, what="probe metadata"), _META_SCHEMA, where=str(path / META)
    )
    if meta.get("schema_version") not in READABLE:
        raise UserError(
            f"{path}: probe schema_version {meta.get('schema_version')} is not supported "
            f"(this lmscope reads {', '.join(map(str, READABLE))})"
        )
    try:
        t = load_file(str(path / WEIGHTS))
    except Exception as e:  # safetensors raises its own error types (truncated file, bad header)
        raise UserError(
            f"cannot read {path / WEIGHTS} ({type(e).__name__}); retrain the probe "
            "or re-download it"
        ) from None
    if "direction" not in t or "mean" not in t:
        raise UserError(f"{path / WEIGHTS} lacks direction/mean: not a probe")
    fmt = meta.get("threshold_format", "uncalibrated")
    # Schema 1 stored a threshold calibrated on restated statements, not on the Q/A text lie-check
    # reads: fall back to the uncalibrated 0.5 rather than apply it to the wrong format.
    current = meta.get("schema_version") == SCHEMA_VERSION
    probe = Probe(
        kind=meta["kind"],
        hook=meta["hook"],
        direction=t["direction"],
        bias=float(meta["bias"]),
        mean=t["mean"],
        threshold=float(meta.get("threshold", 0.5)) if current else 0.5,
        threshold_format=fmt if current else "uncalibrated",
        info=meta.get("info", {}),
    )
    return probe, meta


def set_thresholds(path: str | Path, thresholds: dict[str, float], *, use: str = "qa") -> None:
    """Store truth thresholds per text format (e.g. {'qa': .., 'statement': ..}) and make
    thresholds[use]
    the one lie-check applies (atomic rewrite of probe.json)."""
    meta = check(
        read_json(Path(path) / META, what="probe metadata"),
        _META_SCHEMA,
        where=str(Path(path) / META),
    )
    meta["thresholds"] = {k: float(v) for k, v in thresholds.items()}
    meta["threshold"] = float(thresholds[use])
    meta["threshold_format"] = use
    write_json_atomic(Path(path) / META, meta)


def check_compatible(meta: dict, lm: LanguageModel, *, path: str = "probe") -> None:
    """Refuse a probe trained on another model, or whose hook/width this model lacks."""
    fp, ours = meta.get("model", {}), lm.fingerprint()
    for key in ("n_layers", "d_model", "vocab"):
        if key in fp and fp[key] != ours[key]:
            raise UserError(
                f"{path} was trained on {fp.get('model')!r} ({key}={fp[key]}) but the model is "
                f"{ours['model']!r} ({key}={ours[key]}); pass --model {fp.get('model')}"
            )
    if fp.get("model") not in (None, ours["model"]):
        raise UserError(
            f"{path} was trained on model {fp['model']!r}, not {ours['model']!r}; "
            f"pass --model {fp['model']}"
        )
    hook = meta["hook"]
    if hook not in lm.hooks.points:
        raise UserError(f"{path} reads hook {hook!r}, which {ours['model']!r} does not have")
    d = lm.hooks[hook].d
    if d != meta.get("d_model"):
        raise UserError(f"{path} has width {meta.get('d_model')} but {hook} has width {d}")


def probe_for(lm: LanguageModel, probe: Probe, hook: str | None = None) -> Probe:
    """The probe itself, or a one-line error if asked to read another hook than it was trained
    at."""
    if hook is not None and hook != probe.hook:
        raise UserError(
            f"the probe was trained at {probe.hook}, not {hook}; train one at {hook} "
            "with `lmscope probe train --layers ...`"
        )
    return probe


def open_probe(path: str, model: str | None = None, device: str = "cpu"):
    """(probe, meta, lm): a saved probe with the model it reads (its own unless `model` is given),
    checked to fit that model."""
    from ..models.load import load_model

    probe, meta = load_probe(path)
    lm = load_model(model or meta["model"]["model"], device=device)
    check_compatible(meta, lm, path=path)
    return probe, meta, lm


__all__ = [
    "SCHEMA_VERSION",
    "check_compatible",
    "load_probe",
    "open_probe",
    "probe_for",
    "save_probe",
    "set_thresholds",
]
