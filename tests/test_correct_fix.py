"""correct/: bug files, behaviour margins, side effects, diagnose and the fix loop (tiny models)."""

from __future__ import annotations

import json

import pytest
import torch

from lmscope.cli import main
from lmscope.correct.bugs import BugCase, BugSet, load_bugs, split
from lmscope.correct.diagnose import contrastive_directions
from lmscope.correct.edits import AddVector
from lmscope.correct.fix import run_fix
from lmscope.correct.fix_config import FixConfig
from lmscope.correct.measure import pair_margins, text_effect
from lmscope.errors import UserError

WORDS = "the cat dog sees a red big house tree river one two three sun moon star".split()


def _write(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _tied_llama(n_layers=2):
    from transformers import AutoModelForCausalLM

    from lmscope.models.load import from_pretrained_model
    from lmscope.models.tiny import tiny_config, tiny_tokenizer

    tok = tiny_tokenizer()
    cfg = tiny_config("llama", n_layers=n_layers, vocab=len(tok))
    cfg.tie_word_embeddings = True
    torch.manual_seed(0)
    return from_pretrained_model(AutoModelForCausalLM.from_config(cfg), tok, name="tiny-tied")


# --- bug files ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "lines, msg",
    [
        ([], "no prompts"),
        (["{not json"], ":1: not valid JSON"),
        (['{"prompt": ""}'], "non-empty string"),
        (['{"prompt": "a", "bad": "x"}'], "both"),
        (['{"prompt": "a", "bad": "x", "good": "x"}'], "same text"),
        (['{"prompt": "a", "colour": 1}'], "unknown field 'colour'"),
        (['{"prompt": "a", "bad": "x", "good": "y"}', '{"prompt": "b"}'], "mixes"),
        (['{"prompt": "a", "chat": "yes"}'], "true or false"),
    ],
)
def test_bad_bug_files_are_refused_with_one_line(tmp_path, lines, msg):
    f = tmp_path / "bugs.jsonl"
    f.write_text("\n".join(lines))
    with pytest.raises(UserError, match=msg) as e:
        load_bugs(f)
    assert "\n" not in str(e.value)


def test_bad_bug_file_exits_2_without_traceback(tmp_path, capsys):
    f = tmp_path / "bugs.jsonl"
    f.write_text("{oops\n")
    assert main(["fix", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not valid JSON" in err and "Traceback" not in err
    assert main(["fix", str(tmp_path / "missing.jsonl")]) == 2


def test_split_keeps_groups_together_and_is_deterministic():
    cases = tuple(
        BugCase(f"p{i}", "x", "y", group=f"g{i // 3}") for i in range(60)
    )  # 20 groups of 3
    bugs = BugSet(cases, "pairs")
    fit, held = split(bugs, heldout=0.25, seed=3)
    assert {c.group for c in fit.cases}.isdisjoint({c.group for c in held.cases})
    assert len({c.group for c in held.cases}) == 5 and len(fit) + len(held) == 60
    assert split(bugs, heldout=0.25, seed=3) == (fit, held)
    assert split(bugs, heldout=0.25, seed=4) != (fit, held)
    with pytest.raises(UserError, match="one group"):
        split(BugSet((BugCase("a", "x", "y", group="g"),) * 3, "pairs"))


# --- measures -----------------------------------------------------------------------------------
def test_pair_margins_equal_a_hand_computed_log_probability(tiny_llama):
    lm = tiny_llama
    cases = [
        BugCase("the cat sees", " a red dog", " the sun"),
        BugCase("one two", " three", " moon"),
    ]
    got = pair_margins(lm, cases)
    for c, m in zip(cases, got):
        ref = []
        for cont in (c.bad, c.good):
            p = lm.to_tokens(c.prompt)[0].tolist()
            q = lm.tokenizer(cont, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                lp = torch.log_softmax(lm.model(torch.tensor([p + q])).logits[0].double(), -1)
            ref.append(sum(float(lp[len(p) - 1 + j, t]) for j, t in enumerate(q)))
        assert float(m) == pytest.approx(ref[0] - ref[1], abs=1e-4)


def test_text_effect_of_no_edit_is_zero_and_of_an_edit_matches_by_hand(tiny_llama):
    lm = tiny_llama
    g = torch.Generator().manual_seed(0)
    ctx = [
        torch.cat([torch.tensor([1]), torch.randint(4, 60, (15,), generator=g)]) for _ in range(4)
    ]
    none = text_effect(lm, {}, ctx)
    assert none.added_nats.value == 0 and none.kl.value == 0
    assert none.accuracy_before == none.accuracy_after and none.tokens == 4 * 15
    edit = AddVector(1, torch.randn(lm.d_model, generator=g)).runtime(lm)
    eff = text_effect(lm, edit, ctx, batch_size=3)
    ids = torch.stack(ctx)
    with torch.no_grad():
        a = torch.log_softmax(lm.model(ids).logits[:, :-1].double(), -1)
        with lm.edit(edit):
            b = torch.log_softmax(lm.model(ids).logits[:, :-1].double(), -1)
    t = ids[:, 1:, None]
    added = float((-(b.gather(-1, t)) + a.gather(-1, t)).mean())
    kl = float((a.exp() * (a - b)).sum(-1).mean())
    assert eff.added_nats.value == pytest.approx(added, rel=1e-4)
    assert eff.kl.value == pytest.approx(kl, rel=1e-4) and eff.kl.lo <= eff.kl.value <= eff.kl.hi


def test_contrastive_direction_recovers_a_planted_direction():
    """Two continuations whose embeddings differ only along u: the layer-0 direction is u."""
    lm = _tied_llama()
    tok = lm.tokenizer
    b, gd = tok.convert_tokens_to_ids("dog"), tok.convert_tokens_to_ids("cat")
    u = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(5))
    u = u / u.norm()
    with torch.no_grad():
        E = lm.model.get_input_embeddings().weight
        E[b] = E[gd] + 3.0 * u
    cases = tuple(BugCase(f"{w} sees the", " dog", " cat") for w in WORDS)
    d = contrastive_directions(lm, BugSet(cases, "pairs"), [0])[0].vector
    assert float(torch.nn.functional.cosine_similarity(d, u, dim=0)) > 0.9


# --- the loop -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def buggy(tmp_path_factory):
    """A tied tiny Llama with a planted bias toward ' dog' over ' cat' in its last MLP (bad rate
    from ~0.5 to 1), a bug file of 24 prompts in 24 groups, and a corpus for the side effects."""
    from conftest import save_model

    from lmscope.correct.weights import fold

    d = tmp_path_factory.mktemp("buggy")
    lm = _tied_llama()
    tok = lm.tokenizer
    b, gd = tok.convert_tokens_to_ids("dog"), tok.convert_tokens_to_ids("cat")
    E = lm.model.get_input_embeddings().weight.detach()
    w = E[b] - E[gd]
    lm = fold(lm, AddVector(1, 0.1 * w / w.norm()))  # mean margin -0.01 -> +0.55
    save_model(lm, d / "model")
    g = torch.Generator().manual_seed(1)
    rows = []
    for i in range(24):
        words = [WORDS[j] for j in torch.randint(0, len(WORDS), (4,), generator=g).tolist()]
        rows.append({"prompt": " ".join(words), "bad": " dog", "good": " cat", "group": f"g{i}"})
    _write(d / "bugs.jsonl", rows)
    docs = [
        " ".join(WORDS[j] for j in torch.randint(0, len(WORDS), (40,), generator=g).tolist())
        for _ in range(400)
    ]
    (d / "corpus.txt").write_text("\n\n".join(docs))
    return d


def test_fix_lowers_the_planted_bug_on_held_out_prompts_and_beats_the_control(buggy):
    from lmscope.models import load_model

    lm = load_model(str(buggy / "model"))
    cfg = FixConfig(
        bugs=str(buggy / "bugs.jsonl"),
        model=str(buggy / "model"),
        layers="1",
        corpus=str(buggy / "corpus.txt"),
        ctx_len=16,
        text_tokens=150,
        max_added_nats=5.0,
        knowledge=False,
        truth=False,  # truth-probe candidates: tests/test_correct_gates.py
    )
    rep, edit = run_fix(lm, cfg, progress=False)
    assert rep.n_fit + rep.n_heldout == 24 and rep.n_heldout == 12
    assert rep.before_bad_rate.value > 0.9  # the planted bug is there
    assert edit is not None and rep.fix is not None and rep.control is not None
    assert rep.fix.margin_change.hi < 0  # judged on held-out prompts only
    assert rep.fix.bad_rate.value < rep.before_bad_rate.value
    assert rep.fix.margin_change.value < rep.control.margin_change.value
    assert rep.fix.text.tokens >= 150


def test_fix_cli_exports_a_model_that_equals_the_runtime_edit(buggy, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    out, report = tmp_path / "fixed", tmp_path / "report.json"
    args = ["fix", str(buggy / "bugs.jsonl"), "--model", str(buggy / "model"), "--layers", "1"]
    args += ["--corpus", str(buggy / "corpus.txt"), "--ctx-len", "16", "--text-tokens", "200"]
    args += ["--max-added-nats", "5", "--export", str(out), "--out", str(report), "--no-truth"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "bad-behaviour rate" in printed and "control edit" in printed
    assert "knows: cities" in printed
    rep = json.loads(report.read_text())
    assert rep["chosen"] and rep["export"] == str(out)
    # the exported model is plain transformers and equals the runtime-edited original
    from lmscope.correct.edits import load_edits
    from lmscope.models import load_model

    lm = load_model(str(buggy / "model"))
    edit = load_edits(out / "lmscope_edit.safetensors")
    assert len(edit.edits) == 1
    ids = lm.to_tokens("the cat sees a")
    with torch.no_grad():
        with lm.edit(edit.runtime(lm)):
            ref = lm.model(ids).logits
        got = AutoModelForCausalLM.from_pretrained(out).eval()(ids).logits
    torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-4)
    assert "control edit" in (out / "README.md").read_text()
    # never overwritten without --force
    assert main(args) == 2
    assert "--force" in capsys.readouterr().err


def _planted_sae(lm, c):
    """A ReLU SAE at blocks.1.mlp_out whose latent 0 reads and writes the unit vector c; the
    other latents are random directions orthogonal to c."""
    from lmscope.dictionaries.base import DictionaryConfig
    from lmscope.dictionaries.registry import build

    d = build(DictionaryConfig(d_in=lm.d_model, d_sae=8, arch="relu", hook_name="blocks.1.mlp_out"))
    W = torch.randn(lm.d_model, 8, generator=torch.Generator().manual_seed(3))
    W = W - c[:, None] * (c @ W)[None, :]
    W = W / W.norm(dim=0, keepdim=True)
    W[:, 0] = c
    with torch.no_grad():
        d.W_enc.copy_(W)
        d.W_dec.copy_(W.t())
        d.b_enc.zero_()
        d.b_dec.zero_()
        d.act_scale.fill_(1.0)
        d.act_scale_out.fill_(1.0)
    return d


def test_feature_diagnosis_finds_the_planted_bug_feature_and_its_ablation_fixes_held_out(buggy):
    from lmscope.correct.diagnose import feature_candidates, feature_findings
    from lmscope.models import load_model

    lm = load_model(str(buggy / "model"))
    tok = lm.tokenizer
    E = lm.model.get_input_embeddings().weight.detach()
    w = E[tok.convert_tokens_to_ids("dog")] - E[tok.convert_tokens_to_ids("cat")]
    dicts = {"blocks.1.mlp_out": _planted_sae(lm, w / w.norm())}
    fit, held = split(load_bugs(buggy / "bugs.jsonl"))
    names = {("blocks.1.mlp_out", 0): "dog over cat"}
    found, pool = feature_findings(lm, dicts, fit, labels=lambda h, f: names.get((h, f), ""), top=3)
    top = found[0].to_dict()
    assert top["id"] == "blocks.1.mlp_out/0" and top["label"] == "dog over cat"
    assert top["ablation_effect"] < -0.3 and top["attribution"] > 0
    assert ("blocks.1.mlp_out", 0) in pool
    cands = feature_candidates(lm, fit, found, dicts)
    assert cands[0].name == "ablate top 1 features" and cands[0].fit_bad_rate < 0.5
    before = pair_margins(lm, held.cases)
    after = pair_margins(lm, held.cases, cands[0].edit.runtime(lm))
    assert (after > 0).double().mean() < (before > 0).double().mean()  # held-out prompts


# --- prompt-only bugs judged by a scorer ----------------------------------------------------------
def test_prompt_only_files_need_a_known_scorer_and_pairs_refuse_one(tmp_path):
    from lmscope.correct.fix import fit_and_heldout

    f = _write(tmp_path / "p.jsonl", [{"prompt": f"p{i}"} for i in range(4)])
    with pytest.raises(UserError, match="--scorer"):
        fit_and_heldout(FixConfig(bugs=str(f)))
    with pytest.raises(UserError, match="unknown scorer 'repetiton'.*repetition"):
        fit_and_heldout(FixConfig(bugs=str(f), scorer="repetiton"))
    pairs = _write(
        tmp_path / "q.jsonl", [{"prompt": f"p{i}", "bad": "a", "good": "b"} for i in range(4)]
    )
    with pytest.raises(UserError, match="prompt-only"):
        fit_and_heldout(FixConfig(bugs=str(pairs), scorer="repetition"))


def test_scorer_bug_is_fixed_on_held_out_prompts(tmp_path, monkeypatch, buggy):
    """A model planted to start with ' dog' on about a third of prompts; the scorer flags that;
    the fix, learned from its own generations, lowers the held-out rate."""
    from lmscope.correct import scorers
    from lmscope.correct.weights import fold

    lm = _tied_llama()
    dog = lm.tokenizer.convert_tokens_to_ids("dog")
    E = lm.model.get_input_embeddings().weight.detach()
    lm = fold(lm, AddVector(1, 0.08 * E[dog] / E[dog].norm()))
    monkeypatch.setitem(scorers.SCORERS, "says_dog", lambda g: bool(g.ids) and g.ids[0] == dog)
    g = torch.Generator().manual_seed(1)
    rows = [
        {
            "prompt": " ".join(
                WORDS[j] for j in torch.randint(0, len(WORDS), (4,), generator=g).tolist()
            )
        }
        for _ in range(24)
    ]
    cfg = FixConfig(
        bugs=str(_write(tmp_path / "dog.jsonl", rows)),
        scorer="says_dog",
        max_new_tokens=2,
        layers="1",
        corpus=str(buggy / "corpus.txt"),
        ctx_len=16,
        text_tokens=100,
        max_added_nats=5.0,
        top=3,
        knowledge=False,
        truth=False,  # truth-probe candidates: tests/test_correct_gates.py
    )
    rep, edit = run_fix(lm, cfg, progress=False)
    assert rep.behaviour == "scorer:says_dog" and 0 < rep.before_bad_rate.value < 1
    assert edit is not None and rep.fix is not None
    assert rep.fix.bad_rate.value < rep.before_bad_rate.value
    assert rep.candidates[0]["fit_bad_rate"] is not None  # the top ones were generated with


def test_knowledge_accuracy_is_the_share_of_true_over_false_pairs(tiny_llama):
    from lmscope.correct.measure import knowledge_accuracy, knowledge_pairs, statement_logprobs

    texts, pairs, ents = knowledge_pairs("animal_class")
    assert len(pairs) == len(ents) and all(t != f for t, f in pairs)
    acc = knowledge_accuracy(tiny_llama, names=["animal_class"])["animal_class"]
    lp = statement_logprobs(tiny_llama, texts)
    by_hand = [float(lp[t] > lp[f]) for t, f in pairs]
    assert acc.tolist() == by_hand
    # one statement scored by hand
    ids = [1] + tiny_llama.tokenizer(texts[0], add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(tiny_llama.model(torch.tensor([ids])).logits[0].double(), -1)
    ref = sum(float(logp[j, ids[j + 1]]) for j in range(len(ids) - 1))
    assert float(lp[0]) == pytest.approx(ref, abs=1e-4)


def test_fix_with_an_atlas_ranks_labelled_features_and_saves_the_report_for_the_viewer(
    tmp_path, tiny_model_dir, capsys
):
    from test_trace import make_atlas

    from lmscope.correct.fix_files import fixes_dir, list_fixes, read_fix, save_fix
    from lmscope.models.tiny import tiny_model

    model = tiny_model_dir("llama", n_layers=3)
    root, _ = make_atlas(tmp_path, tiny_model("llama", n_layers=3), model, saes=False)
    g = torch.Generator().manual_seed(2)
    rows = [
        {
            "prompt": " ".join(
                WORDS[j] for j in torch.randint(0, len(WORDS), (4,), generator=g).tolist()
            ),
            "bad": " dog",
            "good": " cat",
            "group": f"g{i}",
        }
        for i in range(8)
    ]
    bugs = _write(tmp_path / "dogs.jsonl", rows)
    corpus = tmp_path / "corpus.txt"
    docs = torch.randint(0, len(WORDS), (400, 40), generator=g).tolist()
    corpus.write_text("\n\n".join(" ".join(WORDS[w] for w in d) for d in docs))
    args = ["fix", str(bugs), "--model", str(model), "--atlas", str(root), "--layers", "2"]
    args += ["--corpus", str(corpus), "--ctx-len", "16", "--text-tokens", "100", "--no-knowledge"]
    args += ["--max-added-nats", "50", "--features", "3", "--json", "--no-truth"]
    assert main(args) == 0
    rep = json.loads(capsys.readouterr().out)
    assert len(rep["features"]) == 3 and all(
        f["ablation_effect"] is not None for f in rep["features"]
    )
    kinds = {c["kind"] for c in rep["candidates"]}
    assert {"features", "gated: feature", "gated: bug direction"} <= kinds
    assert rep["saved"].startswith(str(fixes_dir(root)))
    listed = list_fixes(fixes_dir(root))
    assert [f["name"] for f in listed] == ["dogs.json"] and listed[0]["error"] is None
    assert read_fix(rep["saved"])["chosen"] == rep["chosen"]
    save_fix(rep, root, "dogs")  # a second report never overwrites the first
    assert sorted(f["name"] for f in list_fixes(fixes_dir(root))) == ["dogs-2.json", "dogs.json"]


def test_gated_vector_acts_only_where_the_signature_is_and_is_empty_when_never_on(tiny_llama):
    from lmscope.correct.edits import GatedVector

    lm = tiny_llama
    g = torch.Generator().manual_seed(4)
    v = AddVector(1, torch.randn(lm.d_model, generator=g))
    u = torch.randn(lm.d_model, generator=g)
    ids = torch.tensor([[1, 7, 9, 30, 31, 44]])
    base = lm.run(ids, logits=True).logits
    never = GatedVector(v, u, threshold=1e9).runtime(lm)
    torch.testing.assert_close(lm.run(ids, edits=never, logits=True).logits, base, atol=0, rtol=0)
    always = GatedVector(v, u, threshold=-1e9).runtime(lm)
    torch.testing.assert_close(
        lm.run(ids, edits=always, logits=True).logits,
        lm.run(ids, edits=v.runtime(lm), logits=True).logits,
    )
    # gated at one position: only positions from it on can change (causal model)
    x = lm.run(ids, capture=["blocks.1.resid_pre"]).acts["blocks.1.resid_pre"][0]
    s = x @ (u / u.norm())
    thr = float(s.sort().values[-2])  # exactly one position above
    on = int(s.argmax())
    out = lm.run(ids, edits=GatedVector(v, u, thr).runtime(lm), logits=True).logits
    assert torch.equal(out[0, :on], base[0, :on]) and not torch.allclose(out[0, on], base[0, on])
    with pytest.raises(UserError, match="run time"):
        from lmscope.correct.weights import fold

        fold(lm, GatedVector(v, u, 0.0))


def test_screening_rescores_the_best_candidates_on_all_fit_prompts(buggy):
    from lmscope.correct.diagnose import candidates
    from lmscope.models import load_model

    lm = load_model(str(buggy / "model"))
    fit, _ = split(load_bugs(buggy / "bugs.jsonl"))
    dirs = contrastive_directions(lm, fit, [1])
    full = candidates(lm, fit, dirs)
    screened = candidates(lm, fit, dirs, screen=4, keep=2)
    assert len(screened) == len(full)
    top = {c.name: c for c in full}
    for c in screened[:2]:  # re-scored on all fit prompts: the full numbers exactly
        assert c.fit_margin == top[c.name].fit_margin and "screened_on" not in c.extra
    assert all(c.extra["screened_on"] == 4 for c in screened[2:])


def test_answer_lines_and_answer_scorers(tmp_path):
    from lmscope.correct.fix import Behaviour, fit_and_heldout
    from lmscope.correct.generate import Generation

    rows = [
        {"prompt": f"capital of c{i}?", "answer": f"city{i}", "group": f"c{i}"} for i in range(4)
    ]
    f = _write(tmp_path / "facts.jsonl", rows)
    fit, held = fit_and_heldout(FixConfig(bugs=str(f), scorer="missed_answer"))
    assert {c.answer for c in fit.cases + held.cases} == {f"city{i}" for i in range(4)}
    beh = Behaviour(FixConfig(bugs=str(f), scorer="missed_answer"))
    gens = [
        Generation(c.prompt, t, [5], True) for c, t in zip(fit.cases, ["It is city0.", "No idea"])
    ]
    got = beh.flags(gens, fit.cases).tolist()
    assert got == [float(c.answer not in g.text) for c, g in zip(fit.cases, gens)]
    no_answer = _write(tmp_path / "bare.jsonl", [{"prompt": f"p{i}"} for i in range(4)])
    with pytest.raises(UserError, match="answer"):
        fit_and_heldout(FixConfig(bugs=str(no_answer), scorer="missed_answer"))
    both = _write(
        tmp_path / "both.jsonl", [{"prompt": "p", "bad": "a", "good": "b", "answer": "b"}]
    )
    with pytest.raises(UserError, match="prompt-only"):
        load_bugs(both)
