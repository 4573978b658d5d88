"""Explain: stats explainer on a tiny atlas with a planted 'horse' feature, scorers vs a wrong label,
baselines, resume, report, and one-line CLI errors (real atlas build, real SQLite)."""

from __future__ import annotations

import shutil

import pytest

from lmscope.atlas.db import AtlasDB
from lmscope.cli import main
from lmscope.explain import ExplainConfig, explain_atlas, score_report
from lmscope.explain.scorers.direct import score_direct
from lmscope.explain.split import split_examples
from lmscope.explain.stats_explainer import explain_stats, label_tokens
from lmscope.read.demo import HOOKS, PLANTED, PLANTED_WORD, build_demo_atlas


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return build_demo_atlas(tmp_path_factory.mktemp("explain") / "atlas")


@pytest.fixture
def atlas(demo, tmp_path):
    dst = tmp_path / "atlas"
    shutil.copytree(demo, dst)
    return dst


def test_split_is_disjoint_and_holds_out(demo):
    with AtlasDB(demo / "atlas.db") as db:
        p = db.feature(HOOKS[0], PLANTED)
    sp = split_examples(p)
    assert sp.shown and sp.held_pos and sp.held_neg
    shown = {e.token_index for e in sp.shown}
    assert not shown & {e.token_index for e in sp.held_pos}
    assert all(max(e.acts) == 0 for e in sp.held_neg)


def test_stats_label_names_planted_token(demo):
    with AtlasDB(demo / "atlas.db") as db:
        for hook in HOOKS:
            p = db.feature(hook, PLANTED)
            e = explain_stats(p, split_examples(p))
            assert e.tokens == [PLANTED_WORD], e.label
            assert e.label.startswith(PLANTED_WORD) and "says" in e.label
            assert e.precision == 1.0 and e.recall == 1.0


def test_scorers_rank_correct_above_wrong(demo):
    from lmscope.explain.scorers.embedding import score_embedding

    with AtlasDB(demo / "atlas.db") as db:
        p = db.feature(HOOKS[0], PLANTED)
    sp = split_examples(p)
    good, bad = score_direct(PLANTED_WORD, sp), score_direct("fish, river", sp)
    assert good.value == 1.0 and bad.value <= 0.5
    assert good.details["precision"] == 1.0 and good.details["recall"] == 1.0
    assert score_embedding("horse", sp).value > score_embedding("the capital of france", sp).value
    assert label_tokens('horse, pony | after "the" | says "gallop"') == {"horse", "pony"}


def test_explain_runner_baselines_resume_report(atlas):
    cfg = ExplainConfig(atlas=str(atlas), scorers="direct")
    r1 = explain_atlas(cfg, progress=False)
    assert r1.explained == r1.selected > 10 and r1.skipped == 0
    with AtlasDB(atlas / "atlas.db") as db:
        ex = {e.method: e for e in db.explanations(HOOKS[0], PLANTED)}
        assert ex["stats"].text.startswith(PLANTED_WORD)
        assert {"baseline-random", "baseline-toptoken"} <= set(ex)
        assert ex["stats"].scores[0].value > ex["baseline-random"].scores[0].value
        n = db._q("SELECT COUNT(*) FROM explanations")[0][0]
    r2 = explain_atlas(cfg, progress=False)  # resume: nothing left
    assert r2.explained == 0 and r2.skipped == r1.selected
    with AtlasDB(atlas / "atlas.db") as db:
        assert db._q("SELECT COUNT(*) FROM explanations")[0][0] == n
    rep = score_report(atlas)
    stats = [r for r in rep.rows if r.method == "stats" and r.scorer == "direct"]
    assert len(stats) == 2 and all(r.beats for r in stats)
    assert main(["explain-report", str(atlas)]) == 0
    assert (atlas / "plots" / "explain_scores.png").stat().st_size > 1000


def test_cli_bad_input(atlas, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["explain", str(tmp_path / "empty")]) == 2
    assert "atlas build" in capsys.readouterr().err
    assert main(["explain", str(atlas), "--features", f"{HOOKS[0]}/99999"]) == 2
    assert "out of range" in capsys.readouterr().err
    assert main(["explain", str(atlas), "--features", "blocks.9.resid_post/1"]) == 2
    assert main(["explain", str(atlas), "--explainer", "llm"]) == 2
    assert "--llm" in capsys.readouterr().err
    assert main(["explain", str(atlas), "--scorers", "magic"]) == 2
    assert main(["explain", str(atlas), "--features", f"{HOOKS[0]}/{PLANTED}", "--scorers", "direct",
                 "--no-progress", "--json"]) == 0
