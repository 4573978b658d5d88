"""Tiny random causal LMs built in code, for tests and examples (no network).

`tiny_model("llama")` builds a 2-4 layer model of a real transformers family
with a small word-level tokenizer over a fixed vocabulary, wrapped as a
`LanguageModel`. Same seed, same weights.
"""

from __future__ import annotations

import string

import torch

FAMILIES = ("llama", "gpt2", "gemma2", "gemma3", "qwen2", "gpt_neox", "mistral")

# A small closed vocabulary: specials, letters, digits, common words. Unknown words map to <unk>.
WORDS = (
    "the a an of to in is was and or not on at by for with from as it this that he she they we "
    "you i "
    "cat dog horse bird fish cow sheep city country paris france berlin germany rome italy madrid "
    "spain "
    "capital river field house tree sun moon star red blue green black white big small fast slow "
    "run ran galloped walked swam flew eats ate sees saw one two three four five six seven eight "
    "nine ten "
    "true false yes no good bad love hate happy sad , . ! ? : ; ' \""
).split()


def tiny_tokenizer():
    """A word-level PreTrainedTokenizerFast: <bos>=1, <eos>=2, <pad>=0, <unk>=3."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<unk>": 3}
    for w in WORDS + list(string.ascii_lowercase) + list(string.digits):
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()]
    )
    tok.decoder = decoders.WordPiece(prefix="##")  # joins with spaces
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    fast.model_max_length = 512
    return fast


def tiny_config(
    family: str = "llama",
    *,
    n_layers: int = 2,
    d_model: int = 32,
    vocab: int = 256,
    overrides: dict | None = None,
):
    """A small config of a real family. `overrides`: config fields to set on top (e.g. Gemma's
    sliding_window, layer_types, final_logit_softcapping)."""
    from transformers import AutoConfig

    common = dict(vocab_size=vocab, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if family == "gpt2":
        model_type = "gpt2"
        kw = dict(
            n_layer=n_layers,
            n_embd=d_model,
            n_head=4,
            n_positions=128,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            **common,
        )
    elif family == "gpt_neox":
        model_type = "gpt_neox"
        kw = dict(
            num_hidden_layers=n_layers,
            hidden_size=d_model,
            num_attention_heads=4,
            intermediate_size=4 * d_model,
            max_position_embeddings=128,
            use_parallel_residual=True,
            **common,
        )
    else:
        model_type = "gemma3_text" if family == "gemma3" else family
        kw = dict(
            num_hidden_layers=n_layers,
            hidden_size=d_model,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=3 * d_model,
            max_position_embeddings=128,
            **common,
        )
        if family in ("gemma2", "gemma3"):
            kw.update(head_dim=d_model // 4, query_pre_attn_scalar=d_model // 4, sliding_window=16)
    return AutoConfig.for_model(model_type, **{**kw, **(overrides or {})})


def tiny_model(
    family: str = "llama",
    *,
    n_layers: int = 2,
    d_model: int = 32,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    overrides: dict | None = None,
):
    """A LanguageModel with random weights of the given family and the tiny tokenizer
    (`overrides`: config fields, see tiny_config)."""
    from transformers import AutoModelForCausalLM

    from .load import from_pretrained_model

    if family not in FAMILIES:
        raise ValueError(f"unknown tiny family {family!r}; one of {FAMILIES}")
    tok = tiny_tokenizer()
    cfg = tiny_config(
        family, n_layers=n_layers, d_model=d_model, vocab=len(tok), overrides=overrides
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    # Random init leaves norms at 1 and biases at 0; perturb them so tests see their effect.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return from_pretrained_model(model, tok, name=f"tiny-{family}")
