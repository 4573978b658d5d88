"""The graph page's API: list and serve ATLAS/graphs/*.json, build a graph for a typed prompt.

    GET  /api/graphs               -> {graphs: [GraphFile...], can_build, build_note, max_tokens}
    GET  /api/graph?name=F.json    -> the graph JSON (circuit-tracer / Neuronpedia format)
    POST /api/graph {prompt, target?, node_threshold?, edge_threshold?, max_feature_nodes?}
                                   -> {name, nodes, links, ...}; the graph is saved under a free
                                   name

Graphs are built by the one engine `lmscope graph` uses (lmscope.trace); files are read only from
the atlas's graphs/ folder, by plain file name, after resolving the path inside the atlas.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import UserError
from ...trace import build_graph, check_transcoders, graph_json, prune, resolve_target
from ...trace.graph_files import GRAPHS, graphs_dir, list_graphs, read_graph, save_graph, valid_name
from ..routes import ApiError, Request, model_lock, route


def _atlas(req: Request) -> Path:
    if req.reader.atlas is None:
        raise ApiError(404, "this viewer has no atlas folder, so no saved graphs")
    return Path(req.reader.atlas)


def _transcoders(reader):
    """({layer: transcoder}, None) or (None, why a graph cannot be built)."""
    try:
        return check_transcoders(reader.lm, reader.dicts), None
    except UserError as e:
        return None, str(e)


@route("GET", "/api/graphs")
def graphs(req: Request) -> dict:
    tcs, note = _transcoders(req.reader)
    files = list_graphs(graphs_dir(_atlas(req)), max_bytes=req.limits.max_graph_file_bytes)
    return {
        "graphs": [g.to_dict() for g in files],
        "folder": GRAPHS,
        "can_build": tcs is not None,
        "build_note": note,
        "max_tokens": min(req.limits.max_graph_tokens, req.reader.max_tokens),
    }


@route("GET", "/api/graph")
def graph(req: Request) -> dict:
    from ..server import confined

    name = req.text("name", max_chars=300)
    if not valid_name(name):
        raise ApiError(
            400, f"bad graph name {name[:80]!r}: a file name in {GRAPHS}/ ending in .json"
        )
    path = confined(_atlas(req), f"{GRAPHS}/{name}")  # resolved inside the atlas (no symlink out)
    if path is None:
        raise ApiError(404, f"no graph named {name!r} in {GRAPHS}/")
    try:
        return read_graph(path, max_bytes=req.limits.max_graph_file_bytes)
    except UserError as e:
        raise ApiError(400, str(e)) from None


@route("POST", "/api/graph", runs_model=True)
def build(req: Request) -> dict:
    reader, limits = req.reader, req.limits
    prompt = req.text("prompt")
    target = req.text("target", required=False, max_chars=200) or None
    node_t = req.float("node_threshold", 0.8, 0.01, 1.0)
    edge_t = req.float("edge_threshold", 0.98, 0.01, 1.0)
    max_nodes = req.int(
        "max_feature_nodes",
        min(256, limits.max_graph_feature_nodes),
        1,
        limits.max_graph_feature_nodes,
    )
    tcs, note = _transcoders(reader)
    if tcs is None:
        raise ApiError(400, note)
    atlas = _atlas(req)
    n = reader.tokenize(prompt).shape[1]  # UserError (400) when empty or past --max-tokens
    if n > limits.max_graph_tokens:
        raise ApiError(
            400,
            f"the prompt is {n} tokens long; graphs are built here for at most "
            f"{limits.max_graph_tokens} (use `lmscope graph` for longer prompts)",
        )
    if target is not None:
        tid = resolve_target(reader.lm, target)  # UserError (400) unless one token
        vocab = reader.lm.model.get_output_embeddings().weight.shape[0]
        if not 0 <= tid < vocab:
            raise ApiError(
                400, f"target {target!r} is not a token id of this model (0..{vocab - 1})"
            )
        target = tid
    with model_lock(reader):
        g = build_graph(
            reader.lm,
            tcs,
            prompt,
            target=target,
            max_feature_nodes=max_nodes,
            max_memory_gb=limits.max_graph_memory_gb,
        )
    pruned = prune(g, node_t, edge_t)
    data = graph_json(
        g,
        pruned,
        labels=lambda h, f: reader.label(h, f) or "",
        node_threshold=node_t,
        edge_threshold=edge_t,
    )
    path = save_graph(data, graphs_dir(atlas))
    meta = data["metadata"]["lmscope"]
    return {
        "name": path.name,
        "target": g.logit_strs[0],
        "nodes": meta["n_nodes"],
        "links": meta["n_links"],
        "replacement_score": meta["replacement_score"],
        "seconds": g.stats.get("seconds"),
    }
