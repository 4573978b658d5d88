"""Sparse dictionaries (SAEs and transcoders) whose latents are a model's features.

    cfg = DictionaryConfig(d_in=576, d_sae=4608, arch="topk", k=32,
    hook_name="blocks.15.resid_post")
    sae = build(cfg); sae.init_from_data(sample)          # act_scale, b_dec
    out = sae.loss(x, dead_mask=dead)                      # TrainOutput(loss, mse, fvu, l0,
    aux_loss, fired, ...)
    sae.save("atlas/dictionaries/blocks.15.resid_post")   # SAELens folder
    sae = load_dictionary(path)                            # lmscope/SAELens, sparsify, Gemma Scope

One file per architecture (topk, batchtopk, jumprelu, relu), found by name in registry.py;
transcoders are any of them with d_out / out_hook_name set (transcoder.py); the `Dictionary`
protocol (protocol.py) is what they and the sharded TopK share; sparse TopK kernels in
kernels.py; foreign formats in io/.
"""

from .base import ARCHS, DictionaryConfig, SparseDictionary, TopKOutput, TrainOutput
from .batchtopk import BatchTopKDictionary
from .init import geometric_median, norm_scale
from .io import detect_format, load_dictionary, saelens_metadata
from .jumprelu import JumpReLUDictionary
from .registry import build
from .relu import ReLUDictionary
from .topk import TopKDictionary
from .transcoder import mlp_hooks, transcoder_config

__all__ = [
    "ARCHS",
    "BatchTopKDictionary",
    "DictionaryConfig",
    "JumpReLUDictionary",
    "ReLUDictionary",
    "SparseDictionary",
    "TopKDictionary",
    "TopKOutput",
    "TrainOutput",
    "build",
    "detect_format",
    "geometric_median",
    "load_dictionary",
    "mlp_hooks",
    "norm_scale",
    "saelens_metadata",
    "transcoder_config",
]
