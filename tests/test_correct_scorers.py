"""correct.scorers on hand-made generations: loops are caught, normal texts are not."""

from __future__ import annotations

from lmscope.correct.generate import Generation
from lmscope.correct.scorers import SCORERS, tail_cycle


def gen(ids, eos=False):
    return Generation("p", "", list(ids), eos)


def test_tail_cycle_by_hand():
    # period 1: 8 identical tokens at the end -> (1, 8); 7 are not enough (MIN_SPAN 8)
    assert tail_cycle([5, 6] + [9] * 8) == (1, 8)
    assert tail_cycle([5, 6] + [9] * 7) is None
    # period 3, three full copies then a partial one cut by the limit: 3 * 3 + 2 = 11 tokens
    assert tail_cycle([1, 2] + [7, 8, 9] * 3 + [7, 8]) == (3, 11)
    # period 4 repeated only twice (8 tokens): two copies are normal text ("very, very")
    assert tail_cycle([1, 2, 3, 4, 1, 2, 3, 4]) is None
    # the cycle must be at the END: a loop that the text leaves does not count
    assert tail_cycle([7, 8, 9] * 4 + [1, 2, 3, 4, 5, 6]) is None
    # a 20-gram three times is found; a 21-gram is longer than MAX_PERIOD
    g20 = list(range(100, 120))
    assert tail_cycle([1] + g20 * 3) == (20, 60)
    assert tail_cycle(list(range(200, 221)) * 3) is None


def test_repetition_needs_the_limit():
    loop = [3, 4] + [11, 12, 13, 14, 15] * 5
    assert SCORERS["repetition"](gen(loop, eos=False))
    assert SCORERS["ends_in_cycle"](gen(loop, eos=True))
    assert not SCORERS["repetition"](gen(loop, eos=True))  # it stopped by itself


def test_normal_text_is_not_a_loop():
    # a real SmolLM2 answer's ids would do; a text with repeated words but no cycle:
    # "the cat sat on the mat and the dog sat on the rug ." as ids
    words = "the cat sat on the mat and the dog sat on the rug .".split()
    vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
    ids = [vocab[w] for w in words]
    assert not SCORERS["repetition"](gen(ids))
    assert SCORERS["hit_limit"](gen(ids))
    assert not SCORERS["empty"](gen(ids, eos=True))
    assert SCORERS["empty"](gen([], eos=True))


def test_wilson_by_hand():
    from lmscope.correct.scorers import wilson

    z2 = 1.959964**2
    # k = 0: the lower end is 0 and the upper end is z^2 / (n + z^2) = 3.8415 / 13.8415
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and abs(hi - z2 / (10 + z2)) < 1e-9 and abs(hi - 0.27753) < 1e-4
    # k = n/2: centred on 0.5, half-width z / (1 + z^2/n) * sqrt(p(1-p)/n + z^2/(4n^2))
    #        = 1.96 / 1.38415 * sqrt(0.025 + 0.0096040) = 0.26341
    lo, hi = wilson(5, 10)
    assert abs(lo - 0.23659) < 1e-4 and abs(hi - 0.76341) < 1e-4
    # the normal approximation would give 0.5 +- 0.3099: Wilson is narrower and not it
    assert abs(hi - (0.5 + 1.959964 * (0.025**0.5))) > 0.04


def test_repeated_sentence_by_hand():
    def txt(t):
        return Generation("p", t, [], False)

    near_loop = (
        "Here are the parts:\n1. **Bark**: The outer layer of a flower.\n"
        "2. **Bark**: The outer layer of a flower.\n3. **Bark**: the outer layer of a flower."
    )
    assert SCORERS["repeated_sentence"](txt(near_loop))  # numbering and case ignored
    twice = "The cat sat on the mat. The cat sat on the mat. Then it left."
    assert not SCORERS["repeated_sentence"](txt(twice))  # 2 copies are not 3
    short = "Yes it is. Yes it is. Yes it is."
    assert not SCORERS["repeated_sentence"](txt(short))  # 3 words < SENTENCE_MIN_WORDS
    normal = "Bees collect nectar from flowers. They store it in the hive. Water evaporates."
    assert not SCORERS["repeated_sentence"](txt(normal))


def test_missed_answer_by_hand():
    from lmscope.correct.scorers import mentions, missed_answer

    assert missed_answer(Generation("q", "The capital of Switzerland is Lier.", [], True), "Bern")
    assert not missed_answer(Generation("q", "It is Bern, of course.", [], True), "Bern")
    assert not mentions("Penguins cannot fly.", "can")  # whole words
    assert mentions("Whales are mammals.", "mammal")  # a plural
    assert mentions("A week has 7 days.", "seven") and mentions("Brasilia", "Brasília")
