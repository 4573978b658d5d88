"""Fix reports saved in an atlas (ATLAS/fixes/*.json), for the viewer's Fixes page.

`lmscope fix --atlas A` saves its report there under a free name (never overwriting); the viewer
lists and shows them, reading only plain file names inside the folder, size-bounded and checked
against the fields the page uses (lmscope.validate), so a damaged or hostile file is one error
line, not a broken page.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import UserError
from ..trace.graph_files import save_graph as _save_json_free
from ..trace.graph_files import valid_name
from ..validate import List, Num, Obj, Str, check, opt, read_json

FIXES = "fixes"
MAX_BYTES = 8 * 2**20

_SCORE = Obj({"value": Num(), "lo": Num(), "hi": Num()})
_OUTCOME = Obj(
    {
        "edit": Str(2000),
        "bad_rate": _SCORE,
        "good_rate": _SCORE,
        "margin_change": _SCORE,
        "text": Obj({"added_nats": _SCORE, "kl": _SCORE}),
    }
)
SCHEMA = {
    "bugs": Str(2000),
    "model": Str(500),
    "n_fit": Num(0),
    "n_heldout": Num(0),
    "behaviour": opt(Str(200)),
    "before": Obj({"bad_rate": _SCORE, "good_rate": _SCORE}),
    "chosen": opt(Str(500)),
    "status": opt(Str(200)),
    "fix": opt(_OUTCOME),
    "control": opt(_OUTCOME),
    "candidates": List(Obj({"name": Str(500)}), max_items=10_000),
    "examples": opt(List(Obj({"prompt": Str(20_000)}), max_items=100)),
    "note": opt(Str(2000)),
}


def fixes_dir(atlas: str | Path) -> Path:
    return Path(atlas) / FIXES


def save_fix(report: dict, atlas: str | Path, stem: str) -> Path:
    """Write the report to ATLAS/fixes/<stem>.json, or <stem>-2.json, ... (never overwrites)."""
    return _save_json_free(report, fixes_dir(atlas), stem)


def read_fix(path: str | Path, *, max_bytes: int = MAX_BYTES) -> dict:
    path = Path(path)
    if path.stat().st_size > max_bytes:
        raise UserError(f"{path.name} is larger than {max_bytes // 2**20} MiB; not a fix report")
    return check(read_json(path, max_bytes=max_bytes, what="fix report"), SCHEMA, where=path.name)


def list_fixes(folder: str | Path, *, max_files: int = 500) -> list[dict]:
    """{name, bugs, model, chosen, bytes, mtime, error} per report, newest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    files = [
        p for p in folder.iterdir() if valid_name(p.name) and p.is_file() and not p.is_symlink()
    ]
    files.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    out = []
    for p in files[:max_files]:
        st = os.stat(p)
        row = {"name": p.name, "bytes": st.st_size, "mtime": st.st_mtime, "error": None}
        try:
            d = read_fix(p)
            row |= {"bugs": d["bugs"], "model": d["model"], "chosen": d.get("chosen")}
        except (UserError, OSError) as e:
            row["error"] = str(e)
        out.append(row)
    return out


__all__ = ["FIXES", "fixes_dir", "list_fixes", "read_fix", "save_fix"]
