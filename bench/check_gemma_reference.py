"""Is lmscope's Gemma 3 270M the model in the GGUF? An independent reference forward.

lmscope converts the GGUF through transformers' loader (norm weights minus 1, tied unembedding,
config defaults for what the file does not say; lmscope.models.load, docs/models.md). This script
runs a second forward straight from the GGUF tensors, written from llama.cpp's Gemma 3 graph
(src/models/gemma3.cpp) with none of transformers' code: norm weights as stored (llama.cpp's
1 + w), output = token_embd, NEOX RoPE with base 10,000 on local layers and the file's base on
every 6th (global) layer, a sliding window of the file's width on local layers, Q/K RMSNorm,
queries scaled by 1/sqrt(head_dim), post-attention and post-FFW norms, GELU(tanh) gated FFN.
It shares one thing with the conversion: gguf-py's dequantization of the Q4_K_M blocks (so it
checks the model's structure and every config field, not llama.cpp's quantized kernels).

    python bench/check_gemma_reference.py            # ~2 min of CPU; needs lmscope[gemma3]

Prints, per prompt (the Paris prompt and 3 default-corpus documents cut at 64 tokens): the largest
and median logit difference, top-1 agreement and the largest KL(reference || lmscope) over
positions.
"""

from __future__ import annotations

import json
import math
import random

import numpy as np
import torch
from gguf import GGUFReader
from gguf.quants import dequantize

from lmscope.capture.corpus import default_corpus_path
from lmscope.models import load_model


def reference(path: str):
    """forward(ids) -> logits [pos, vocab] from the GGUF at `path`, llama.cpp's way."""
    r = GGUFReader(path)

    def f(k):
        return r.fields[k].contents()

    n_layer, d = f("gemma3.block_count"), f("gemma3.embedding_length")
    n_head, n_kv = f("gemma3.attention.head_count"), f("gemma3.attention.head_count_kv")
    hd, eps = f("gemma3.attention.key_length"), f("gemma3.attention.layer_norm_rms_epsilon")
    base, window = f("gemma3.rope.freq_base"), f("gemma3.attention.sliding_window")
    W = {}
    for t in r.tensors:  # GGUF shapes are [in, out]; numpy's are reversed: [out, in]
        a = dequantize(t.data, t.tensor_type).reshape(tuple(int(x) for x in reversed(t.shape)))
        W[t.name] = torch.from_numpy(np.array(a, dtype=np.float32))

    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    def rope(x, pos, theta):  # [heads, pos, hd]; NEOX: the two halves rotate together
        half = hd // 2
        inv = 1.0 / theta ** (torch.arange(half, dtype=torch.float64) / half)
        ang = pos[:, None].double() * inv[None]  # [pos, half]
        c, s = torch.cos(ang).float(), torch.sin(ang).float()
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], -1)

    @torch.no_grad()
    def forward(ids: list[int]) -> torch.Tensor:
        T, pos = len(ids), torch.arange(len(ids))
        x = W["token_embd.weight"][ids] * math.sqrt(d)  # [pos, d]
        for L in range(n_layer):
            p, local = f"blk.{L}.", (L % 6) < 5
            h = rms(x, W[p + "attn_norm.weight"])
            q = (h @ W[p + "attn_q.weight"].T).view(T, n_head, hd).transpose(0, 1)
            k = (h @ W[p + "attn_k.weight"].T).view(T, n_kv, hd).transpose(0, 1)
            v = (h @ W[p + "attn_v.weight"].T).view(T, n_kv, hd).transpose(0, 1)
            theta = 10000.0 if local else base
            q = rope(rms(q, W[p + "attn_q_norm.weight"]), pos, theta) / math.sqrt(hd)
            k = rope(rms(k, W[p + "attn_k_norm.weight"]), pos, theta)
            k, v = k.repeat_interleave(n_head // n_kv, 0), v.repeat_interleave(n_head // n_kv, 0)
            mask = pos[None, :] > pos[:, None]  # [q, k] future
            if local:
                mask |= (pos[:, None] - pos[None, :]) >= window
            a = (q @ k.transpose(1, 2)).masked_fill(mask, float("-inf")).softmax(-1)
            o = (a @ v).transpose(0, 1).reshape(T, n_head * hd) @ W[p + "attn_output.weight"].T
            x = x + rms(o, W[p + "post_attention_norm.weight"])
            h = rms(x, W[p + "ffn_norm.weight"])
            g = torch.nn.functional.gelu(h @ W[p + "ffn_gate.weight"].T, approximate="tanh")
            m = (g * (h @ W[p + "ffn_up.weight"].T)) @ W[p + "ffn_down.weight"].T
            x = x + rms(m, W[p + "post_ffw_norm.weight"])
        return rms(x, W["output_norm.weight"]) @ W["token_embd.weight"].T

    return forward


def main() -> None:
    torch.set_num_threads(2)
    lm = load_model("gemma3-270m")
    with open(default_corpus_path()) as fh:
        docs = [json.loads(line).get("text") for line in fh][1:]  # line 0: the corpus header
    texts = {"paris": "The capital of France is"}
    picked = random.Random(1).sample([d for d in docs if d and len(d) > 200], 3)
    texts.update({f"doc{i}": d for i, d in enumerate(picked)})
    forward = reference(lm.source.path)
    for name, text in texts.items():
        ids = lm.to_tokens(text)[0, :64]
        with torch.no_grad():
            ours = lm.model(ids[None], use_cache=False).logits[0].float()
        ref = forward(ids.tolist())
        diff = (ours - ref).abs()
        lp_r, lp_o = ref.log_softmax(-1), ours.log_softmax(-1)
        kl = (lp_r.exp() * (lp_r - lp_o)).sum(-1)
        top1 = (ref.argmax(-1) == ours.argmax(-1)).float().mean().item()
        print(
            f"{name}: {len(ids)} positions, max |logit diff| {diff.max():.2e} (largest logit "
            f"{ref.abs().max():.1f}), median {diff.median():.2e}, top-1 agreement {top1:.3f}, "
            f"max KL {kl.max():.2e} nats"
        )
        if name == "paris":
            top = ref[-1].softmax(-1).topk(5)
            words = [(lm.tokenizer.decode([int(i)]), round(float(p), 3)) for p, i in zip(*top)]
            print(f"  reference next token: {words}")


if __name__ == "__main__":
    main()
