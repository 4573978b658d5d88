"""The settings of `lmscope scan`; its flags are generated from `ScanConfig`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..config import flag


@dataclass(frozen=True)
class ScanConfig:
    """`lmscope scan`: read a prompt through every dictionary of an atlas."""

    atlas: str
    """atlas folder"""
    prompt: str
    """the text to scan"""
    vs: str | None = flag(None, metavar="PROMPT_B")
    """compare with PROMPT_B: the features that differ most and a layers x positions diff map
    (positions aligned; --png adds it below the brain map, --json under "vs")"""
    top: int = 5
    """features per token and dictionary"""
    show: int = 3
    """features per token printed in the terminal"""
    hooks: str | None = None
    """only these dictionaries (names or globs, comma-separated)"""
    png: str | None = flag(None, metavar="FILE")
    """write the brain map (and with --vs the diff map) as a PNG heatmap"""
    html: str | None = flag(None, metavar="FILE")
    """write a self-contained HTML report"""
    force: bool = flag(False, action="store_true")
    """overwrite existing --png/--html files"""
    max_tokens: int = 256
    """refuse longer prompts"""
    model: str | None = None
    """override the atlas's model (same architecture)"""
    device: str = "cpu"
    """torch device"""
    color: Literal["auto", "always", "never"] = "auto"
    """ANSI colors in the brain map (auto = when stdout is a terminal)"""
    threads: int = 1
    """torch intra-op threads (a 20-token scan is small: 1 thread took 0.56 s against 7-12 s
    for 2 threads on a busy 2-core machine, see docs/viewer.md)"""

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ValueError("--threads must be >= 1")


__all__ = ["ScanConfig"]
