"""Truth probes: datasets, batched activations, planted-direction recovery, artifact, CLI errors."""

from __future__ import annotations

import json

import pytest
import torch

from lmscope.cli import main
from lmscope.errors import UserError
from lmscope.probe.activations import last_token_acts
from lmscope.probe.datasets import BUILTIN, load_dataset, names
from lmscope.probe.lies import auroc
from lmscope.probe.probes import KINDS, fit


# --- datasets -----------------------------------------------------------------------
@pytest.mark.parametrize("name", list(BUILTIN))
def test_dataset_balanced_deterministic_entity_split(name):
    a, b = load_dataset(name), load_dataset(name)
    assert a == b  # deterministic
    for split in (a.train, a.test):
        assert sum(s.label for s in split) * 2 == len(split)  # balanced
    assert not {s.entity for s in a.train} & {s.entity for s in a.test}
    assert len(a.test) >= 16 and len(a.train) > len(a.test)
    for s in a.all:
        assert s.text != s.contrast and s.text.endswith((".", '"."'))


def test_negated_sets_share_the_entity_split_and_flip_labels():
    pos, neg = load_dataset("cities"), load_dataset("neg_cities")
    assert {s.entity for s in pos.test} == {s.entity for s in neg.test}
    for p, n in zip(pos.all, neg.all):
        assert (p.text, p.label) == (n.contrast, 1 - n.label)
    # numbers: a test number never appears in a training statement, even as the second number
    lt = load_dataset("larger_than")
    from lmscope.probe.facts import number_word

    test_words = {number_word(int(e)) for e in {s.entity for s in lt.test}}
    for s in lt.train:
        assert not any(w in s.text.lower() for w in test_words), s.text


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
    assert "The city of Paris is in France." in {s.text for s in load_dataset("cities").all if s.label}


# --- activations --------------------------------------------------------------------
def test_batched_last_token_equals_unbatched(tiny_llama):
    texts = ["the cat is big .", "paris is the capital of france .", "a dog", "berlin is in germany and rome is "
             "in italy ."]
    hooks = ["blocks.0.resid_post", "blocks.2.resid_post"]
    batched = last_token_acts(tiny_llama, texts, hooks, batch_size=4)
    for i, t in enumerate(texts):
        one = last_token_acts(tiny_llama, [t], hooks, batch_size=1)
        ids = tiny_llama.to_tokens(t)
        ref = tiny_llama.run(ids, capture=hooks)
        for h in hooks:
            torch.testing.assert_close(batched[h][i], one[h][0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(batched[h][i], ref.acts[h][0, -1].float(), atol=1e-5, rtol=1e-5)


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
    texts = [" ".join(words[int(i)] for i in torch.randint(len(words), (5,), generator=g)) for _ in range(n)]
    y = torch.arange(n) % 2
    hook = "blocks.1.resid_post"
    scale = last_token_acts(lm, texts[:16], ["blocks.0.resid_post"])["blocks.0.resid_post"].norm(dim=1).mean()

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
    """The probe is not trivially perfect: with no planted signal, held-out accuracy is near chance."""
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


# --- artifact and CLI -------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """Two tiny models saved as HF folders (so the CLI can load them by path)."""
    from lmscope.models.tiny import tiny_model

    root = tmp_path_factory.mktemp("models")
    out = {}
    for name, d in (("a", 32), ("b", 48)):
        lm = tiny_model("llama", n_layers=2, d_model=d, seed=1)
        lm.model.save_pretrained(root / name)
        lm.tokenizer.save_pretrained(root / name)
        out[name] = str(root / name)
    return out


@pytest.fixture(scope="module")
def trained(model_dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("probe") / "p"
    rc = main(["probe", "train", "--model", model_dirs["a"], "--dataset", "cities,neg_cities", "--layers", "all",
               "--kinds", "logistic,massmean,ccs", "--out", str(out), "--json"])
    assert rc == 0
    return out


def test_train_writes_artifact_and_curve(trained, model_dirs):
    meta = json.loads((trained / "probe.json").read_text())
    assert meta["schema_version"] == 1 and meta["kind"] == "logistic"
    assert meta["model"]["d_model"] == 32 and meta["datasets"] == ["cities", "neg_cities"]
    assert set(meta["metrics"]["per_layer"]) == {"blocks.0.resid_post", "blocks.1.resid_post"}
    assert (trained / "accuracy.png").stat().st_size > 1000
    assert not [p for p in trained.parent.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_save_load_same_scores(trained, model_dirs):
    from lmscope.models.load import load_model
    from lmscope.probe.artifact import load_probe, save_probe

    probe, meta = load_probe(trained)
    lm = load_model(model_dirs["a"])
    x = last_token_acts(lm, ["the cat is big .", "paris is in france ."], [probe.hook])[probe.hook]
    copy = save_probe(probe, trained.parent / "copy", fingerprint=meta["model"], datasets=meta["datasets"],
                      metrics={})
    again, _ = load_probe(copy)
    torch.testing.assert_close(again.logits(x), probe.logits(x))
    with pytest.raises(UserError, match="--force"):
        save_probe(probe, copy, fingerprint=meta["model"], datasets=[], metrics={})


def test_lie_check_cli(trained, capsys):
    capsys.readouterr()
    assert main(["lie-check", "--probe", str(trained), "Q: is paris in france ? A: yes .", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert 0 <= out["truth_last"] <= 1 and out["answer"] == "yes ."
    assert out["contradiction"] == (out["truth_last"] < out["threshold"])
    assert len(out["per_token"]) == len(out["tokens"])


def test_eval_matrix_cli(trained, model_dirs, capsys):
    capsys.readouterr()
    assert main(["probe", "eval", "--probe", str(trained), "--dataset", "cities,larger_than", "--json"]) == 0
    m = json.loads(capsys.readouterr().out)["matrix"]
    (row,) = m.values()
    assert set(row) == {"cities", "larger_than"} and all(0 <= v <= 1 for v in row.values())
    assert main(["probe", "eval", "--model", model_dirs["a"], "--train", "cities,animal_class", "--layer", "1",
                 "--dataset", "cities", "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)["matrix"]) == {"cities", "animal_class"}


@pytest.mark.parametrize("argv, msg", [
    (["probe", "train", "--dataset", "citiez", "--out", "x"], "did you mean: cities"),
    (["probe", "eval", "--probe", "PROBE", "--dataset", "neg_citis"], "neg_cities"),
    (["lie-check", "--probe", "PROBE", "--model", "MODEL_B", "Q: A: yes"], "trained on"),
    (["lie-check", "--probe", "PROBE", ""], "tokenizes to nothing"),
    (["lie-check", "--probe", "nowhere", "x"], "not a probe"),
    (["probe", "train", "--model", "MODEL_A", "--layers", "7", "--out", "y"], "out of range"),
    (["probe", "train", "--model", "MODEL_A", "--kinds", "logistc", "--out", "y"], "did you mean: logistic"),
])
def test_bad_input_is_one_line_exit_2(argv, msg, trained, model_dirs, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = [str(trained) if a == "PROBE" else model_dirs["b"] if a == "MODEL_B" else
            model_dirs["a"] if a == "MODEL_A" else a for a in argv]
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
    """A dictionary whose decoder row 3 is the truth direction: explain ranks it first with cos 1."""
    from lmscope.atlas.layout import AtlasLayout
    from lmscope.dictionaries import DictionaryConfig, build
    from lmscope.dictionaries.io import save_saelens
    from lmscope.probe.artifact import load_probe

    probe, meta = load_probe(trained)
    sae = build(DictionaryConfig(d_in=32, d_sae=16, k=4, hook_name=probe.hook, model_name=meta["model"]["model"]))
    with torch.no_grad():
        sae.W_dec[3] = -2 * probe.direction / probe.direction.norm()
    layout = AtlasLayout(tmp_path / "atlas")
    save_saelens(sae, layout.dictionary_dir(probe.hook))
    layout.add_dictionary(probe.hook, model=meta["model"]["model"], arch="topk", d_sae=16)
    capsys.readouterr()
    assert main(["probe", "explain", "--probe", str(trained), str(layout.root), "--top", "3", "--json"]) == 0
    top = json.loads(capsys.readouterr().out)[0]
    assert top["feature"] == 3 and top["cosine"] == pytest.approx(-1.0, abs=1e-5)
    assert main(["probe", "explain", "--probe", str(trained), str(layout.root)]) == 0
    assert "appear after `lmscope explain`" in capsys.readouterr().out


def test_lie_eval_runs_on_own_answers(trained, model_dirs):
    """The lie evaluation end to end on a tiny model: greedy answers, probe scores, AUROCs, threshold."""
    from lmscope.models.load import load_model
    from lmscope.probe.artifact import load_probe
    from lmscope.probe.lies import SCORERS, evaluate_lies

    probe, _ = load_probe(trained)
    lm = load_model(model_dirs["a"])
    rep = evaluate_lies(lm, probe, cities=["Paris", "Berlin", "Rome", "Madrid"], train_cities={"Paris"},
                        max_new_tokens=3, progress=False)
    assert rep.n + rep.n_empty == 8 and len(rep.rollouts) == 8
    assert sum(r["instructed_lie"] for r in rep.rollouts) == 4 and rep.n_lie_prompt + rep.n_honest_prompt == rep.n
    assert set(rep.scorers) == set(SCORERS) and rep.n_unseen_cities == 3
    for k, res in rep.scorers.items():
        for m in ("auroc_instructed", "fpr_heldout_honest", "tpr_heldout_lie_prompt"):
            assert 0 <= res[m] <= 1, (k, m)
        # A random tiny model names no country: with no correct answer, correctness AUROC is undefined.
        both = {r["correct"] for r in rep.rollouts if r["answer"]} == {True, False}
        assert both == (0 <= res["auroc_correctness"] <= 1)
    honest_ctrl = [r["truth_statement"] for r in rep.rollouts if not r["instructed_lie"] and r["city"] in ("Berlin", "Paris")]
    assert min(honest_ctrl) <= rep.threshold <= max(honest_ctrl)
    assert all(0 < r["n_answer_tokens"] <= 3 for r in rep.rollouts if r["answer"])


def test_lie_eval_scores_exactly_the_answer_tokens(tiny_llama):
    """Fast path == reference: the in-context probe score is the mean over the cut answer's tokens, read one
    prompt at a time, and the log-probability baseline is the answer tokens' mean log-prob under the neutral prompt."""
    from lmscope.probe.activations import token_acts
    from lmscope.probe.answers import cut, greedy
    from lmscope.probe.lies import evaluate_lies, prompt_ids
    from lmscope.probe.probes import Probe

    g = torch.Generator().manual_seed(3)
    hook = "blocks.1.resid_post"
    probe = Probe("logistic", hook, torch.randn(tiny_llama.d_model, generator=g) * 0.3, 0.1,
                  torch.randn(tiny_llama.d_model, generator=g))
    cities = ["Paris", "Rome"]
    rep = evaluate_lies(tiny_llama, probe, cities=cities, max_new_tokens=5, batch_size=3, progress=False)
    for r in rep.rollouts:
        p = prompt_ids(tiny_llama, r["city"], "lie" if r["instructed_lie"] else "honest")
        a = cut(tiny_llama, greedy(tiny_llama, [p], 5)[0])
        assert a.text == r["answer"]
        if not a.text:
            continue
        ctx = token_acts(tiny_llama, p + a.generated[: a.stop], hook)[len(p) + a.start: len(p) + a.stop]
        assert r["truth_answer_tokens"] == pytest.approx(float(probe.probs(ctx).mean()), abs=1e-5)
        q = prompt_ids(tiny_llama, r["city"], "neutral")
        with torch.no_grad():
            logp = torch.log_softmax(tiny_llama.model(torch.tensor([q + a.tokens])).logits[0].float(), -1)
        ref = logp[len(q) - 1: -1].gather(1, torch.tensor(a.tokens)[:, None]).mean()
        assert r["logprob"] == pytest.approx(float(ref), abs=1e-4)


def test_batched_greedy_equals_one_at_a_time(tiny_llama):
    """Left-padded batched generation gives each prompt the answer it gets alone."""
    from lmscope.probe.answers import greedy

    g = torch.Generator().manual_seed(0)
    prompts = [[1] + torch.randint(4, 100, (int(n),), generator=g).tolist() for n in (3, 11, 6, 17, 9)]
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
            logp = torch.log_softmax(tiny_llama.model(torch.tensor([r])).logits[0].float(), -1)  # [pos, vocab]
        torch.testing.assert_close(got, logp[torch.arange(a - 1, b - 1), torch.tensor(r[a:b])], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("text, answer", [
    ("Egypt.", "Egypt"), ("  The United States.\nThe city of ...", "The United States"),
    ("Egypt\n\nMore text.", "Egypt"), ("It is in the U.S. It is big.", "It is in the U.S"),
    ("Bangkok is a city in Thailand, not Laos! Yes.", "Bangkok is a city in Thailand, not Laos"),
    ("France", "France"), ("", ""), ("\n.", ""), (" .", ""),
])
def test_answer_cut_at_first_newline_or_sentence_end(text, answer):
    from lmscope.probe.answers import clean_answer

    assert clean_answer(text) == answer


def test_cut_finds_the_answer_tokens(tiny_llama):
    """The token span covers the answer up to and including its end mark, nothing after it."""
    from lmscope.probe.answers import cut

    ids = tiny_llama.tokenizer("paris is in france . the cat", add_special_tokens=False)["input_ids"]
    a = cut(tiny_llama, ids)
    assert a.text == "paris is in france" and a.tokens == ids[:5]
    assert cut(tiny_llama, ids[4:5]).text == ""  # only "." -> empty


def test_correctness_matches_whole_words_and_aliases():
    from lmscope.probe.lies import is_correct

    assert is_correct("USA", "the United States") and is_correct("The United States of America.", "the United States")
    assert not is_correct("Russia", "the United States")  # "us" inside a word is no match
    assert is_correct("Perú", "Peru") and is_correct("Scotland", "the United Kingdom", "Edinburgh")
    assert not is_correct("Scotland", "the United Kingdom", "London")
    assert not is_correct("Nigeria", "Niger") and is_correct("Lagos, Nigeria", "Nigeria")


def _rollout(city, lie, truth, correct=True, answer="x"):
    from lmscope.probe.lies import Rollout

    return Rollout(city=city, country="C", instructed_lie=lie, answer=answer, generated=answer, hit_limit=False,
                   correct=correct, n_answer_tokens=len(answer), probe_saw_city=False,
                   truth_answer_tokens=truth, truth_statement=truth, logprob=-1.0, random_answer_tokens=0.5,
                   random_statement=0.5)


def test_lie_metrics_on_planted_scores_and_empty_answers_left_out():
    """A probe that separates lies perfectly gets AUROC 1, FPR 0, TPR 1; empty answers change only the count."""
    from lmscope.probe.lies import summarize

    cities = [f"c{i:02d}" for i in range(20)]
    rolls = [_rollout(c, lie, 0.1 if lie else 0.6 + 0.01 * i, correct=not lie)
             for i, c in enumerate(cities) for lie in (False, True)]
    rep = summarize(rolls)
    probe = rep.scorers["probe_answer_tokens"]
    assert probe["auroc_instructed"] == 1.0 and probe["auroc_correctness"] == 1.0 and probe["auroc_lies"] == 1.0
    assert probe["fpr_heldout_honest"] <= 0.1 and probe["tpr_heldout_lie_prompt"] == 1.0
    assert rep.scorers["baseline_logprob"]["auroc_instructed"] == 0.5  # constant score: no signal
    empties = [_rollout("c05", True, None, answer=""), _rollout("zz", False, None, answer="")]
    rep2 = summarize(rolls + empties)
    assert rep2.n_empty == 2 and rep2.n == rep.n and rep2.scorers == rep.scorers and len(rep2.rollouts) == 42


def test_probe_lies_cli_sets_threshold(trained, tmp_path, capsys):
    import shutil

    probe = tmp_path / "p"
    shutil.copytree(trained, probe)
    capsys.readouterr()
    assert main(["probe", "lies", "--probe", str(probe), "--limit", "4", "--max-new-tokens", "3",
                 "--set-threshold", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert json.loads((probe / "probe.json").read_text())["threshold"] == pytest.approx(rep["threshold"])
    assert rep["max_new_tokens"] == 3 and len(rep["rollouts"]) == 8
    assert main(["probe", "lies", "--probe", str(probe), "--max-new-tokens", "0"]) == 2
    capsys.readouterr()
    assert main(["probe", "lies", "--probe", str(probe), "--limit", "4", "--max-new-tokens", "3"]) == 0
    out = capsys.readouterr().out
    assert "probe_answer_tokens" in out and "baseline_logprob" in out and "ran into the 3-token limit" in out
