"""The settings of `lmscope trace` and `lmscope graph`; their flags are generated from these.

Both read one prompt through the dictionaries of an atlas and explain its next token, so they
share `PromptOnAtlas` (which atlas, which prompt, which target, which model and device).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import flag


@dataclass(frozen=True)
class PromptOnAtlas:
    """A prompt read through the dictionaries of an atlas; the target is its next token."""

    atlas: str
    """atlas folder (holds the dictionaries)"""
    prompt: str
    """the prompt; the target is the token that follows it"""
    target: str | None = None
    """the token to attribute, e.g. ' Paris' (default: the model's top token)"""
    model: str | None = None
    """override the atlas's model (alias, folder, hub id, .gguf)"""
    device: str = "cpu"
    """torch device"""


@dataclass(frozen=True)
class TraceConfig(PromptOnAtlas):
    """`lmscope trace`: the features that push the next token up or down (DLA, gradient x
    activation)."""

    vs: str | None = None
    """attribute the logit difference target - VS (a single token)"""
    top: int = 20
    """features to show"""
    hooks: str | None = None
    """only these dictionaries (names or globs, comma-separated)"""
    verify: bool = flag(False, action="store_true")
    """ablate the top features one at a time and jointly; report actual vs predicted"""
    verify_top: int = 5
    """features to ablate with --verify"""
    include_special: bool = flag(False, action="store_true")
    """also rank features at BOS/special-token positions (off-distribution for the dictionaries)"""


@dataclass(frozen=True)
class GraphConfig(PromptOnAtlas):
    """`lmscope graph`: the attribution graph of the next token through per-layer transcoders
    or a cross-layer transcoder (--clt)."""

    out: str | None = None
    """JSON file to write (default: ATLAS/graphs/<slug>.json, or <slug>-2.json, ... when taken;
    `lmscope serve ATLAS` lists that folder)"""
    force: bool = flag(False, action="store_true")
    """overwrite an existing --out file"""
    node_threshold: float = 0.8
    """keep the nodes carrying this fraction of the influence on the logits"""
    edge_threshold: float = 0.98
    """keep the edges carrying this fraction of the influence"""
    max_feature_nodes: int = 4096
    """compute incoming edges of at most this many features, most influential first; the direct
    effects of the rest go into their error nodes"""
    batch_size: int = 64
    """target nodes per backward pass (lowered to fit --max-memory-gb)"""
    max_memory_gb: float | None = None
    """memory limit for the graph (default: 80 percent of the RAM available now); over it, the
    backward batch is lowered, then only the largest edges of each row are stored, else it
    refuses"""
    clt: str | None = None
    """a cross-layer transcoder folder (lmscope train --clt) to trace through instead of the
    atlas's per-layer transcoders (the atlas gives the model; its labels are not used)"""
    row_edges: int | None = None
    """store only the N largest feature edges of each row (the rest go to their error nodes);
    default: all of them, or as many as fit in --max-memory-gb"""


__all__ = ["GraphConfig", "PromptOnAtlas", "TraceConfig"]
