"""Write a repaired model as a Hugging Face folder that plain transformers loads.

`export(lm, out, card)` writes config, safetensors weights, tokenizer and a model card
(README.md: what was edited and what was measured) into a hidden sibling folder, and renames
it into place only when everything is written: an interrupted export leaves no folder that
looks complete. An existing folder is never replaced unless `force`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ..errors import UserError

CARD_TITLE = "# Repaired with lmscope"


EDIT_FILE = "lmscope_edit.safetensors"


def export(lm, out: str | Path, card: str, *, edits=None, force: bool = False) -> Path:
    """Write `lm` (already edited, see weights.fold) to `out`; `edits`, if given, are saved
    beside it as lmscope_edit.safetensors, so the repair can be audited or re-applied at run
    time to the base model."""
    out = Path(out)
    if out.exists() and not force:
        raise UserError(
            f"{out} already exists; choose another folder or pass --force to replace it"
        )
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file, not a folder; choose another path")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial"))
    try:
        lm.model.save_pretrained(tmp, safe_serialization=True)
        lm.tokenizer.save_pretrained(tmp)
        (tmp / "README.md").write_text(card if card.startswith(CARD_TITLE) else card_text(card))
        if edits is not None:
            from safetensors.torch import save_file

            from .edits import edit_tensors

            tensors, meta = edit_tensors(edits)
            save_file(tensors, str(tmp / EDIT_FILE), metadata=meta)
        if out.exists():  # force: swap, then delete the old one
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
            os.replace(out, old / "x")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def card_text(body: str) -> str:
    return (
        f"{CARD_TITLE}\n\n"
        "This model is a weight-edited copy made by lmscope (`lmscope fix --export`). It loads "
        "with `transformers.AutoModelForCausalLM.from_pretrained(this_folder)`; no lmscope or "
        "hooks are needed to run it.\n\n"
        f"{body.strip()}\n"
    )


__all__ = ["EDIT_FILE", "card_text", "export"]
