"""bench/bughunt.py's own measurements: the teacher-forced pair score (prompt once, answers from
a copy of its cache) equals the log-probability summed from one full forward; the answer
matching behind "the chat answer names the right entity"."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from bughunt import answer_logprobs, contains, entities  # noqa: E402


def test_answer_logprobs_equal_one_full_forward(tiny_llama):
    lm = tiny_llama
    ids = lm.to_tokens("the cat is in the")[0].tolist()
    answers = ["red house", "blue", "a big green tree"]
    got = answer_logprobs(lm, ids, answers)
    for ans, g in zip(answers, got):
        a = lm.tokenizer(ans, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            lp = torch.log_softmax(lm.model(torch.tensor([ids + a])).logits[0].float(), -1)
        # answer token i is predicted at position len(ids) - 1 + i
        ref = sum(float(lp[len(ids) - 1 + i, t]) for i, t in enumerate(a))
        assert abs(g - ref) < 1e-4, ans


def test_entities_and_matching():
    assert entities(
        "The capital of Australia is Canberra.", "The capital of Australia is Sydney."
    ) == (
        "Canberra",
        "Sydney",
    )
    assert entities("Penguins cannot fly.", "Penguins can fly.") == ("cannot", "can")
    assert not contains("Penguins cannot fly.", "can")  # whole words only
    assert contains("A week has 7 days.", "seven")  # number words as digits
    assert contains("It is Brasilia.", "Brasília")  # accents dropped
    assert contains("Washington D.C. is the capital", "Washington, D.C.")
    assert not contains("The capital is Sydney.", "Canberra")
    assert contains("Whales are mammals.", "mammal")  # a plural is the same answer
