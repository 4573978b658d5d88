"""The one way to open an atlas's dictionaries: which hooks, where their files are, and whether
they fit the model.

    folder = DictionaryFolder.open("atlas/")                  # reads atlas.json; UserError if empty
    hooks = folder.select("blocks.*.resid_post")              # globs; an exact name is a glob too
    dicts = folder.load(hooks, lm, device="cpu")              # {hook: dictionary}, fit to lm
    folder, lm, dicts = open_dictionaries("atlas/", hooks="blocks.6.*")   # the three steps at once

Every command that reads an atlas's dictionaries (trace, graph, steer, scan, serve, search,
eval, atlas build, probe explain) goes through here, so `--hooks` means the same everywhere
and a dictionary trained on another model fails with the same line everywhere
(`base.check_fits`). The atlas database is opened by `lmscope.atlas.db.open_atlas_db`; this
package sits below the atlas stage and never imports it.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError, close_matches
from ..layout import AtlasLayout


def select_hooks(
    available: Iterable[str], spec: str | Iterable[str] | None, *, where: str
) -> list[str]:
    """The hooks of `available` that `spec` names: comma-separated fnmatch globs (case-sensitive),
    an exact name being a glob without wildcards. None or empty: all of them.

    Order: patterns in the order given, each pattern's matches in `available` order, no repeats
    (so exact names keep the order the user typed, a glob the atlas's order). A pattern that
    matches nothing is a UserError naming it: a typo is never silently dropped.
    """
    names = list(available)
    if spec is None or spec == "":
        return names
    patterns = [
        p.strip() for p in (spec.split(",") if isinstance(spec, str) else spec) if p.strip()
    ]
    if not patterns:
        return names
    out: list[str] = []
    for p in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, p)]
        if not hits:
            raise UserError(
                f"{p!r} matches no dictionary in {where}{close_matches(p, names)}; "
                f"it has: {', '.join(sorted(names)) or 'none'}"
            )
        out.extend(h for h in hits if h not in out)
    return out


@dataclass
class DictionaryFolder:
    """An atlas folder's manifest and dictionary files (read-only)."""

    layout: AtlasLayout
    manifest: dict

    @classmethod
    def open(cls, atlas: str | Path | AtlasLayout) -> DictionaryFolder:
        """Read atlas.json; UserError when it is missing, damaged or lists no dictionary."""
        layout = atlas if isinstance(atlas, AtlasLayout) else AtlasLayout(atlas)
        manifest = layout.read()
        if not manifest.get("dictionaries"):
            raise UserError(
                f"atlas {layout.root} holds no dictionaries yet; train some with "
                f"`lmscope train ... --out {layout.root}`"
            )
        return cls(layout, manifest)

    @property
    def root(self) -> Path:
        return self.layout.root

    @property
    def model(self) -> str:
        """The model the atlas was trained on (atlas.json's "model")."""
        return self.manifest["model"]

    @property
    def entries(self) -> dict[str, dict]:
        """hook -> its atlas.json entry (path, arch, d_sae, training record...)."""
        return self.manifest["dictionaries"]

    def select(self, hooks: str | Iterable[str] | None = None) -> list[str]:
        """See `select_hooks`."""
        return select_hooks(self.entries, hooks, where=f"atlas {self.root}")

    def path(self, hook: str) -> Path:
        """The dictionary's folder: atlas.json's relative "path" (every writer records one), else
        the layout's dictionaries/<hook>."""
        rel = self.entries[hook].get("path")
        return self.root / rel if rel else self.layout.dictionary_dir(hook)

    def load(self, hooks: Iterable[str], lm=None, *, device="cpu") -> dict:
        """{hook: dictionary in eval mode} for `hooks` (names from `select`). With `lm`, each is
        checked against the model's hook points and widths (`check_fits`: one line naming the
        dictionary, the hook and the width); without, only its files are checked."""
        from .base import check_fits
        from .io import load_dictionary

        out = {}
        for hook in hooks:
            d = load_dictionary(self.path(hook), device=device)
            if lm is not None:
                check_fits(d, lm, hook)
            out[hook] = d.to(device).eval()
        return out


def open_dictionaries(
    atlas: str | Path,
    *,
    hooks: str | Iterable[str] | None = None,
    model: str | None = None,
    device="cpu",
    dtype=None,
    lm=None,
) -> tuple[DictionaryFolder, object, dict]:
    """(folder, language model, {hook: dictionary}) of an atlas: the hooks are selected before the
    model loads (a typo fails fast), then the atlas's model (or `model`, or the given `lm`) is
    loaded and every dictionary checked against it."""
    folder = DictionaryFolder.open(atlas)
    names = folder.select(hooks)
    if lm is None:
        from ..models import load_model

        kw = {"dtype": dtype} if dtype is not None else {}
        lm = load_model(model or folder.model, device=device, **kw)
    return folder, lm, folder.load(names, lm, device=device)


__all__ = ["DictionaryFolder", "open_dictionaries", "select_hooks"]
