"""correct.generate: the batched, cached greedy loop equals steer.generate (unbatched, uncached,
the reference) token for token, with and without an edit, for prompts of different lengths
in one batch; chat prompts go through the tokenizer's chat template."""

from __future__ import annotations

import pytest
import torch

from lmscope.correct.edits import AddVector, ProjectOut
from lmscope.correct.generate import generate_batch, prompt_ids
from lmscope.errors import UserError
from lmscope.models.tiny import tiny_model
from lmscope.steer.generate import generate

PROMPTS = [
    "the cat",
    "paris is the capital of france and berlin is the capital of",
    "one two three four",
    "a dog ran in the field with the horse and the",
    "red",
]


def _edits(lm, kind):
    g = torch.Generator().manual_seed(1)
    v = torch.randn(lm.d_model, generator=g)
    if kind == "none":
        return None
    if kind == "project":
        return ProjectOut(v).runtime(lm)
    if kind == "gated":  # acts where a probe at layer 0 scores below 0: about half the positions
        from lmscope.correct.edits import Gated, ProbeGate

        d = torch.randn(lm.d_model, generator=g)
        gate = ProbeGate("blocks.0.resid_post", d, torch.zeros(lm.d_model), 0.0, 0.0)
        return Gated(AddVector(1, 3 * v), gate).runtime(lm)
    return AddVector(1, 0.3 * v).runtime(lm)


def _reference_ids(lm, prompt, edits, n):
    """steer.generate's chosen tokens: the argmax of each of its forward calls (stop included)."""
    chosen: list[int] = []
    h = lm.model.register_forward_hook(
        lambda m, a, out: chosen.append(int(out.logits[0, -1].float().argmax()))
    )
    try:
        text, _ = generate(lm, prompt, edits, max_new_tokens=n)
    finally:
        h.remove()
    return text, chosen


@pytest.mark.parametrize(
    "family,kind",
    [
        ("llama", "none"),
        ("llama", "project"),
        ("llama", "add"),
        ("gpt2", "add"),
        ("llama", "gated"),
    ],
)
def test_batched_cached_equals_reference(family, kind):
    # gpt2 has learned absolute positions: a wrong position id under left padding changes
    # its output, so it checks the position ids as well as the mask.
    lm = tiny_model(family, n_layers=2, seed=2)
    edits = _edits(lm, kind)
    gens = generate_batch(lm, PROMPTS, edits, max_new_tokens=8, batch_size=3)
    ran_out = 0
    for p, g in zip(PROMPTS, gens):
        text, chosen = _reference_ids(lm, p, edits, 8)
        assert g.prompt == p
        assert g.ids + [lm.tokenizer.eos_token_id] * g.stopped_at_eos == chosen, p
        assert g.text == text
        ran_out += not g.stopped_at_eos
    assert ran_out > 0
    if kind == "none":  # a row that stops early, next to rows that run on
        assert any(g.stopped_at_eos for g in gens)
    if kind != "none":  # the edit reached the model (else this test could not fail)
        base = generate_batch(lm, PROMPTS, None, max_new_tokens=8, batch_size=3)
        assert [g.ids for g in base] != [g.ids for g in gens]


def test_order_and_batch_size_do_not_matter():
    lm = tiny_model("llama", n_layers=2)
    a = generate_batch(lm, PROMPTS, max_new_tokens=8, batch_size=1)
    b = generate_batch(lm, PROMPTS, max_new_tokens=8, batch_size=16)
    assert [g.ids for g in a] == [g.ids for g in b]


def test_chat_template_is_applied():
    lm = tiny_model("llama", n_layers=2)
    with pytest.raises(UserError, match="chat template"):
        prompt_ids(lm, "the cat", chat=True)
    lm.tokenizer.chat_template = (
        "{% for m in messages %}<bos>{{ m['content'] }} :{% endfor %}"
        "{% if add_generation_prompt %} yes{% endif %}"
    )
    ids = prompt_ids(lm, "the cat", chat=True)
    assert lm.tokenizer.convert_ids_to_tokens(ids) == ["<bos>", "the", "cat", ":", "yes"]
    [g] = generate_batch(lm, ["the cat"], max_new_tokens=6, chat=True)
    ref, _ = generate(lm, "the cat : yes", max_new_tokens=6)  # to_tokens adds the one <bos>
    assert g.text == ref
