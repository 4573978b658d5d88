"""Stats labels that read as concepts: WordNet concepts, contexts, the validation choice (a concept
word stays only if it beats the token list on VALIDATION windows, never test), and the coherence
test of the output side. Real WordNet files (wordnet-base) and the real MiniLM word-piece table."""

from __future__ import annotations

import numpy as np
import pytest

from lmscope.atlas.db import Example, FeatureProfile, LogitEffect
from lmscope.explain import concepts
from lmscope.explain.coherence import Coherence, StaticEmbedder, mean_pairwise_cos
from lmscope.explain.split import Held, Split
from lmscope.explain.stats_explainer import NO_OUTPUT, Labeller, explain_stats
from lmscope.explain.wordnet import WordNet, wordnet

pytestmark = pytest.mark.skipif(not WordNet.available(), reason="wordnet-base not installed")


@pytest.fixture(scope="module")
def wn():
    return wordnet()


@pytest.fixture(scope="module")
def emb():
    return StaticEmbedder()


def test_wordnet_concepts(wn):
    assert concepts.propose_concept(["mother", "wife", "husband"], wn).name == "relative"
    assert concepts.propose_concept(["sun", "moon"], wn).name == "celestial body"
    # sun, moon, sky: no class covers all three below "physical entity"; two of three suffice
    assert concepts.propose_concept(["sun", "moon", "sky"], wn).name == "celestial body"
    c = concepts.propose_concept(["old", "good", "days"], wn)  # a multi-word lemma: good_old_days
    assert c.kind == "compound" and c.name == "good old days"
    assert concepts.propose_concept(["3", "6"], wn).name == "a number"
    assert concepts.propose_concept([",", "."], wn).name == "punctuation"
    assert concepts.propose_concept(["the", "of"], wn) is None  # function words: no concept
    assert concepts.propose_concept(["mother", "wife"], wn).name == "woman"  # the deepest common class
    rel = concepts.propose_concept(["mother", "husband"], wn)
    assert rel.member("father", wn) and rel.member("sons", wn) and not rel.member("table", wn)


def _w(words: list[str], fire: set[str], idx: int, kind: str = "top") -> Example:
    acts = [1.0 if (w.strip() in fire and kind != "negative") else 0.0 for w in words]
    return Example(kind, words, acts, 0, max(acts), None, [], idx)


def _profile(shown, promoted=()) -> FeatureProfile:
    return FeatureProfile("blocks.0.resid_post", 0, 0.5, 100, 1.0, 1.0, 1.0, None, None, list(shown), [], [],
                          [LogitEffect(t, i, 1.0) for i, t in enumerate(promoted)], [], [])


FAMILY = {"mother", "wife", "husband", "father", "son", "daughter"}
_SHOWN = [["my", " mother", " met", " her", " wife"], ["the", " husband", " and", " a", " mother"],
          ["his", " wife", " saw", " a", " husband"]]
_FAM_POS = [["my", " father", " met", " a", " table"], ["the", " son", " and", " a", " daughter"]]
_SAME_POS = [["my", " mother", " met", " a", " table"], ["the", " wife", " and", " a", " husband"]]
_NEG = [["the", " table", " and", " a", " chair"], ["a", " dog", " met", " the", " cat"]]


def _split(valid_pos, test_pos) -> Split:
    shown = [_w(s, FAMILY, 10 * i) for i, s in enumerate(_SHOWN)]
    valid = Held([_w(s, FAMILY, 100 + i) for i, s in enumerate(valid_pos)],
                 [_w(s, FAMILY, 200 + i, "negative") for i, s in enumerate(_NEG)])
    test = Held([_w(s, FAMILY, 300 + i) for i, s in enumerate(test_pos)],
                [_w(s, FAMILY, 400 + i, "negative") for i, s in enumerate(_NEG)])
    return Split(shown, valid, test)


LAB = Labeller(coherence=False)


def test_concept_kept_only_where_it_beats_the_token_list_on_validation():
    # Validation fires on father, son, daughter (never shown). Tokens alone (mother, wife, husband)
    # name none of the 3 firing tokens of the 20 validation tokens: recall 0, specificity 17/17 -> 0.5.
    # With the concept "relative" all 3 are named and no silent token is: 1.0 -> the concept stays.
    sp = _split(_FAM_POS, _SAME_POS)
    e = explain_stats(_profile(sp.shown), sp, LAB)
    assert sorted(e.tokens) == ["husband", "mother", "wife"]
    assert e.concept is not None and e.concept.name == "relative"
    assert e.choice["tokens"] == 0.5 and e.choice["concept"] == 1.0 and e.choice["kept"] == "tokens+concept"
    assert e.label.startswith("relative (") and e.details()["tokens"] == e.tokens
    # Validation fires only on the shown words: both variants score 1.0, not better -> dropped, even
    # though the TEST part (father, son, daughter) would reward the concept: choices never read test.
    sp = _split(_SAME_POS, _FAM_POS)
    e = explain_stats(_profile(sp.shown), sp, LAB)
    assert e.concept is None and e.choice["tokens"] == 1.0 and e.choice["concept"] == 1.0
    assert not e.label.startswith("relative") and e.details()["proposed"]["concept"] == "relative"


def test_context_start_of_line_earns_its_place():
    # The feature fires on any word right after a newline token; the shown words differ from the
    # validation words, so the token list alone predicts nothing there.
    def win(words, idx, kind="top"):
        acts = [1.0 if (i > 0 and words[i - 1] == "Ċ" and kind != "negative") else 0.0 for i in range(len(words))]
        return Example(kind, words, acts, 0, max(acts), None, [], idx)

    shown = [win(["a", "Ċ", "Red", "b", "Ċ", "Blue", "c", "Ċ", "Green"], 10 * i) for i in range(3)]
    valid = Held([win(["x", "Ċ", "Cat", "y", "Ċ", "Dog"], 100 + i) for i in range(2)],
                 [win(["x", "Cat", "y", "Dog", "Ċ"], 200 + i, "negative") for i in range(2)])
    sp = Split(shown, valid, Held())
    e = explain_stats(_profile(shown), sp, LAB)
    assert e.details()["proposed"]["context"] == "at the start of a line"
    # tokens alone (red, blue, green): 0 of 4 firing named, 0 of 18 silent named -> 0.5. Context alone
    # restricts the token list, still 0.5 -> the context does not earn its place with these tokens;
    # the feature class records it as a context pattern.
    assert e.choice["tokens"] == 0.5
    assert e.feature_class == "context pattern"
    # Predicate with no token list and the context: all 4 firing tokens follow a newline, no silent
    # token does (the trailing newline has nothing after it) -> 1.0, checked by hand here.
    pred, truth = concepts.predict(valid.pos + valid.neg, set(), None, "at the start of a line", None)
    assert sum(truth) == 4 and len(truth) == 22 and concepts.bal_acc(pred, truth) == 1.0


def test_after_token_context_is_kept_when_it_adds_precision():
    # Fires on "bank" only after "river"; "bank" after "the" is silent.
    def win(words, idx, kind="top"):
        acts = [1.0 if (kind != "negative" and w == " bank" and i > 0 and words[i - 1] == " river") else 0.0
                for i, w in enumerate(words)]
        return Example(kind, words, acts, 0, max(acts), None, [], idx)

    s = ["a", " river", " bank", " and", " the", " river", " bank"]
    shown = [win(s, 10 * i) for i in range(4)]
    valid = Held([win(["a", " river", " bank", " the", " bank"], 100)],
                 [win(["the", " bank", " was", " the", " bank"], 200, "negative")])
    e = explain_stats(_profile(shown), Split(shown, valid, Held()), LAB)
    assert e.tokens == ["bank"]
    # tokens alone: firing 1/1 named; silent 4 + 5 = 9, of which 3 "bank" named -> (1 + 6/9) / 2;
    # with after "river": (1 + 9/9) / 2 = 1.0 -> kept.
    assert e.choice["tokens"] == round((1 + 6 / 9) / 2, 4) and e.choice["context"] == 1.0
    assert e.context == 'after "river"' and e.label.startswith('bank | after "river"')


def test_mean_pairwise_cos_by_hand():
    v = np.array([[1.0, 0.0], [0.0, 1.0], [np.sqrt(0.5), np.sqrt(0.5)]])
    # pairs: (1,2) 0, (1,3) 0.7071, (2,3) 0.7071 -> mean 0.4714
    assert mean_pairwise_cos(v) == pytest.approx((0 + 2 * np.sqrt(0.5)) / 3)


def test_output_side_printed_only_when_it_coheres(emb):
    pool = [w for w in emb.tok.get_vocab() if w.isalpha()][::7]
    coh = Coherence(pool, emb)
    fam = coh(["mother", "father", "sister", "brother", "daughter"])
    junk = coh(["rowsiness", "ilantro", "termedi"])
    assert fam.coherent and fam.percentile >= 0.95 and fam.z > 2
    assert not junk.coherent and junk.n == 3
    lab = Labeller(pool=pool, coherence=True)
    lab._coh = coh
    sp = _split(_FAM_POS, _SAME_POS)
    e = explain_stats(_profile(sp.shown, [" however", " banana", " quickly", " seven"]), sp, lab)
    assert e.says == [] and e.label.endswith(NO_OUTPUT) and "banana" not in e.label
    assert e.output["coherent"] is False and e.output["threshold"] == 0.95
    # pieces that are not words a reader knows never count ("rowsiness" is no English word; "and",
    # "under", "s" are function words and a letter, alike in any embedding space)
    for junk in ([" rowsiness", "ilantro", " termedi"], [" and", " under", " s"]):
        e = explain_stats(_profile(sp.shown, junk), sp, lab)
        assert e.says == [] and e.output is None and e.label.endswith(NO_OUTPUT)
    # word fragments (no word-start marker) are never an output word, however alike they look
    e = explain_stats(_profile(sp.shown, ["emetery", "openhagen", "incinnati", " the"]), sp, lab)
    assert e.says == [] and e.output is None and e.label.endswith(NO_OUTPUT)
    e = explain_stats(_profile(sp.shown, [" mother", " father", " sister", " brother"]), sp, lab)
    assert e.says == ["mother", "father", "sister"] and 'says "mother"' in e.label


def test_feature_classes():
    assert concepts.feature_class(["horse"], None, 0.9) == "single token"
    assert concepts.feature_class(["horse", "pony"], None, 0.9) == "token family"
    assert concepts.feature_class([",", "."], None, 0.9) == "position/format"
    assert concepts.feature_class(["bank"], 'after "river"', 0.9) == "context pattern"
    assert concepts.feature_class(["a", "b"], None, 0.2) == "context pattern"


def test_one_pass_context_flags_equal_the_reference_definitions():
    toks = ["He", " said", ' "', "Yes", " 3", " apples", '"', "Ċ", "Then", " 4", " more"]
    flags = concepts.window_flags(toks)
    for j, name in enumerate(concepts.NAMES):
        assert [f[j] for f in flags] == [concepts.CONTEXTS[name](toks, i) for i in range(len(toks))], name
    # by hand: "Yes", " 3", " apples" and the closing quote itself (one quote before it) are inside
    # the quotes; "Then" starts a line; " apples" and
    # " more" follow a number; "He", "Yes", "Then" are capitalized
    assert [i for i, f in enumerate(flags) if f[1]] == [3, 4, 5, 6]
    assert [i for i, f in enumerate(flags) if f[0]] == [8]
    assert [i for i, f in enumerate(flags) if f[2]] == [5, 10]
    assert [i for i, f in enumerate(flags) if f[3]] == [0, 3, 8]


def test_paired_ci_by_hand():
    from lmscope.explain.label_report import paired_ci

    assert paired_ci([0.25, 0.25, 0.25]) == (0.25, 0.25, 0.25)  # no spread: the interval is the point
    m, lo, hi = paired_ci([0.0, 0.4])
    # resampled means of two values can only be 0, 0.2 or 0.4 (probabilities 1/4, 1/2, 1/4)
    assert m == pytest.approx(0.2) and lo == 0.0 and hi == pytest.approx(0.4)
