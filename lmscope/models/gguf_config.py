"""Config fields a GGUF carries that transformers' GGUF loader drops, read the way llama.cpp does.

transformers (5.24) maps a fixed list of GGUF metadata keys per architecture to config fields
(integrations/ggml.py) and leaves the rest at the config class's defaults. For Gemma 3 the
defaults are the published values of the small models, so the embedded Gemma 3 270M file (which
carries none of the keys below) converts exactly. Other Gemma 3 GGUF files may carry what the
defaults get wrong, and llama.cpp (src/models/gemma3.cpp, the reference that wrote and runs these
files) reads it:

    {arch}.rope.freq_base_swa                 local layers' RoPE base (default 10,000)
    {arch}.rope.scaling.type / .factor        linear RoPE scaling of the *global* layers (4B-27B: 8)
    {arch}.final_logit_softcapping            final-logit soft-cap (default none)
    {arch}.attention.sliding_window_pattern   which layers are local: a period n (every n-th
                                              layer global; default 6) or one bool per layer
    block count 62 (27B)                      attention scale 1/sqrt(d_model / n_heads) instead
                                              of 1/sqrt(head_dim) (query_pre_attn_scalar)

`gemma3_fixes(path, config)` applies them to the config before the model is built (RoPE tables
are computed at construction) and says what it changed.
"""

from __future__ import annotations


def _field(reader, key: str):
    """A GGUF metadata value (scalar, string or list), or None when absent."""
    f = reader.fields.get(key)
    if f is None:
        return None
    v = f.contents()
    return v


def gemma3_fixes(path: str, config) -> list[str]:
    """Set on a Gemma 3 text `config` what the GGUF file at `path` says and transformers left at
    its defaults; returns one line per changed field (empty for the embedded 270M file)."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    arch = _field(reader, "general.architecture")
    if arch != "gemma3" or getattr(config, "model_type", None) != "gemma3_text":
        return []
    changed: list[str] = []
    rope = {k: dict(v) for k, v in (config.rope_parameters or {}).items()}

    base_swa = _field(reader, f"{arch}.rope.freq_base_swa")
    if base_swa is not None and "sliding_attention" in rope:
        rope["sliding_attention"]["rope_theta"] = float(base_swa)
        changed.append(f"local layers' rope_theta = {float(base_swa):g}")
    kind = _field(reader, f"{arch}.rope.scaling.type")
    factor = _field(reader, f"{arch}.rope.scaling.factor")
    if kind == "linear" and factor and float(factor) != 1.0 and "full_attention" in rope:
        rope["full_attention"].update(rope_type="linear", factor=float(factor))
        changed.append(f"global layers' rope scaling = linear x{float(factor):g}")
    if changed:
        config.rope_parameters = rope

    cap = _field(reader, f"{arch}.final_logit_softcapping")
    if cap:
        config.final_logit_softcapping = float(cap)
        changed.append(f"final_logit_softcapping = {float(cap):g}")

    n = config.num_hidden_layers
    pattern = _field(reader, f"{arch}.attention.sliding_window_pattern")
    if pattern is not None:
        if isinstance(pattern, list):  # one bool per layer: True = local (sliding window)
            local = [bool(p) for p in pattern][:n]
        else:  # a period: every n-th layer global (llama.cpp's set_swa_pattern)
            p = int(pattern)
            local = [(i % p) < (p - 1) for i in range(n)] if p > 0 else [False] * n
        types = ["sliding_attention" if s else "full_attention" for s in local]
        if types != list(config.layer_types):
            config.layer_types = types
            changed.append(
                f"layer_types from the file's pattern ({types.count('full_attention')} global)"
            )

    if n == 62:  # Gemma 3 27B: llama.cpp scales queries by 1/sqrt(d_model / n_heads)
        scalar = config.hidden_size // config.num_attention_heads
        if config.query_pre_attn_scalar != scalar:
            config.query_pre_attn_scalar = scalar
            changed.append(f"query_pre_attn_scalar = {scalar}")
    return changed


__all__ = ["gemma3_fixes"]
