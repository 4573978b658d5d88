"""Where published dictionaries come from: a local path, or a Hugging Face reference resolved
through the local Hugging Face cache (offline) or the hub (online).

References are written as their publishers write them:

    org/repo                        a whole repository (mntss/clt-gemma-2-2b-426k)
    org/repo/sub/folder[@revision]  one folder of it (google/gemma-scope-2-270m-pt/clt/...)
    hf://org/repo/path?revision=R   one file (circuit-tracer config.yaml `transcoders:` entries)

A path that exists locally always wins over a reference of the same spelling. Offline
(`HF_HUB_OFFLINE=1`, which the tests set) only the cache is read, with
`local_files_only=True`; online the same calls download what is missing. Nothing here knows
about file layouts: the readers in circuit_tracer.py and gemmascope2.py do.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple
from urllib.parse import parse_qs, urlparse

from ...errors import UserError


class HubRef(NamedTuple):
    repo_id: str
    path: str
    """Folder or file inside the repository ('' for the root)."""
    revision: str | None


def parse_ref(ref: str) -> HubRef:
    """'org/repo[/path][@rev]' or 'hf://org/repo/path?revision=rev' -> HubRef."""
    if ref.startswith("hf://"):
        u = urlparse(ref)
        parts = u.path.lstrip("/").split("/", 1)
        if not u.netloc or not parts[0]:
            raise UserError(f"{ref!r} is not a Hugging Face reference (hf://org/repo/path)")
        rev = parse_qs(u.query).get("revision", [None])[0]
        return HubRef(f"{u.netloc}/{parts[0]}", parts[1] if len(parts) > 1 else "", rev)
    body, _, rev = ref.partition("@")
    parts = [p for p in body.split("/") if p]
    if len(parts) < 2:
        raise UserError(
            f"{ref!r} is neither a local path nor a Hugging Face reference "
            "(org/repo[/folder][@revision])"
        )
    return HubRef("/".join(parts[:2]), "/".join(parts[2:]), rev or None)


def offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it (1/true/yes/on)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _hub_error(ref: str, e: Exception) -> UserError:
    first = (str(e).splitlines() or [type(e).__name__])[0][:200]
    if offline():
        try:
            r = parse_ref(ref)
            inc = f" --include '{r.path}*'" if r.path else ""  # fnmatch: * spans folders
            get = f"`hf download {r.repo_id}{inc}`"
        except UserError:
            get = "`hf download ORG/REPO`"
        return UserError(
            f"{ref} is not in the local Hugging Face cache; connect (unset HF_HUB_OFFLINE) or "
            f"download it with {get}, or pass a local folder"
        )
    return UserError(
        f"cannot get {ref} from the Hugging Face hub or its cache ({first}); check the name, "
        "your network and (for gated repositories) `hf auth login`"
    )


def resolve_folder(
    source: str | Path,
    *,
    patterns: list[str] | None = None,
    cache_dir: str | Path | None = None,
    allow_missing: bool = False,
) -> Path:
    """A local folder, or the local copy of a hub folder (downloaded only when online).

    `patterns` (relative to the folder, e.g. ['config.yaml', '*.safetensors']) limit a download
    to the files a reader needs; offline the cached snapshot is used as it is. allow_missing:
    return the folder's path even when none of `patterns` exists there (a configs-only fetch of
    a Gemma Scope folder, which holds only params.npz).
    """
    p = Path(source).expanduser()
    if p.exists():
        return p
    ref = parse_ref(str(source))
    from huggingface_hub import snapshot_download

    allow = None
    if patterns is not None:
        allow = [f"{ref.path}/{pat}" if ref.path else pat for pat in patterns]
    try:
        root = snapshot_download(
            ref.repo_id,
            revision=ref.revision,
            allow_patterns=allow,
            cache_dir=cache_dir,
            local_files_only=offline(),
        )
    except Exception as e:  # the hub raises many types (offline, missing, gated, network)
        raise _hub_error(str(source), e) from None
    out = Path(root) / ref.path
    if not out.exists() and not allow_missing:
        raise UserError(f"{source}: the repository {ref.repo_id} has no folder {ref.path!r}")
    return out


def resolve_file(
    source: str, *, base: Path | None = None, cache_dir: str | Path | None = None
) -> Path:
    """A file named by an hf:// URI, an absolute path, or a path relative to `base`."""
    if not source.startswith("hf://"):
        p = Path(source).expanduser()
        if not p.is_absolute() and base is not None:
            p = base / p
        if not p.is_file():
            raise UserError(f"file {p} (named in a transcoder config) does not exist")
        return p
    ref = parse_ref(source)
    from huggingface_hub import hf_hub_download

    try:
        return Path(
            hf_hub_download(
                ref.repo_id,
                ref.path,
                revision=ref.revision,
                cache_dir=cache_dir,
                local_files_only=offline(),
            )
        )
    except Exception as e:  # see resolve_folder
        raise _hub_error(source, e) from None


__all__ = ["HubRef", "offline", "parse_ref", "resolve_file", "resolve_folder"]
