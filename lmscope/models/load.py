"""Load any Hugging Face causal LM (hub id, local folder, .gguf file or alias).

`load_model` returns a `LanguageModel`: the HF model in eval mode, its
tokenizer, and its hook points (found from the module structure, see
hooks.py). A GGUF file is dequantized through transformers once (~15 s for the
default) and cached as safetensors under the lmscope cache, so later loads take
a fraction of a second.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from ..errors import UserError, close_matches
from .gguf_config import gemma3_fixes
from .registry import ALIASES, LICENCE_FILES, ModelSource, cache_dir, hub_cached_models

DType = Literal["float32", "bfloat16", "float16"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CACHE_FORMAT = 1  # bump when the converted-model cache layout changes


def resolve(name: str) -> ModelSource:
    """Turn the user's model name into a ModelSource, or raise a one-line UserError."""
    if name in ALIASES:
        finder, desc, hint = ALIASES[name]
        f = finder()
        if f is None:
            raise UserError(f"model alias {name!r} needs its package; install it with: {hint}")
        return ModelSource(name=name, kind="gguf", path=str(f), description=desc)
    p = Path(name).expanduser()
    if name.endswith(".gguf"):
        if not p.is_file():
            raise UserError(f"GGUF file not found: {name}")
        return ModelSource(name=str(p.resolve()), kind="gguf", path=str(p.resolve()))
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise UserError(
                f"{name} is a folder but has no config.json; point at a Hugging Face model folder"
            )
        return ModelSource(name=str(p.resolve()), kind="folder", path=str(p.resolve()))
    if name.count("/") == 1 and not name.startswith((".", "/")):
        return ModelSource(name=name, kind="hub", path=name)
    known = list(ALIASES) + hub_cached_models()
    raise UserError(
        f"unknown model {name!r}{close_matches(name, known)}; use an alias (`lmscope models`), "
        "a Hugging Face id like org/name, a local model folder, or a .gguf file"
    )


@dataclass
class LanguageModel:
    """A loaded causal LM with uniform hook points.

    `model` is the Hugging Face `*ForCausalLM` in eval mode; `hooks` maps our
    names (`blocks.{L}.resid_post`, ...) to modules, see `lmscope.models.hooks`.
    """

    model: torch.nn.Module
    tokenizer: object
    name: str
    source: ModelSource
    hooks: HookPoints = field(init=False)  # noqa: F821

    def __post_init__(self) -> None:
        from .hooks import HookPoints

        self.model.eval()
        self.hooks = HookPoints.discover(self.model)

    # --- shapes -----------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return self.hooks.n_layers

    @property
    def d_model(self) -> int:
        return self.hooks.d_model

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def bos_token_id(self) -> int | None:
        tok = self.tokenizer
        bos = getattr(tok, "bos_token_id", None)
        return bos if bos is not None else getattr(tok, "eos_token_id", None)

    # --- text <-> tokens ----------------------------------------------------
    def to_tokens(self, text: str | list[str], *, prepend_bos: bool = True) -> torch.Tensor:
        """Tokenize one prompt (or equal-length prompts) -> LongTensor [batch, pos].

        BOS is prepended once (never twice, whatever the tokenizer does itself).
        """
        texts = [text] if isinstance(text, str) else list(text)
        rows = []
        for t in texts:
            ids = self.tokenizer(t, add_special_tokens=False)["input_ids"]
            if prepend_bos and self.bos_token_id is not None:
                ids = [self.bos_token_id] + ids
            if not ids:
                raise UserError(f"text {t!r} tokenizes to nothing")
            rows.append(ids)
        if len({len(r) for r in rows}) != 1:
            raise UserError("prompts tokenize to different lengths; pass them one at a time")
        return torch.tensor(rows, dtype=torch.long, device=self.device)

    def to_str_tokens(self, tokens: torch.Tensor | list[int]) -> list[str]:
        ids = tokens.tolist() if isinstance(tokens, torch.Tensor) else list(tokens)
        return [self.tokenizer.decode([i]) for i in ids]

    # --- running --------------------------------------------------------------
    def run(self, tokens: torch.Tensor, **kw):
        """Shortcut for `lmscope.models.runtime.run(self, tokens, ...)`."""
        from .runtime import run

        return run(self, tokens, **kw)

    def capture(self, names, **kw):
        """Shortcut for `lmscope.models.runtime.capture(self, names, ...)` (a context manager)."""
        from .runtime import capture

        return capture(self, names, **kw)

    def edit(self, edits, **kw):
        """Shortcut for `lmscope.models.runtime.edit(self, edits)` (a context manager)."""
        from .runtime import edit

        return edit(self, edits, **kw)

    def fingerprint(self) -> dict:
        """What artifacts record to refuse mixing models later."""
        return {
            "model": self.name,
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "vocab": int(self.model.get_output_embeddings().weight.shape[0]),
        }


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A cheap connectivity check, so an offline machine fails in milliseconds, not after
    retries."""
    import socket
    from urllib.parse import urlparse

    host = (
        urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
        or "huggingface.co"
    )
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _quiet_hf():
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*gguf.*", category=UserWarning)
    logging.getLogger("transformers").setLevel(logging.ERROR)


def _gguf_cache_folder(src: ModelSource) -> Path:
    st = os.stat(src.path)
    key = hashlib.sha256(
        f"{src.path}|{st.st_size}|{st.st_mtime_ns}|{CACHE_FORMAT}".encode()
    ).hexdigest()[:16]
    return cache_dir() / "models" / f"{Path(src.path).stem}-{key}"


def _convert_gguf(src: ModelSource, dest: Path) -> None:
    """Dequantize a GGUF once and save it as a plain safetensors model folder (atomic)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, fname = os.path.dirname(src.path), os.path.basename(src.path)
    print(
        f"lmscope: converting {fname} to safetensors once (cached in {dest.parent})",
        file=sys.stderr,
    )
    try:
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=torch.float32)
    except ImportError as e:
        raise UserError(f"loading GGUF needs an extra package: {e}") from None
    # The GGUF quantization marker blocks save_pretrained; weights are already dequantized.
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # Fields the file carries and transformers' loader dropped (gguf_config.py); before the
    # model is built, since its RoPE tables come from the config.
    for line in gemma3_fixes(src.path, config):
        print(f"lmscope: from the GGUF metadata: {line}", file=sys.stderr)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".tmp-"))
    try:
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        for lic in LICENCE_FILES:  # the model's terms travel with every copy of its weights
            if os.path.isfile(os.path.join(folder, lic)):
                shutil.copyfile(os.path.join(folder, lic), tmp / lic)
        (tmp / "lmscope_source.json").write_text(
            json.dumps({"gguf": src.path, "format": CACHE_FORMAT})
        )
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def cpu_half_is_slow(dtype: torch.dtype, device: str | torch.device = "cpu") -> bool:
    """True when `dtype` is bf16/fp16 on a CPU without native support for it.

    Without AVX-512 BF16 / AMX (e.g. an AVX2-only AMD EPYC) oneDNN emulates bf16 and
    plain torch falls back to scalar loops: SmolLM2-135M's forward measured 55 tok/s in
    bf16 against 290 tok/s in fp32 on such a machine, the opposite of the ~2x gain
    on CPUs that have it.
    """
    if torch.device(device).type != "cpu" or dtype not in (torch.bfloat16, torch.float16):
        return False
    try:
        if dtype == torch.bfloat16:
            return not torch.ops.mkldnn._is_mkldnn_bf16_supported()
        return not torch.ops.mkldnn._is_mkldnn_fp16_supported()
    except (AttributeError, RuntimeError):  # a torch build without oneDNN: assume slow
        return True


_WARNED_HALF: set[str] = set()


def warn_if_slow_half(
    dtype: torch.dtype, device: str | torch.device = "cpu", what: str = "--model-dtype"
) -> None:
    """One stderr line (once per process and flag) when a half dtype will be slow on this CPU."""
    if what in _WARNED_HALF or not cpu_half_is_slow(dtype, device):
        return
    _WARNED_HALF.add(what)
    name = str(dtype).removeprefix("torch.")
    cap = torch.backends.cpu.get_cpu_capability()
    print(
        f"lmscope: warning: this CPU ({cap}) has no native {name}; {what} {name} runs several "
        "times "
        f"slower than float32 here (use {what} float32)",
        file=sys.stderr,
    )


def load_model(
    name: str = "smollm2-135m",
    *,
    dtype: DType | torch.dtype = "float32",
    device: str | torch.device = "cpu",
) -> LanguageModel:
    """Load a causal LM by alias, hub id, local folder or .gguf path.

    Hub ids load from the local Hugging Face cache first and go online only
    when that fails and HF_HUB_OFFLINE is not set.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_hf()
    src = resolve(name)
    torch_dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    path, kw = src.path, {}
    if src.kind == "gguf":
        folder = _gguf_cache_folder(src)
        if not (folder / "config.json").is_file():
            _convert_gguf(src, folder)
        path = str(folder)
    if src.kind == "hub":
        kw["local_files_only"] = True
    try:
        try:
            tok = AutoTokenizer.from_pretrained(path, **kw)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, **kw)
        except OSError:
            if src.kind != "hub" or os.environ.get("HF_HUB_OFFLINE") == "1":
                raise
            if not _hub_reachable():
                raise UserError(
                    f"model {name!r} is not in the local Hugging Face cache and the hub is "
                    "unreachable; download it on a connected machine or pass a local folder"
                ) from None
            tok = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    except OSError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load model {name!r}: {first}") from None
    except ValueError as e:
        first = str(e).strip().splitlines()[0]
        raise UserError(f"cannot load model {name!r} as a causal LM: {first}") from None
    model.to(device)
    warn_if_slow_half(torch_dtype, device)
    return LanguageModel(model=model, tokenizer=tok, name=src.name, source=src)


def from_pretrained_model(
    model: torch.nn.Module, tokenizer=None, name: str = "custom"
) -> LanguageModel:
    """Wrap an already-built HF causal LM (e.g. a tiny random one in tests)."""
    return LanguageModel(
        model=model,
        tokenizer=tokenizer,
        name=name,
        source=ModelSource(name=name, kind="object", path=name),
    )
