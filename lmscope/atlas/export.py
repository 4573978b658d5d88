"""`lmscope export`: hand an atlas to other tools.

- saelens: one SAELens folder per dictionary (cfg.json, sae_weights.safetensors) plus
  sparsity.safetensors = log10 firing density from the profile (what SAELens / SAEDashboard
  read as feature sparsity).
- neuronpedia-json: per dictionary a `batch-0.json` shaped like SAEDashboard's Neuronpedia
  runner output, which Neuronpedia's upload reads: {model_id, layer, sae_set, features: [{
  feature_index, frac_nonzero, maxActApprox, pos_str/pos_values (promoted tokens),
  neg_str/neg_values (suppressed), freq_hist_data_bar_values/_heights (PARALLEL lists: bin lower
  edges and counts of nonzero activations), activations: [{tokens, values, bin_min, bin_max,
  bin_contains, qualifying_token_index}], explanations: [{description, explanationModelName,
  typeName}]}]}. Top examples carry bin_min = -1 (the "top activations" group); quantile samples
  carry their octave bucket's [bin_min, bin_max). Logit histograms are not stored, so
  logits_hist_data_* are empty lists.
- parquet: the database tables as parquet files (features, examples, logit_effects,
  explanations, scores) with a `hook` column; needs pyarrow (`pip install lmscope[data]`).
- circuit-tracer: the atlas's per-layer transcoders (or, given a CLT folder instead of an atlas,
  the cross-layer transcoder) in circuit-tracer's files: config.yaml + layer_{i}.safetensors
  (or W_enc_{i}/W_dec_{i}.safetensors); dictionaries/io/circuit_tracer.py.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from typing import Literal

from ..dictionaries.folder import DictionaryFolder
from ..errors import UserError
from ..layout import AtlasLayout, hook_dirname, write_json_atomic

Format = Literal["saelens", "neuronpedia-json", "parquet", "circuit-tracer"]
FORMATS = ("saelens", "neuronpedia-json", "parquet", "circuit-tracer")


def _prepare_out(out: Path, force: bool) -> None:
    if out.exists() and any(out.iterdir()) and not force:
        raise UserError(f"{out} exists and is not empty; pass --force to write into it")
    out.mkdir(parents=True, exist_ok=True)


def export_atlas(atlas: str, fmt: str, out: str | Path, *, force: bool = False) -> list[Path]:
    """Write the atlas in format `fmt` under `out`. Returns the files written."""
    from .db import open_atlas_db

    out = Path(out)
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; choose {', '.join(FORMATS)}")
    if fmt == "circuit-tracer":
        return _circuit_tracer(atlas, out, force)
    layout = AtlasLayout(atlas)
    manifest = layout.read()
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise UserError("parquet export needs pyarrow: pip install 'lmscope[data]'") from None
    folder = None
    if fmt == "saelens":  # never pass on a damaged dictionary: each one must load before any copy
        folder = DictionaryFolder.open(layout)
        folder.load(folder.select())
    db = open_atlas_db(layout, required=fmt != "saelens")  # before `out` is touched
    try:
        _prepare_out(out, force)
        if folder is not None:
            return _saelens(folder, db, out)
        if fmt == "neuronpedia-json":
            return _neuronpedia(manifest, db, out)
        return _parquet(db, out)
    finally:
        if db is not None:
            db.close()


def _circuit_tracer(atlas: str, out: Path, force: bool) -> list[Path]:
    from ..dictionaries.clt import CrossLayerTranscoder, is_clt_folder
    from ..dictionaries.io.circuit_tracer import (
        save_circuit_tracer_clt,
        save_circuit_tracer_transcoders,
    )

    if is_clt_folder(atlas):
        clt = CrossLayerTranscoder.load(atlas)
        _prepare_out(out, force)
        return save_circuit_tracer_clt(clt, out, model_name=clt.cfg.model_name)
    folder = DictionaryFolder.open(atlas)
    dicts = folder.load(folder.select())
    by_layer = {}
    for hook, d in dicts.items():
        if not d.cfg.is_transcoder:
            continue  # SAEs have no place in a transcoder set
        m = re.match(r"^blocks\.(\d+)\.", hook)
        if m is None:
            raise UserError(f"transcoder {hook!r} names no layer (blocks.L....); cannot export it")
        by_layer[int(m.group(1))] = d
    if not by_layer:
        raise UserError(f"atlas {atlas} holds no transcoders; circuit-tracer loads transcoders")
    _prepare_out(out, force)
    return save_circuit_tracer_transcoders(by_layer, out, model_name=folder.model)


def _saelens(folder: DictionaryFolder, db, out: Path) -> list[Path]:
    import torch
    from safetensors.torch import save_file

    written = []
    for hook in folder.select():
        dst = out / hook_dirname(hook)
        shutil.copytree(folder.path(hook), dst, dirs_exist_ok=True)
        if db is not None and hook in {d.hook for d in db.dictionaries()}:
            rows = db.densities(hook)
            dens = torch.full((max((i for i, _, _ in rows), default=-1) + 1,), 0.0)
            for i, dn, _ in rows:
                dens[i] = dn or 0.0
            save_file(
                {"sparsity": torch.log10(dens.clamp_min(1e-10))}, str(dst / "sparsity.safetensors")
            )
        written += sorted(p for p in dst.rglob("*") if p.is_file())
    return written


def _layer_of(hook: str) -> str:
    parts = hook.split(".")
    return parts[1] if len(parts) > 2 and parts[1].isdigit() else hook


def _neuronpedia(manifest: dict, db, out: Path) -> list[Path]:
    from .profile import bucket_range

    written = []
    model = Path(str(manifest.get("model", "model"))).name
    for info in db.dictionaries():
        feats = []
        for i in range(info.d_sae):
            p = db.feature(info.hook, i)
            hist = p.histogram  # Neuronpedia gets the nonempty bins only
            edges_counts = [(e, c) for e, c in zip(hist.edges, hist.counts) if c] if hist else []
            acts = []
            for ex in p.top:
                acts.append(
                    {
                        "tokens": ex.tokens,
                        "values": ex.acts,
                        "bin_min": -1,
                        "bin_max": p.max_act,
                        "bin_contains": None,
                        "qualifying_token_index": ex.position,
                    }
                )
            for ex in p.quantiles:
                lo, hi = bucket_range(ex.bucket or 0)
                acts.append(
                    {
                        "tokens": ex.tokens,
                        "values": ex.acts,
                        "bin_min": lo,
                        "bin_max": hi if math.isfinite(hi) else p.max_act,
                        "bin_contains": None,
                        "qualifying_token_index": ex.position,
                    }
                )
            feats.append(
                {
                    "feature_index": i,
                    "frac_nonzero": p.density or 0.0,
                    "maxActApprox": p.max_act or 0.0,
                    "pos_str": [x.token for x in p.promoted],
                    "pos_values": [x.value for x in p.promoted],
                    "neg_str": [x.token for x in p.suppressed],
                    "neg_values": [x.value for x in p.suppressed],
                    "freq_hist_data_bar_values": [e for e, _ in edges_counts],
                    "freq_hist_data_bar_heights": [c for _, c in edges_counts],
                    "logits_hist_data_bar_values": [],
                    "logits_hist_data_bar_heights": [],
                    "activations": acts,
                    "explanations": [
                        {
                            "description": e.text,
                            "explanationModelName": e.method,
                            "typeName": f"lmscope-{e.method}-v{e.version}",
                        }
                        for e in p.explanations
                    ],
                }
            )
        path = out / hook_dirname(info.hook) / "batch-0.json"
        write_json_atomic(
            path,
            {
                "model_id": model,
                "layer": _layer_of(info.hook),
                "sae_set": info.hook,
                "hook_name": info.hook,
                "features": feats,
            },
        )
        written.append(path)
    return written


def _parquet(db, out: Path) -> list[Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    hooks = "(SELECT hook FROM dictionaries d WHERE d.id = t.dictionary) AS hook"
    queries = {
        "features": f"SELECT {hooks}, idx, density, fires, max_act, mean_act, mean_firing, "
        "histogram, label FROM features t",
        "logit_effects": f"SELECT {hooks}, idx, kind, rank, token_id, token, value FROM "
        "logit_effects t",
        "explanations": f"SELECT {hooks}, id, idx, method, version, text, created, details FROM "
        "explanations t",
        "scores": "SELECT id, explanation_id, scorer, metric, value, n_pos, n_neg, details, "
        "created FROM scores",
    }
    written = []
    tables = {name: _rows(db.conn.execute(sql)) for name, sql in queries.items()}
    tables["examples"] = _example_rows(db)
    for name in ("features", "examples", "logit_effects", "explanations", "scores"):
        cols, rows = tables[name]
        table = (
            pa.table({c: [r[j] for r in rows] for j, c in enumerate(cols)})
            if rows
            else pa.table({c: pa.array([], pa.null()) for c in cols})
        )
        path = out / f"{name}.parquet"
        pq.write_table(table, path)
        written.append(path)
    write_json_atomic(
        out / "README.json",
        {
            "tables": ["features", "examples", "logit_effects", "explanations", "scores"],
            "json_columns": [
                "features.histogram",
                "examples.tokens",
                "examples.token_ids",
                "examples.acts",
                "explanations.details",
                "scores.details",
            ],
        },
    )
    written.append(out / "README.json")
    return written


def _rows(cur) -> tuple[list[str], list[tuple]]:
    return [c[0] for c in cur.description], cur.fetchall()


def _example_rows(db) -> tuple[list[str], list[tuple]]:
    """One row per example, windows decoded (the DB packs them per feature and kind)."""
    cols = ["hook", "idx", "kind", "bucket", "rank", "score", "token_id", "tokens", "token_ids",
            "acts", "position"]  # fmt: skip
    rows = []
    for d in db.dictionaries():
        did = db._dict_id(d.hook)
        idxs = [i for (i,) in db._q("SELECT idx FROM features WHERE dictionary = ?", (did,))]
        for s in range(0, len(idxs), 512):
            for idx, kinds in db._examples(did, idxs[s : s + 512], with_ids=True).items():
                for kind, exs in kinds.items():
                    for r, e in enumerate(exs):
                        rows.append((d.hook, idx, kind, e.bucket, r, e.score, e.token_index,
                                     json.dumps(e.tokens), json.dumps(e.token_ids),
                                     json.dumps(e.acts), e.position))  # fmt: skip
    return cols, rows
