"""The Fixes page's API: list and serve the fix reports in ATLAS/fixes/ (made by `lmscope fix
--atlas ATLAS`).

    GET /api/fixes             -> {fixes: [{name, bugs, model, chosen, bytes, mtime, error}]}
    GET /api/fix?name=F.json   -> the report (lmscope.correct.fix.FixReport.to_dict())

Files are read only from the atlas's fixes/ folder, by plain file name, after resolving the path
inside the atlas; each is size-bounded and checked against the fields the page uses.
"""

from __future__ import annotations

from pathlib import Path

from ...correct.fix_files import FIXES, fixes_dir, list_fixes, read_fix
from ...errors import UserError
from ...trace.graph_files import valid_name
from ..routes import ApiError, Request, route


def _atlas(req: Request) -> Path:
    if req.reader.atlas is None:
        raise ApiError(404, "this viewer has no atlas folder, so no saved fixes")
    return Path(req.reader.atlas)


@route("GET", "/api/fixes")
def fixes(req: Request) -> dict:
    return {"fixes": list_fixes(fixes_dir(_atlas(req))), "folder": FIXES}


@route("GET", "/api/fix")
def fix(req: Request) -> dict:
    from ..server import confined

    name = req.text("name", max_chars=300)
    if not valid_name(name):
        raise ApiError(
            400, f"bad report name {name[:80]!r}: a file name in {FIXES}/ ending in .json"
        )
    path = confined(_atlas(req), f"{FIXES}/{name}")
    if path is None:
        raise ApiError(404, f"no fix report named {name!r} in {FIXES}/")
    try:
        return read_fix(path)
    except UserError as e:
        raise ApiError(400, str(e)) from None
