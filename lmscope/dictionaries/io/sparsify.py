"""EleutherAI sparsify folders: `cfg.json` + `sae.safetensors` (one folder per hook point).

cfg.json carries `activation` ("topk" or "groupmax"), `num_latents` (0: d_in *
`expansion_factor`), `k`, `normalize_decoder`, `skip_connection`, `transcode`, `d_in`.
The weights are `encoder.weight` [num_latents, d_in] (an nn.Linear, so the transpose of
our W_enc), `encoder.bias`, `W_dec` [num_latents, d_in], `b_dec` [d_in] and optionally
`W_skip` [d_in, d_in]. sparsify subtracts b_dec from the input unless it is a
transcoder, applies ReLU then top-k, and works on raw activations, so the mapping onto
our TopK dictionary is exact.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from ...errors import UserError
from ...models import hook_names
from ...validate import MAX_LATENTS, Bool, Int, Str, check, read_json
from ..base import DictionaryConfig, SparseDictionary
from .saelens import from_raw_state

SPARSIFY_WEIGHTS = "sae.safetensors"


def load_sparsify(
    path: str | Path,
    device: str | torch.device = "cpu",
    *,
    hook_name: str = "",
    model_name: str = "",
) -> SparseDictionary:
    """A sparsify folder -> TopK SparseDictionary with the same outputs."""
    path = Path(path)
    cfg_raw = check(
        read_json(path / "cfg.json", what="sparsify config"),
        {
            "k": Int(1, MAX_LATENTS, required=False),
            "activation": Str(50, required=False),
            "transcode": Bool(required=False),
        },
        where=str(path / "cfg.json"),
    )
    try:
        st = load_file(str(path / SPARSIFY_WEIGHTS))
    except Exception as e:  # safetensors raises its own error types (truncated, bad header)
        raise UserError(
            f"cannot read sparsify dictionary {path / SPARSIFY_WEIGHTS}: "
            f"{str(e).splitlines()[0][:200] if str(e) else type(e).__name__}"
        ) from None
    if cfg_raw.get("activation", "topk") != "topk":
        raise UserError(
            f"{path}: sparsify activation {cfg_raw.get('activation')!r} is not supported (only "
            "topk)"
        )
    if "encoder.weight" not in st or "W_dec" not in st:
        raise UserError(
            f"{path}/{SPARSIFY_WEIGHTS} lacks encoder.weight / W_dec: not a sparsify dictionary"
        )
    n, d_in = st["encoder.weight"].shape
    d_out = st["W_dec"].shape[1]
    transcode = bool(cfg_raw.get("transcode", False))
    # The folder is named after its hookpoint, a module path relative to the base model
    # (`layers.6`, `layers.6.mlp`); a transcoder reads the module's input and predicts its
    # output. models/hook_names.py maps what the name alone decides; `layers.6.mlp`'s output
    # (our mlp_out on Llama, nothing on Gemma) is resolved against the model at import.
    point = hook_name or path.name
    if hook_name:
        hook, out_hook = hook_name, hook_name + ":out"
    else:
        hook = hook_names.normalize(f"{point}:input" if transcode else point)
        out_hook = hook_names.normalize(point)
    cfg = DictionaryConfig(
        d_in=d_in,
        d_sae=n,
        arch="topk",
        k=int(cfg_raw.get("k", 32)),
        d_out=d_out if transcode else None,
        skip="W_skip" in st,
        hook_name=hook,
        model_name=model_name,
        # sparsify transcoders keep d_out == d_in; a distinct out hook marks them as transcoders
        # (b_dec is then an output bias, not subtracted from the input).
        out_hook_name=out_hook if transcode else None,
    )
    raw = {
        "W_enc": st["encoder.weight"].t(),
        "b_enc": st["encoder.bias"],
        "W_dec": st["W_dec"],
        "b_dec": st["b_dec"],
    }
    if "W_skip" in st:
        raw["W_skip"] = st["W_skip"]
    return from_raw_state(cfg, raw, apply_b_dec_to_input=not transcode).to(device)


__all__ = ["load_sparsify", "SPARSIFY_WEIGHTS"]
