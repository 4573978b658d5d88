"""Truth probes: datasets, batched activations, planted-direction recovery, artifact, CLI errors."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lmscope.cli import main
from lmscope.errors import UserError
from lmscope.probe.activations import last_token_acts
from lmscope.probe.datasets import BUILTIN, load_dataset, names
from lmscope.probe.metrics import auroc
from lmscope.probe.registry import KINDS, fit


# --- datasets -----------------------------------------------------------------------
@pytest.mark.parametrize("name", list(BUILTIN))
def test_dataset_balanced_deterministic_entity_split(name):
    a, b = load_dataset(name), load_dataset(name)
    assert a == b  # deterministic
    for split in (a.train, a.val, a.test):
        assert sum(s.label for s in split) * 2 == len(split)  # balanced
    ents = [{s.entity for s in split} for split in (a.train, a.val, a.test)]
    assert not ents[0] & ents[1] and not ents[0] & ents[2] and not ents[1] & ents[2]
    assert len(a.test) >= 16 and len(a.val) >= 16 and len(a.train) > len(a.test)
    for s in a.all:
        assert s.text != s.contrast and s.text.endswith((".", '"."'))


def test_arithmetic_commutative_twins_share_a_split():
    """'a plus b' and 'b plus a' are one fact: both orders land in one split (keyed by the ordered
    problem, twins were split across train and test)."""
    ds = load_dataset("arithmetic")
    where: dict[frozenset, set] = {}
    orders: dict[frozenset, set] = {}
    for split in ("train", "val", "test"):
        for s in ds.split(split):
            a, rest = s.text.split(" plus ")
            b = int(rest.split(" ")[0])
            key = frozenset((int(a), b))
            where.setdefault(key, set()).add(split)
            orders.setdefault(key, set()).add((int(a), b))
    assert sum(len(o) == 2 for o in orders.values()) >= 5  # twins exist, so the check has teeth
    assert all(len(v) == 1 for v in where.values()), [k for k, v in where.items() if len(v) > 1]


def test_negated_sets_share_the_entity_split_and_flip_labels():
    pos, neg = load_dataset("cities"), load_dataset("neg_cities")
    assert {s.entity for s in pos.test} == {s.entity for s in neg.test}
    for p, n in zip(pos.all, neg.all):
        assert (p.text, p.label) == (n.contrast, 1 - n.label)
    # numbers: a test number never appears in a training statement, even as the second number
    lt = load_dataset("larger_than")
    from lmscope.probe.facts import number_word

    for held in (lt.val, lt.test):
        held_words = {number_word(int(e)) for e in {s.entity for s in held}}
        for s in lt.train:
            assert not any(w in s.text.lower() for w in held_words), s.text


def test_facts_are_true():
    ds = load_dataset("arithmetic")
    for s in ds.all:
        a, rest = s.text.split(" plus ")
        b, c = rest.rstrip(".").split(" equals ")
        assert (int(a) + int(b) == int(c)) == bool(s.label)
    from lmscope.probe.facts import NUMBERS, number_word

    value = {number_word(n): n for n in NUMBERS}
    for s in load_dataset("larger_than").all:
        a, b = s.text.rstrip(".").lower().split(" is larger than ")
        assert value[a] == int(s.entity) and (value[a] > value[b]) == bool(s.label)
    assert "The city of Paris is in France." in {
        s.text for s in load_dataset("cities").all if s.label
    }


# --- activations --------------------------------------------------------------------
def test_batched_last_token_equals_unbatched(tiny_llama):
    texts = [
        "the cat is big .",
        "paris is the capital of france .",
        "a dog",
        "berlin is in germany and rome is in italy .",
    ]
    hooks = ["blocks.0.resid_post", "blocks.2.resid_post"]
    batched = last_token_acts(tiny_llama, texts, hooks, batch_size=4)
    for i, t in enumerate(texts):
        one = last_token_acts(tiny_llama, [t], hooks, batch_size=1)
        ids = tiny_llama.to_tokens(t)
        ref = tiny_llama.run(ids, capture=hooks)
        for h in hooks:
            torch.testing.assert_close(batched[h][i], one[h][0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(
                batched[h][i], ref.acts[h][0, -1].float(), atol=1e-5, rtol=1e-5
            )


def test_statement_that_tokenizes_to_nothing(tiny_llama):
    with pytest.raises(UserError, match="tokenizes to nothing"):
        last_token_acts(tiny_llama, ["the cat", ""], ["blocks.0.resid_post"])


# --- planted direction ----------------------------------------------------------------
def _planted(lm, n=160, alpha=4.0, seed=0):
    """Random 5-word statements; label +-1 times a fixed direction added at blocks.0.resid_post."""
    from lmscope.models.tiny import WORDS

    g = torch.Generator().manual_seed(seed)
    v = torch.randn(lm.d_model, generator=g)
    v = v / v.norm()
    words = [w for w in WORDS if w.isalpha()]
    # Equal word counts -> equal token counts (word-level tokenizer), so one batch keeps row order.
    texts = [
        " ".join(words[int(i)] for i in torch.randint(len(words), (5,), generator=g))
        for _ in range(n)
    ]
    y = torch.arange(n) % 2
    hook = "blocks.1.resid_post"
    scale = (
        last_token_acts(lm, texts[:16], ["blocks.0.resid_post"])["blocks.0.resid_post"]
        .norm(dim=1)
        .mean()
    )

    def acts(sign):
        s = (y.float() * 2 - 1) * sign * alpha * scale  # [batch]
        edit = {"blocks.0.resid_post": lambda x: x + s[:, None, None] * v.to(x.dtype)}
        return last_token_acts(lm, texts, [hook], batch_size=n, edits=edit)[hook]

    return hook, v, acts(1.0), acts(-1.0), y


@pytest.fixture(scope="module")
def planted(tiny_llama):
    return _planted(tiny_llama)


@pytest.mark.parametrize("kind", KINDS)
def test_planted_direction_recovered(planted, kind):
    hook, v, x, xc, y = planted
    tr, te = slice(0, 120), slice(120, None)
    probe = fit(kind, hook, x[tr], y[tr], xc[tr])
    assert probe.accuracy(x[te], y[te]) >= 0.97
    d = probe.direction
    if kind == "massmean_iid":
        # theta = Sigma^-1 (mu+ - mu-): the whitened direction; Sigma theta is the planted one.
        r = torch.cat([x[tr][y[tr] == k] - x[tr][y[tr] == k].mean(0) for k in (0, 1)])
        d = (r.T @ r) @ d
    cos = torch.nn.functional.cosine_similarity(d, v, dim=0)
    assert cos > 0.9, float(cos)


def test_random_labels_give_chance_accuracy(tiny_llama):
    """The probe is not trivially perfect: with no planted signal, held-out accuracy is near
    chance."""
    hook, v, x, xc, y = _planted(tiny_llama, alpha=0.0)
    probe = fit("logistic", hook, x[:120], y[:120])
    assert probe.accuracy(x[120:], y[120:]) < 0.75


def test_auroc_matches_pairwise_definition():
    s = torch.tensor([0.1, 0.4, 0.35, 0.8, 0.4])
    lab = torch.tensor([0, 0, 1, 1, 1])
    pairs = [(p, n) for p in s[lab == 1] for n in s[lab == 0]]
    ref = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs)
    assert auroc(s, lab) == pytest.approx(ref)
    assert auroc(torch.tensor([1.0, 2.0]), torch.tensor([0, 1])) == 1.0


def test_bootstrap_resamples_whole_entities():
    """Two entities, one all right and one all wrong: resampling entities gives only 0, 0.5 or 1
    (resampling statements would also give 0.25 and 0.75), and the interval spans [0, 1]."""
    from lmscope.probe.metrics import accuracy_score

    logits = torch.tensor([1.0, 1.0, 1.0, 1.0])
    y = torch.tensor([1, 1, 0, 0])
    groups = ["a", "a", "b", "b"]
    seen = set()
    from lmscope.probe import metrics

    sc = metrics.bootstrap(
        lambda i: seen.add(metrics.accuracy(logits[i], y[i])) or 0.0, groups, n_boot=200
    )
    assert seen <= {0.0, 0.5, 1.0} and len(seen) == 3 and sc.n_units == 2
    s = accuracy_score(logits, y, groups, n_boot=200)
    assert (s.value, s.lo, s.hi, s.n, s.n_units) == (0.5, 0.0, 1.0, 4, 2)


def test_choice_is_made_on_validation_never_on_test():
    """The chosen (layer, kind) is the best on validation even when another has a higher test
    score."""
    from lmscope.probe.sweep import LayerResult, choose

    def r(h, kind, val, val_auroc=0.5):
        return LayerResult(
            hook=f"blocks.{h}.resid_post",
            kind=kind,
            train_acc=1.0,
            val_acc=val,
            val_auroc=val_auroc,
            val_acc_by_set={},
            probe=None,
        )

    results = [
        r(3, "logistic", 0.70),
        r(5, "logistic", 0.80),
        r(5, "massmean", 0.80, 0.9),
        r(7, "ccs", 0.60),
    ]
    assert (choose(results).hook, choose(results).kind) == (
        "blocks.5.resid_post",
        "massmean",
    )  # tie -> AUROC
    assert (
        choose([r(9, "logistic", 0.8), r(4, "logistic", 0.8)]).hook == "blocks.4.resid_post"
    )  # then earlier


# --- artifact and CLI -------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dirs(tiny_model_dir):
    """Two tiny models saved as HF folders (so the CLI can load them by path)."""
    return {
        name: str(tiny_model_dir("llama", n_layers=2, d_model=d, seed=1))
        for name, d in (("a", 32), ("b", 48))
    }


@pytest.fixture(scope="module")
def trained(model_dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("probe") / "p"
    rc = main(
        [
            "probe",
            "train",
            "--model",
            model_dirs["a"],
            "--dataset",
            "cities,neg_cities",
            "--layers",
            "all",
            "--kinds",
            "logistic,massmean,ccs",
            "--out",
            str(out),
            "--json",
        ]
    )
    assert rc == 0
    return out


def test_train_writes_artifact_and_curve(trained, model_dirs):
    """The saved probe is the validation choice, and its reported test score is that probe's
    accuracy
    on the test statements, recomputed here from the saved weights (not the best of the test
    scores)."""
    from lmscope.models.load import load_model
    from lmscope.probe.artifact import load_probe

    meta = json.loads((trained / "probe.json").read_text())
    assert meta["schema_version"] == 2 and meta["threshold_format"] == "uncalibrated"
    assert meta["model"]["d_model"] == 32 and meta["datasets"] == ["cities", "neg_cities"]
    m = meta["metrics"]
    per = m["per_layer_val"]
    assert {r["hook"] for r in per} == {"blocks.0.resid_post", "blocks.1.resid_post"} and len(
        per
    ) == 6
    best = max(per, key=lambda r: (r["val_acc"], r["val_auroc"], -int(r["hook"].split(".")[1])))
    assert (
        (meta["hook"], meta["kind"])
        == (best["hook"], best["kind"])
        == (m["chosen"]["hook"], m["chosen"]["kind"])
    )
    # The test score by hand: the saved probe on every test statement of both sets.
    probe, _ = load_probe(trained)
    lm = load_model(model_dirs["a"])
    test = load_dataset("cities").test + load_dataset("neg_cities").test
    x = last_token_acts(lm, [s.text for s in test], [probe.hook])[probe.hook]
    y = torch.tensor([s.label for s in test])
    acc = float(((probe.logits(x) > 0).long() == y).double().mean())
    t = m["test"]["acc"]
    assert t["value"] == pytest.approx(acc) and t["lo"] <= acc <= t["hi"]
    assert (t["n"], t["n_units"]) == (len(test), len({s.entity for s in test}))
    # The split is recorded and is the entity split of the datasets.
    ents = m["split"]["entities"]["cities"]
    assert set(ents["test"]) == {s.entity for s in load_dataset("cities").test}
    assert not set(ents["train"]) & set(ents["val"]) and not set(ents["val"]) & set(ents["test"])
    assert m["split"]["chosen_on"] == "val"
    assert (trained / "accuracy.png").stat().st_size > 1000
    assert not [
        p for p in trained.parent.iterdir() if p.name.startswith(".")
    ]  # no temp folders left


def test_save_load_same_scores(trained, model_dirs):
    from lmscope.models.load import load_model
    from lmscope.probe.artifact import load_probe, save_probe

    probe, meta = load_probe(trained)
    lm = load_model(model_dirs["a"])
    x = last_token_acts(lm, ["the cat is big .", "paris is in france ."], [probe.hook])[probe.hook]
    copy = save_probe(
        probe,
        trained.parent / "copy",
        fingerprint=meta["model"],
        datasets=meta["datasets"],
        metrics={},
    )
    again, _ = load_probe(copy)
    torch.testing.assert_close(again.logits(x), probe.logits(x))
    with pytest.raises(UserError, match="--force"):
        save_probe(probe, copy, fingerprint=meta["model"], datasets=[], metrics={})


def test_lie_check_cli(trained, capsys):
    capsys.readouterr()
    assert (
        main(["lie-check", "--probe", str(trained), "Q: is paris in france ? A: yes .", "--json"])
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert 0 <= out["truth_last"] <= 1 and out["answer"] == "yes ."
    assert out["contradiction"] == (out["truth_last"] < out["threshold"])
    assert len(out["per_token"]) == len(out["tokens"])


def test_eval_matrix_cli(trained, model_dirs, capsys):
    """Each cell is the row probe's accuracy on the column's *test* split, and a --train row is
    fitted
    on the train split only: both recomputed here by hand."""
    from lmscope.models.load import load_model
    from lmscope.probe.artifact import load_probe

    lm = load_model(model_dirs["a"])
    capsys.readouterr()
    assert (
        main(
            ["probe", "eval", "--probe", str(trained), "--dataset", "cities,larger_than", "--json"]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    (row,) = out["matrix"].values()
    probe, _ = load_probe(trained)

    def acc_on_test(p, name):
        ds = load_dataset(name)
        x = last_token_acts(lm, [s.text for s in ds.test], [p.hook])[p.hook]
        return float(
            ((p.logits(x) > 0).long() == torch.tensor([s.label for s in ds.test])).double().mean()
        )

    assert set(row) == {"cities", "larger_than"}
    for name in row:
        assert row[name] == pytest.approx(acc_on_test(probe, name))
    cell = next(iter(out["cells"].values()))["cities"]["acc"]
    assert cell["n_units"] == 19 and cell["lo"] <= cell["value"] <= cell["hi"]
    assert (
        main(
            [
                "probe",
                "eval",
                "--model",
                model_dirs["a"],
                "--train",
                "cities,animal_class",
                "--layer",
                "1",
                "--dataset",
                "cities",
                "--json",
            ]
        )
        == 0
    )
    m = json.loads(capsys.readouterr().out)["matrix"]
    assert set(m) == {"cities", "animal_class"}
    ds = load_dataset("animal_class")
    hook = "blocks.1.resid_post"
    x = last_token_acts(lm, [s.text for s in ds.train], [hook])[hook]
    by_hand = fit("logistic", hook, x, torch.tensor([s.label for s in ds.train]))
    assert m["animal_class"]["cities"] == pytest.approx(acc_on_test(by_hand, "cities"))


@pytest.mark.parametrize(
    "argv, msg",
    [
        (["probe", "train", "--dataset", "citiez", "--out", "x"], "did you mean: cities"),
        (["probe", "eval", "--probe", "PROBE", "--dataset", "neg_citis"], "neg_cities"),
        (["lie-check", "--probe", "PROBE", "--model", "MODEL_B", "Q: A: yes"], "trained on"),
        (["lie-check", "--probe", "PROBE", ""], "tokenizes to nothing"),
        (["lie-check", "--probe", "nowhere", "x"], "not a probe"),
        (["probe", "train", "--model", "MODEL_A", "--layers", "7", "--out", "y"], "out of range"),
        (
            ["probe", "train", "--model", "MODEL_A", "--kinds", "logistc", "--out", "y"],
            "did you mean: logistic",
        ),
    ],
)
def test_bad_input_is_one_line_exit_2(
    argv, msg, trained, model_dirs, capsys, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    argv = [
        str(trained)
        if a == "PROBE"
        else model_dirs["b"]
        if a == "MODEL_B"
        else model_dirs["a"]
        if a == "MODEL_A"
        else a
        for a in argv
    ]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and len(err.splitlines()) == 1, err


def test_probe_applied_to_another_layer_or_width(trained, model_dirs):
    from lmscope.models.load import load_model
    from lmscope.probe.artifact import check_compatible, load_probe

    _, meta = load_probe(trained)
    lm = load_model(model_dirs["a"])
    check_compatible(meta, lm)
    with pytest.raises(UserError, match="does not have"):
        check_compatible({**meta, "hook": "blocks.5.resid_post"}, lm)
    with pytest.raises(UserError, match="width"):
        check_compatible({**meta, "d_model": 64}, lm)
    with pytest.raises(UserError, match="d_model"):
        check_compatible(meta, load_model(model_dirs["b"]))


def test_datasets_cli(capsys):
    assert main(["probe", "datasets", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == names() and all(r["true"] == r["false"] for r in rows)


def test_explain_ranks_planted_decoder_row(trained, tmp_path, capsys):
    """A dictionary whose decoder row 3 is the truth direction: explain ranks it first with cos
    1."""
    from lmscope.dictionaries import DictionaryConfig, build
    from lmscope.dictionaries.io import save_saelens
    from lmscope.layout import AtlasLayout
    from lmscope.probe.artifact import load_probe

    probe, meta = load_probe(trained)
    sae = build(
        DictionaryConfig(
            d_in=32, d_sae=16, k=4, hook_name=probe.hook, model_name=meta["model"]["model"]
        )
    )
    with torch.no_grad():
        sae.W_dec[3] = -2 * probe.direction / probe.direction.norm()
    layout = AtlasLayout(tmp_path / "atlas")
    save_saelens(sae, layout.dictionary_dir(probe.hook))
    layout.add_dictionary(probe.hook, model=meta["model"]["model"], arch="topk", d_sae=16)
    capsys.readouterr()
    assert (
        main(
            ["probe", "explain", "--probe", str(trained), str(layout.root), "--top", "3", "--json"]
        )
        == 0
    )
    top = json.loads(capsys.readouterr().out)[0]
    assert top["feature"] == 3 and top["cosine"] == pytest.approx(-1.0, abs=1e-5)
    assert main(["probe", "explain", "--probe", str(trained), str(layout.root)]) == 0
    assert "appear after `lmscope explain`" in capsys.readouterr().out


def test_lie_eval_runs_on_own_answers(trained, model_dirs):
    """The lie evaluation end to end on a tiny model: greedy answers, every scorer, subsets,
    counts."""
    from lmscope.models.load import load_model
    from lmscope.probe.artifact import load_probe
    from lmscope.probe.lies import SCORERS, evaluate_lies

    probe, _ = load_probe(trained)
    lm = load_model(model_dirs["a"])
    rep = evaluate_lies(
        lm,
        probe,
        cities=["Paris", "Berlin", "Rome", "Madrid"],
        train_cities={"Paris"},
        max_new_tokens=3,
        progress=False,
        n_boot=20,
    )
    assert rep.n + rep.n_empty == 8 and len(rep.rollouts) == 8
    assert (
        sum(r["instructed_lie"] for r in rep.rollouts) == 4
        and rep.n_lie_prompt + rep.n_honest_prompt == rep.n
    )
    assert set(rep.scorers) == set(SCORERS) and rep.headline == "unseen_cities"
    assert rep.subsets["unseen_cities"]["n_cities"] == 3
    assert all(0 < r["n_answer_tokens"] <= 3 for r in rep.rollouts if r["answer"])


def _answer(lm, text):
    from lmscope.probe.answers import cut

    return cut(lm, lm.tokenizer(text + " .", add_special_tokens=False)["input_ids"])


def test_lie_eval_planted_probe_known_answer(tiny_llama):
    """A probe planted to read 'correct' on the Q/A format: probe_qa must rank every wrong answer
    below
    every correct one (AUROC 1), read exactly what lie-check reads, take its threshold from honest
    AND
    correct controls, and count only honest and correct answers as false-positive candidates."""
    from lmscope.probe.facts import CITIES
    from lmscope.probe.liecheck import lie_check
    from lmscope.probe.lies import (
        QA,
        QUESTION,
        Rollout,
        is_correct,
        prompt_ids,
        score_rollouts,
        summarize,
    )

    lm, hook = tiny_llama, "blocks.2.resid_post"
    honest = {
        "Berlin": "germany",
        "Madrid": "spain",
        "Paris": "france",
        "Rome": "the sun",
    }  # Rome: honest, wrong
    lie = {"Berlin": "the cat", "Madrid": "red", "Paris": "big", "Rome": "blue"}
    items = [(c, False, honest[c]) for c in honest] + [(c, True, lie[c]) for c in lie]
    qa = [QA.format(question=QUESTION.format(city=c), answer=a) for c, _, a in items]
    correct = [is_correct(a, CITIES[c], c) for c, _, a in items]
    assert correct == [True, True, True, False, False, False, False, False]
    x = last_token_acts(lm, qa, [hook])[hook]
    probe = fit("logistic", hook, x, torch.tensor(correct).long())  # the planted probe
    rollouts = [
        Rollout(
            city=c,
            country=CITIES[c],
            instructed_lie=li,
            answer=a,
            generated=a,
            hit_limit=False,
            correct=ok,
            n_answer_tokens=1,
            probe_saw_city=c == "Berlin",
        )
        for (c, li, a), ok in zip(items, correct)
    ]
    prompts = [prompt_ids(lm, c, "lie" if li else "honest") for c, li, _ in items]
    score_rollouts(lm, probe, rollouts, prompts, [_answer(lm, a) for _, _, a in items])
    rep = summarize(rollouts, n_boot=50)
    qa_res = rep.scorers["probe_qa"]
    assert qa_res["auroc_correctness"] == 1.0 and qa_res["auroc_lies"] == 1.0
    # probe_qa reads the text lie-check reads: the same truth at the last token.
    for r, text in zip(rollouts, qa):
        assert r.truth_qa == pytest.approx(lie_check(lm, probe, text).truth_last, abs=1e-5)
    # Threshold by hand: controls are the honest and correct answers of the even-position cities
    # (sorted: Berlin, Madrid, Paris, Rome -> Berlin, Paris); linear 95th percentile of their lie
    # scores.
    lo, hi = sorted(
        1 - r.truth_qa for r in rollouts if not r.instructed_lie and r.city in ("Berlin", "Paris")
    )
    q = lo + 0.95 * (hi - lo)
    assert qa_res["lie_threshold"] == pytest.approx(q) and rep.thresholds["qa"] == pytest.approx(
        1 - q
    )
    # Held-out honest answers: Madrid (correct) and Rome (wrong): only Madrid can be a false
    # positive.
    madrid = next(r for r in rollouts if r.city == "Madrid" and not r.instructed_lie)
    assert qa_res["n"]["fpr_heldout_honest_correct"] == 1
    assert qa_res["fpr_heldout_honest_correct"] == float(1 - madrid.truth_qa > q)
    # Same-template baseline by hand: log p(" germany" | BOS "The city of Berlin is in"), mean over
    # its tokens.
    r0 = rollouts[0]
    pre = [lm.bos_token_id] + lm.tokenizer("The city of Berlin is in", add_special_tokens=False)[
        "input_ids"
    ]
    ans = lm.tokenizer(" germany", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(lm.model(torch.tensor([pre + ans])).logits[0].float(), -1)
    ref = logp[len(pre) - 1 : -1].gather(1, torch.tensor(ans)[:, None]).mean()
    assert r0.template_logprob == pytest.approx(float(ref), abs=1e-4)
    assert rep.headline == "unseen_cities" and rep.subsets["unseen_cities"]["n_cities"] == 3


def test_lie_eval_scores_exactly_the_answer_tokens(tiny_llama):
    """Fast path == reference: the in-context probe score is the mean over the cut answer's tokens,
    read one
    prompt at a time, and the log-probability baseline is the answer tokens' mean log-prob under
    the neutral prompt."""
    from lmscope.probe.activations import token_acts
    from lmscope.probe.answers import cut, greedy
    from lmscope.probe.lies import evaluate_lies, prompt_ids
    from lmscope.probe.probes import Probe

    g = torch.Generator().manual_seed(3)
    hook = "blocks.1.resid_post"
    probe = Probe(
        "logistic",
        hook,
        torch.randn(tiny_llama.d_model, generator=g) * 0.3,
        0.1,
        torch.randn(tiny_llama.d_model, generator=g),
    )
    cities = ["Paris", "Rome"]
    rep = evaluate_lies(
        tiny_llama, probe, cities=cities, max_new_tokens=5, batch_size=3, progress=False, n_boot=20
    )
    for r in rep.rollouts:
        p = prompt_ids(tiny_llama, r["city"], "lie" if r["instructed_lie"] else "honest")
        a = cut(tiny_llama, greedy(tiny_llama, [p], 5)[0])
        assert a.text == r["answer"]
        if not a.text:
            continue
        ctx = token_acts(tiny_llama, p + a.generated[: a.stop], hook)[
            len(p) + a.start : len(p) + a.stop
        ]
        assert r["truth_answer_tokens"] == pytest.approx(float(probe.probs(ctx).mean()), abs=1e-5)
        q = prompt_ids(tiny_llama, r["city"], "neutral")
        with torch.no_grad():
            logp = torch.log_softmax(
                tiny_llama.model(torch.tensor([q + a.tokens])).logits[0].float(), -1
            )
        ref = logp[len(q) - 1 : -1].gather(1, torch.tensor(a.tokens)[:, None]).mean()
        assert r["logprob"] == pytest.approx(float(ref), abs=1e-4)


def test_batched_greedy_equals_one_at_a_time(tiny_llama):
    """Left-padded batched generation gives each prompt the answer it gets alone."""
    from lmscope.probe.answers import greedy

    g = torch.Generator().manual_seed(0)
    prompts = [
        [1] + torch.randint(4, 100, (int(n),), generator=g).tolist() for n in (3, 11, 6, 17, 9)
    ]
    batched = greedy(tiny_llama, prompts, max_new_tokens=8)
    alone = [greedy(tiny_llama, [p], max_new_tokens=8)[0] for p in prompts]
    assert batched == alone
    assert len({tuple(r) for r in alone}) > 1  # the prompts really lead to different answers


def test_span_reads_equal_one_row_at_a_time(tiny_llama):
    from lmscope.probe.activations import span_acts, token_acts
    from lmscope.probe.answers import token_logprobs

    g = torch.Generator().manual_seed(1)
    rows = [[1] + torch.randint(4, 100, (int(n),), generator=g).tolist() for n in (5, 12, 8)]
    spans = [(2, 5), (7, 13), (1, 9)]
    hook = "blocks.2.resid_post"
    for r, (a, b), got in zip(rows, spans, span_acts(tiny_llama, rows, spans, hook, batch_size=3)):
        torch.testing.assert_close(got, token_acts(tiny_llama, r, hook)[a:b], atol=1e-5, rtol=1e-5)
    for r, (a, b), got in zip(rows, spans, token_logprobs(tiny_llama, rows, spans, batch_size=3)):
        with torch.no_grad():
            logp = torch.log_softmax(
                tiny_llama.model(torch.tensor([r])).logits[0].float(), -1
            )  # [pos, vocab]
        torch.testing.assert_close(
            got, logp[torch.arange(a - 1, b - 1), torch.tensor(r[a:b])], atol=1e-5, rtol=1e-5
        )


@pytest.mark.parametrize(
    "text, answer",
    [
        ("Egypt.", "Egypt"),
        ("  The United States.\nThe city of ...", "The United States"),
        ("Egypt\n\nMore text.", "Egypt"),
        ("It is in the U.S. It is big.", "It is in the U.S"),
        (
            "Bangkok is a city in Thailand, not Laos! Yes.",
            "Bangkok is a city in Thailand, not Laos",
        ),
        ("France", "France"),
        ("", ""),
        ("\n.", ""),
        (" .", ""),
    ],
)
def test_answer_cut_at_first_newline_or_sentence_end(text, answer):
    from lmscope.probe.answers import clean_answer

    assert clean_answer(text) == answer


def test_cut_finds_the_answer_tokens(tiny_llama):
    """The token span covers the answer up to and including its end mark, nothing after it."""
    from lmscope.probe.answers import cut

    ids = tiny_llama.tokenizer("paris is in france . the cat", add_special_tokens=False)[
        "input_ids"
    ]
    a = cut(tiny_llama, ids)
    assert a.text == "paris is in france" and a.tokens == ids[:5]
    assert cut(tiny_llama, ids[4:5]).text == ""  # only "." -> empty


def test_correctness_matches_whole_words_and_aliases():
    from lmscope.probe.lies import is_correct

    assert is_correct("USA", "the United States") and is_correct(
        "The United States of America.", "the United States"
    )
    assert not is_correct("Russia", "the United States")  # "us" inside a word is no match
    assert is_correct("Perú", "Peru") and is_correct("Scotland", "the United Kingdom", "Edinburgh")
    assert not is_correct("Scotland", "the United Kingdom", "London")
    assert not is_correct("Nigeria", "Niger") and is_correct("Lagos, Nigeria", "Nigeria")


def _rollout(city, lie, truth, correct=True, answer="x"):
    from lmscope.probe.lies import Rollout

    return Rollout(
        city=city,
        country="C",
        instructed_lie=lie,
        answer=answer,
        generated=answer,
        hit_limit=False,
        correct=correct,
        n_answer_tokens=len(answer),
        probe_saw_city=False,
        truth_answer_tokens=truth,
        truth_qa=truth,
        truth_statement=truth,
        logprob=-1.0,
        template_logprob=-1.0,
        random_answer_tokens=0.5,
        random_statement=0.5,
    )


def test_lie_metrics_on_planted_scores_and_empty_answers_left_out():
    """A probe that separates lies perfectly gets AUROC 1, FPR 0, TPR 1; empty answers change only
    the count."""
    from lmscope.probe.lies import summarize

    cities = [f"c{i:02d}" for i in range(20)]
    rolls = [
        _rollout(c, lie, 0.1 if lie else 0.6 + 0.01 * i, correct=not lie)
        for i, c in enumerate(cities)
        for lie in (False, True)
    ]
    rep = summarize(rolls, n_boot=50)
    probe = rep.scorers["probe_answer_tokens"]
    assert (
        probe["auroc_instructed"] == 1.0
        and probe["auroc_correctness"] == 1.0
        and probe["auroc_lies"] == 1.0
    )
    assert probe["fpr_heldout_honest_correct"] <= 0.1 and probe["tpr_heldout_lie_prompt"] == 1.0
    assert probe["intervals"]["auroc_lies"] == [1.0, 1.0]
    assert rep.scorers["baseline_logprob"]["auroc_instructed"] == 0.5  # constant score: no signal
    empties = [_rollout("c05", True, None, answer=""), _rollout("zz", False, None, answer="")]
    rep2 = summarize(rolls + empties, n_boot=50)
    assert (
        rep2.n_empty == 2
        and rep2.n == rep.n
        and rep2.subsets == rep.subsets
        and len(rep2.rollouts) == 42
    )


def test_probe_lies_cli_and_stored_threshold(trained, tmp_path, capsys):
    """`probe lies` prints every subset; a random tiny model names no country, so there are no
    honest and
    correct controls and --set-threshold refuses in one line. A stored qa threshold is what
    lie-check
    applies, and it says which format it came from."""
    import shutil

    from lmscope.probe.artifact import set_thresholds

    probe = tmp_path / "p"
    shutil.copytree(trained, probe)
    capsys.readouterr()
    assert (
        main(
            [
                "probe",
                "lies",
                "--probe",
                str(probe),
                "--limit",
                "4",
                "--max-new-tokens",
                "3",
                "--n-boot",
                "20",
                "--json",
            ]
        )
        == 0
    )
    rep = json.loads(capsys.readouterr().out)
    assert rep["max_new_tokens"] == 3 and len(rep["rollouts"]) == 8
    assert main(["probe", "lies", "--probe", str(probe), "--max-new-tokens", "0"]) == 2
    assert (
        main(
            [
                "probe",
                "lies",
                "--probe",
                str(probe),
                "--limit",
                "4",
                "--max-new-tokens",
                "3",
                "--n-boot",
                "20",
                "--set-threshold",
            ]
        )
        == 2
    )
    assert "honest and correct control" in capsys.readouterr().err
    assert (
        main(
            [
                "probe",
                "lies",
                "--probe",
                str(probe),
                "--limit",
                "4",
                "--max-new-tokens",
                "3",
                "--n-boot",
                "20",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert (
        "probe_qa" in out
        and "baseline_template_logprob" in out
        and "ran into the 3-token limit" in out
    )
    set_thresholds(probe, {"qa": 0.999, "statement": 0.001})
    assert (
        main(["lie-check", "--probe", str(probe), "Q: is paris in france ? A: yes .", "--json"])
        == 0
    )
    res = json.loads(capsys.readouterr().out)
    assert res["threshold"] == 0.999 and res["threshold_format"] == "qa" and res["contradiction"]


# --- transfer ---------------------------------------------------------------------------
def test_midpoint_recalibration_by_hand():
    """Three entities (true, false scores): e1 (2, 0), e2 (1, 0.5), e3 (3, 2.5). One labelled
    entity sets
    the threshold at the midpoint of its two scores; accuracy on the other two entities by hand:
    e1 -> 1.0: 2/4; e2 -> 0.75: 3/4; e3 -> 2.75: 2/4. Every draw gives one of these, the mean
    7/12."""
    from lmscope.probe.transfer import midpoint_accuracy

    score = torch.tensor([2.0, 0.0, 1.0, 0.5, 3.0, 2.5], dtype=torch.float64)
    y = torch.tensor([1, 0, 1, 0, 1, 0])
    ents = ["e1", "e1", "e2", "e2", "e3", "e3"]
    mean, rng = midpoint_accuracy(score, y, ents, 1, 600, torch.Generator().manual_seed(0))
    assert mean == pytest.approx(7 / 12, abs=0.03) and rng == [0.5, 0.75]
    # k >= entities: nothing left to score
    assert math.isnan(midpoint_accuracy(score, y, ents, 3, 5, torch.Generator())[0])


def test_transfer_cli_holds_out_each_domain(model_dirs, capsys):
    """Every statement of the held-out domain is scored, and the log-probability baseline is the
    mean
    token log-probability of the statement, checked by hand for one statement."""
    from lmscope.models.load import load_model
    from lmscope.probe.transfer import statement_logprobs

    capsys.readouterr()
    assert (
        main(
            [
                "probe",
                "transfer",
                "--model",
                model_dirs["a"],
                "--datasets",
                "cities,neg_cities,larger_than",
                "--layers",
                "1",
                "--shots",
                "2",
                "--repeats",
                "3",
                "--n-boot",
                "50",
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    by = {d["domain"]: d for d in out["domains"]}
    assert set(by) == {"cities", "numbers"}
    assert (
        by["cities"]["n"] == len(load_dataset("cities").all) * 2
        and by["cities"]["n_entities"] == 85
    )
    assert by["numbers"]["sets"] == ["larger_than"] and by["numbers"]["n"] == len(
        load_dataset("larger_than").all
    )
    lm = load_model(model_dirs["a"])
    text = "The city of Paris is in France."
    ids = [lm.bos_token_id] + lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(lm.model(torch.tensor([ids])).logits[0].float(), -1)
    ref = logp[:-1].gather(1, torch.tensor(ids[1:])[:, None]).mean()
    assert float(statement_logprobs(lm, [text])[0]) == pytest.approx(float(ref), abs=1e-5)
    assert (
        main(
            [
                "probe",
                "transfer",
                "--model",
                model_dirs["a"],
                "--datasets",
                "cities",
                "--layers",
                "1",
            ]
        )
        == 2
    )
