"""The replacement model: transcoders in place of the MLPs, exact thanks to error nodes.

On one prompt (Ameisen et al. 2025; circuit-tracer): attention patterns and norm scales
are frozen at their values on the prompt (frozen.py); each layer's MLP output is replaced
by its transcoder's reconstruction from *constant* feature activations plus an error node,

    mlp_out_L = sum_f a_f W_dec[f] + b_dec + W_skip mlp_in_L + error_L,
    error_L   = real mlp_out_L - transcoder(mlp_in_L)           (on the prompt)

or, with a cross-layer transcoder (CLT; dictionaries/clt.py), by the writes of the features of
every layer l <= L (a feature of layer l reads mlp_in_l and writes decoder_to(l, t) to every
mlp_out_t, t >= l) plus error_L = real mlp_out_L - CLT reconstruction of it,

so the replacement forward equals the real forward (up to float rounding), and
everything that reaches a feature's encoder or a logit is a *linear* function of the
feature activations, the errors and the token embeddings. Feature activations are
inputs here, not recomputed: an intervention on one feature changes only what it writes.

    with replacement(lm, transcoders, tokens) as rep:
        run = rep.forward(batch=1)                     # exact forward, logits [1, pos, vocab]
        run = rep.forward(acts={3: new_acts_3})        # a feature intervention (direct effects)

Captures and edits use `lmscope.models.runtime.hooked` (the one hooking mechanism).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..dictionaries.dictmath import decoder_bias, decoder_rows, encoder_affine, skip_term
from ..errors import UserError
from ..models.runtime import hooked
from .frozen import FrozenModel, frozen

if TYPE_CHECKING:
    from ..dictionaries import SparseDictionary
    from ..models import LanguageModel


@dataclass
class LayerState:
    """One layer of the replacement model on the recorded prompt."""

    layer: int
    transcoder: object
    """The SparseDictionary reading blocks.L.mlp_in and predicting blocks.L.mlp_out."""
    acts: Tensor
    """[pos, d_sae] feature activations on the prompt."""
    error: Tensor
    """[pos, d_model] real mlp_out - transcoder output (the error node of each position)."""
    mlp_in: Tensor
    """[pos, d_model] the clean MLP input."""
    dec: Tensor
    """[d_sae, d_model] decoder rows in raw activation units (what one unit of a feature writes)."""
    enc: Tensor
    """[d_model, d_sae] encoder columns on raw mlp_in (a feature's input direction)."""
    enc_bias: Tensor
    """[d_sae] pre-activation = mlp_in @ enc + enc_bias."""
    out_bias: Tensor | None = None
    """[d_model] the decoder bias written to this layer's MLP output (None: the transcoder's)."""
    dec_out: Tensor | None = None
    """CLT only: [d_sae, n_layers - layer, d_model] raw decoders of this layer's features into
    the MLP outputs of this layer and every later one (dec = dec_out[:, 0])."""


@dataclass
class ReplacementRun:
    """One frozen forward: logits and the live tensors attribution differentiates."""

    logits: Tensor | None
    """[batch, pos, vocab] (None when the forward stopped at ln_final)."""
    mlp_in: dict[int, Tensor]
    """layer -> [batch, pos, d_model] MLP input (the encoders' input)."""
    ln_final: Tensor | None
    """[batch, pos, d_model] output of the (frozen) final norm."""
    write_leaves: dict[int, Tensor]
    """layer -> zeros [batch, pos, d_model] added to the MLP output: its .grad = d target / d
    write."""
    embed_leaf: Tensor | None
    """zeros [batch, pos, d_model] added to the embeddings."""
    embed: Tensor
    """[pos, d_model] the token embeddings (what enters block 0)."""


def check_transcoders(
    lm: LanguageModel, dictionaries: dict[str, SparseDictionary]
) -> dict[int, SparseDictionary]:
    """{hook: dictionary} -> {layer: transcoder mlp_in -> mlp_out}; UserError naming what is
    missing."""
    by_layer: dict[int, SparseDictionary] = {}
    for d in dictionaries.values():
        cfg = d.cfg
        parsed = lm.hooks.parse(cfg.hook_name)
        if parsed and parsed[1] == "mlp_in" and cfg.out_hook_name == f"blocks.{parsed[0]}.mlp_out":
            by_layer[parsed[0]] = d
    missing = [L for L in range(lm.n_layers) if L not in by_layer]
    if missing:
        have = ", ".join(sorted(dictionaries)) or "none"
        raise UserError(
            "an attribution graph needs a transcoder blocks.L.mlp_in -> blocks.L.mlp_out for "
            "every layer; "
            f"missing layers {_ranges(missing)} (the atlas has: {have}); train them with "
            "`lmscope train --hooks 'blocks.*.mlp_in' --transcoder ...`"
        )
    return by_layer


def _ranges(xs: list[int]) -> str:
    out, start = [], xs[0]
    for a, b in zip(xs, xs[1:] + [None]):
        if b != a + 1:
            out.append(f"{start}" if start == a else f"{start}-{a}")
            start = b
    return ",".join(out)


class Replacement:
    """The replacement model on one prompt (use through `replacement(...)`)."""

    def __init__(
        self,
        lm: LanguageModel,
        fz: FrozenModel,
        tokens: Tensor,
        layers: dict[int, LayerState],
        clean_logits: Tensor,
        embed: Tensor,
    ) -> None:
        self.lm = lm
        self.fz = fz
        self.tokens = tokens
        self.layers = layers
        self.clean_logits = clean_logits  # [pos, vocab] real model
        self.embed = embed  # [pos, d_model]

    @property
    def n_pos(self) -> int:
        return self.tokens.shape[1]

    def forward(
        self,
        batch: int = 1,
        *,
        acts: dict[int, Tensor] | None = None,
        errors: dict[int, Tensor] | None = None,
        embed: Tensor | None = None,
        grad: bool = False,
        logits: bool = True,
    ) -> ReplacementRun:
        """A frozen forward on `batch` copies of the prompt.

        acts: layer -> [batch|1, pos, d_sae] feature activations to use instead of the
        prompt's (interventions; direct effects only, since activations are inputs).
        errors: layer -> [pos, d_model] replaced error nodes; embed: [pos, d_model] replaced
        token embeddings (what enters block 0). With `grad`, the returned
        leaves/tensors carry the autograd graph of the linear replacement model.
        """
        lm = self.lm
        dev, dt = self.embed.device, self.embed.dtype
        shape = (batch, self.n_pos, lm.d_model)
        leaves = {
            L: torch.zeros(shape, device=dev, dtype=dt, requires_grad=grad) for L in self.layers
        }
        embed_leaf = torch.zeros(shape, device=dev, dtype=dt, requires_grad=grad)
        mlp_in: dict[int, Tensor] = {}

        def take_in(L):
            def f(x):
                mlp_in[L] = x
                return x.detach()  # the real MLP runs, but nothing flows through it

            return f

        def put_out(L):
            st = self.layers[L]

            def f(x):
                err = st.error if errors is None or L not in errors else errors[L]
                if st.dec_out is None:  # per-layer transcoder: this layer's features only
                    a = (acts or {}).get(L, st.acts[None])
                    w = a.to(x.dtype) @ st.dec + decoder_bias(st.transcoder) + err
                    skip = skip_term(st.transcoder, mlp_in[L])
                    if skip is not None:
                        w = w + skip
                else:  # CLT: the features of every layer l <= L write here
                    w = st.out_bias + err
                    for s_, src in self.layers.items():
                        if s_ <= L:
                            a = (acts or {}).get(s_, src.acts[None])
                            w = w + a.to(x.dtype) @ src.dec_out[:, L - s_]
                return w.expand(x.shape) + leaves[L]

            return f

        edits = {
            "embed": lambda x: (
                (x.detach() if embed is None else embed.to(x.dtype).expand(x.shape)) + embed_leaf
            )
        }
        for L in self.layers:
            edits[f"blocks.{L}.mlp_in"] = take_in(L)
            edits[f"blocks.{L}.mlp_out"] = put_out(L)
        capture = ["ln_final"] if lm.hooks.final_norm is not None else []
        toks = self.tokens.expand(batch, -1)
        ctx = torch.enable_grad() if grad else torch.no_grad()
        with (
            ctx,
            hooked(
                lm, capture, edits, stop_early=not logits and bool(capture), detach=False
            ) as got,
        ):
            out = lm.model(toks, use_cache=False)
        return ReplacementRun(
            logits=out.logits if logits else None,
            mlp_in=mlp_in,
            ln_final=got.get("ln_final"),
            write_leaves=leaves,
            embed_leaf=embed_leaf if grad else None,
            embed=self.embed,
        )

    def pre_acts(self, run: ReplacementRun, layer: int) -> Tensor:
        """[batch, pos, d_sae] encoder pre-activations of `layer` in a frozen run."""
        st = self.layers[layer]
        return run.mlp_in[layer] @ st.enc + st.enc_bias


def _layer_state(L: int, tc, mlp_in: Tensor, mlp_out: Tensor, zero_bos: bool) -> LayerState:
    """Features, error node and raw-unit encoder/decoder of one transcoder on the prompt.

    With `zero_bos`, features at the BOS position are dropped (their write goes to the
    error node), as circuit-tracer does: the BOS residual is huge and the same for every
    prompt, so its features are attention-sink bookkeeping, not part of a circuit.
    """
    with torch.no_grad():
        acts = tc.encode(mlp_in)  # [pos, d_sae]
        if zero_bos:
            acts[0] = 0
        recon = tc.decode(acts, mlp_in)  # [pos, d_model]
        enc = encoder_affine(tc)
        return LayerState(
            L, tc, acts, mlp_out - recon, mlp_in, decoder_rows(tc), enc.weight, enc.bias
        )


def _clt_states(clt, mlp_in: Tensor, mlp_out: Tensor, zero_bos: bool) -> dict[int, LayerState]:
    """Per-layer states of a cross-layer transcoder on the prompt: mlp_in/out [L, pos, d].

    A feature of layer l reads blocks.l.mlp_in (raw-unit encoder W_enc[l] * act_scale_in[l])
    and writes decoder_to(l, t) to every MLP output t >= l; the error node of layer t is the
    real MLP output minus the CLT's reconstruction of it (all source layers together).
    """
    with torch.no_grad():
        acts = clt.encode(mlp_in)  # [L, pos, n]
        if zero_bos:
            acts[:, 0] = 0
        recon = clt.decode(acts)  # [L, pos, d]
        L_ = clt.n_layers
        out = {}
        for L in range(L_):
            dec_out = torch.stack([clt.decoder_to(L, t) for t in range(L, L_)], 1).detach()
            enc = (clt.W_enc[L] * clt.act_scale_in[L]).detach()  # [d, n]
            out[L] = LayerState(
                L,
                clt,
                acts[L],
                mlp_out[L] - recon[L],
                mlp_in[L],
                dec_out[:, 0],
                enc,
                clt.b_enc[L].detach(),
                out_bias=(clt.b_dec[L] / clt.act_scale_out[L]).detach(),
                dec_out=dec_out,
            )
        return out


def is_clt(transcoders) -> bool:
    """Whether the graph's dictionaries are one cross-layer transcoder (not {layer: dict})."""
    from ..dictionaries.clt import CrossLayerTranscoder

    return isinstance(transcoders, CrossLayerTranscoder)


def check_clt(lm: LanguageModel, clt) -> None:
    """UserError unless the CLT covers every layer of this model, blocks.L.mlp_in -> mlp_out."""
    cfg = clt.cfg
    if cfg.n_layers != lm.n_layers or cfg.d_model != lm.d_model:
        raise UserError(
            f"this CLT has {cfg.n_layers} layers of width {cfg.d_model}; the model has "
            f"{lm.n_layers} of width {lm.d_model}: train one on this model"
        )
    if (cfg.hook_in, cfg.hook_out) != ("blocks.{layer}.mlp_in", "blocks.{layer}.mlp_out"):
        raise UserError(
            f"an attribution graph needs a CLT reading blocks.L.mlp_in and writing "
            f"blocks.L.mlp_out; this one has {cfg.hook_in!r} -> {cfg.hook_out!r}"
        )


@contextlib.contextmanager
def replacement(
    lm: LanguageModel,
    transcoders,
    tokens: Tensor,
    *,
    zero_bos: bool = True,
) -> Iterator[Replacement]:
    """Build the replacement model on tokens [1, pos]; frozen attention/norms while open.

    transcoders: {layer: per-layer transcoder} or one CrossLayerTranscoder (every layer)."""
    if tokens.shape[0] != 1:
        raise ValueError("the replacement model is built on one prompt: tokens [1, pos]")
    clt = transcoders if is_clt(transcoders) else None
    if clt is not None:
        check_clt(lm, clt)
        transcoders = dict.fromkeys(range(clt.n_layers), clt)
    names = [f"blocks.{L}.{k}" for L in transcoders for k in ("mlp_in", "mlp_out")] + ["embed"]
    params = [p for p in lm.model.parameters() if p.requires_grad]
    with frozen(lm) as fz:
        with torch.no_grad(), hooked(lm, names) as got:
            out = fz.record(tokens)
        bos = zero_bos and lm.bos_token_id is not None and int(tokens[0, 0]) == lm.bos_token_id
        if clt is not None:
            layers = _clt_states(
                clt,
                torch.stack([got[f"blocks.{L}.mlp_in"][0] for L in range(clt.n_layers)]),
                torch.stack([got[f"blocks.{L}.mlp_out"][0] for L in range(clt.n_layers)]),
                bos,
            )
        else:
            layers = {
                L: _layer_state(
                    L, tc, got[f"blocks.{L}.mlp_in"][0], got[f"blocks.{L}.mlp_out"][0], bos
                )
                for L, tc in sorted(transcoders.items())
            }
        fz.frozen = True
        try:
            for p in params:  # edges need gradients w.r.t. activations only, never the weights
                p.requires_grad_(False)
            yield Replacement(lm, fz, tokens, layers, out.logits[0].detach(), got["embed"][0])
        finally:
            for p in params:
                p.requires_grad_(True)
