"""Graph JSON files in an atlas: ATLAS/graphs/*.json, saved without overwriting, listed, read back.

    path = save_graph(data, graphs_dir(atlas))          # ATLAS/graphs/<slug>.json, or
    <slug>-2.json, ...
    for g in list_graphs(graphs_dir(atlas)): ...        # GraphFile(name, slug, prompt, target, ...)
    data = read_graph(graphs_dir(atlas) / name)         # UserError unless it is a graph JSON

`lmscope graph` writes here by default and the viewer lists and serves these files. Saving
never replaces an existing file: the JSON is written to a temp file, then hard-linked to the
first free name (`os.link` fails if the name exists, so two writers racing for one name both
succeed under different names), then the temp file is removed.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import UserError
from ..validate import List, Num, Obj, Str, check, read_json

GRAPHS = "graphs"
_OUTPUT = re.compile(r'^Output "(.*)" \(p=', re.S)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}\.json$")


def graphs_dir(atlas: str | Path) -> Path:
    """Where an atlas keeps its graphs."""
    return Path(atlas) / GRAPHS


def valid_name(name: str) -> bool:
    """A plain file name (no folder, no leading dot) ending in .json."""
    return bool(_NAME.match(name)) and ".." not in name


def save_graph(data: dict, folder: str | Path, stem: str | None = None) -> Path:
    """Write `data` to folder/<stem>.json, or <stem>-2.json, ... if taken; never overwrites."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stem = stem or str(data.get("metadata", {}).get("slug") or "graph")
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip(".-")[:80] or "graph"
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        for i in range(1, 10_000):
            path = folder / (f"{stem}.json" if i == 1 else f"{stem}-{i}.json")
            try:
                os.link(tmp, path)
                return path
            except FileExistsError:
                continue
        raise UserError(f"no free file name for {stem}.json in {folder}")
    finally:
        os.unlink(tmp)


@dataclass(frozen=True)
class GraphFile:
    """What a listing shows about one graph file (read from its metadata)."""

    name: str
    slug: str
    prompt: str
    target: str | None
    """The target logit's token."""
    n_nodes: int
    n_links: int
    bytes: int
    mtime: float
    error: str | None = None
    """Why the file cannot be shown (too large, not a graph JSON), else None."""
    target_prob: float | None = None
    """The model's probability of the target token."""

    def to_dict(self) -> dict:
        return asdict(self)


MAX_NODES = 50_000
"""Most nodes a graph file may hold (circuit-tracer prunes to a few thousand; the page draws
each)."""
MAX_LINKS = 2_000_000
"""Most links a graph file may hold."""
_NODE = Obj({"node_id": Str(500)})
_LINK = Obj({"source": Str(500), "target": Str(500), "weight": Num()})


def read_graph(path: str | Path, *, max_bytes: int = 64 * 2**20) -> dict:
    """The graph dict in `path`; UserError when too large or not circuit-tracer graph JSON."""
    path = Path(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise UserError(
            f"{path.name} is {size / 2**20:.1f} MiB; at most {max_bytes / 2**20:.0f} MiB "
            "are shown (prune the graph harder: --node-threshold / --edge-threshold)"
        )
    data = read_json(path, max_bytes=max_bytes, what="graph")
    if not (
        isinstance(data, dict)
        and isinstance(data.get("nodes"), list)
        and isinstance(data.get("links"), list)
        and isinstance(data.get("metadata"), dict)
    ):
        raise UserError(f"{path.name} is not a graph JSON (needs metadata, nodes and links)")
    # Size limits and the fields the pages use, before anything walks the graph (lmscope.validate).
    check(
        data,
        {"nodes": List(_NODE, max_items=MAX_NODES), "links": List(max_items=MAX_LINKS)},
        where=path.name,
    )
    if len(data["links"]) <= 10_000:
        check(data["links"], List(_LINK), where=f"{path.name} links")
    elif not all(isinstance(x, dict) for x in data["links"]):
        raise UserError(f"{path.name}: every link must be an object; the file is damaged")
    return data


_cache: dict[tuple[str, int, int], GraphFile] = {}


def list_graphs(
    folder: str | Path, *, max_files: int = 500, max_bytes: int = 64 * 2**20
) -> list[GraphFile]:
    """The graph files in `folder`, newest first (metadata cached by path, size and mtime)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    out = []
    files = [
        p for p in folder.iterdir() if valid_name(p.name) and p.is_file() and not p.is_symlink()
    ]
    files.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    for p in files[:max_files]:
        st = p.stat()
        key = (str(p), st.st_size, st.st_mtime_ns)
        if key not in _cache:
            if len(_cache) > 4 * max_files:  # files rewritten many times: start over
                _cache.clear()
            _cache[key] = _describe(p, st, max_bytes)
        out.append(_cache[key])
    return out


def _describe(p: Path, st: os.stat_result, max_bytes: int) -> GraphFile:
    try:
        d = read_graph(p, max_bytes=max_bytes)
    except (UserError, OSError) as e:
        return GraphFile(p.name, p.stem, "", None, 0, 0, st.st_size, st.st_mtime, error=str(e))
    meta = d["metadata"]
    node = next((n for n in d["nodes"] if isinstance(n, dict) and n.get("is_target_logit")), None)
    target = prob = None
    if node is not None:  # clerp 'Output " Paris" (p=0.620)' (graph_json, circuit-tracer)
        m = _OUTPUT.match(str(node.get("clerp") or ""))
        target = m.group(1) if m else str(node.get("clerp") or node.get("feature"))
        prob = node.get("token_prob")
    prompt = meta.get("prompt") or "".join(str(t) for t in meta.get("prompt_tokens") or [])
    return GraphFile(
        p.name,
        str(meta.get("slug") or p.stem),
        str(prompt),
        target,
        len(d["nodes"]),
        len(d["links"]),
        st.st_size,
        st.st_mtime,
        target_prob=prob,
    )
