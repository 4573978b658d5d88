"""`lmscope run` (the README's main job) end to end on a tiny real model: every stage runs, the
report shows each stage's command and result, a rerun skips what is complete, bad flags are one
line.
"""

from __future__ import annotations

import random

import pytest

from lmscope.cli import main


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_model_dir):
    from lmscope.models.tiny import WORDS

    d = tmp_path_factory.mktemp("run")
    (d / "model").symlink_to(tiny_model_dir("llama", n_layers=4))
    r = random.Random(0)
    (d / "corpus.txt").write_text(
        "\n\n".join(
            " ".join(r.choice(WORDS) for _ in range(r.randint(10, 60))) for _ in range(1500)
        )
    )
    return d


def _argv(d, out, *extra):
    return [
        "run",
        "--model",
        str(d / "model"),
        "--corpus",
        str(d / "corpus.txt"),
        "--out",
        str(out),
        "--capture-tokens",
        "4k",
        "--train-tokens",
        "20k",
        "--width",
        "8x",
        "--k",
        "4",
        "--batch-size",
        "256",
        "--eval-tokens",
        "2k",
        "--atlas-tokens",
        "8k",
        "--ctx-len",
        "32",
        "--probe-layers",
        "1,2",
        "--prompt",
        "the horse ran in the field",
        "--trace-prompt",
        "the horse was in the",
        *extra,
    ]


def test_run_every_stage_then_resume(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_argv(tiny, out)) == 0
    text = capsys.readouterr().out
    for stage in ("capture", "train", "eval", "atlas", "explain", "probe", "scan", "trace"):
        assert f"] {stage}" in text, stage
    assert "$ lmscope capture" in text and "tok/s" in text and "mean |x|" in text
    assert (
        "FVU" in text and "loss added by the splice" in text and "mean-ablation" in text
    )  # eval report
    assert "top activating contexts" in text  # feature dashboards
    # explain score table: each method paired with its own baselines, a verdict per pair
    assert "paired difference to the baseline" in text
    assert "vs baseline-random" in text and ("does not beat" in text or "beats" in text)
    assert "truth score" in text  # lie-check
    assert "brain map" in text  # scan
    assert "ablation" in text and "predicted" in text  # traced, verified by ablation
    assert text.rstrip().endswith(f"lmscope serve {out / 'atlas'}")
    for p in (
        "store/manifest.json",
        "atlas/atlas.json",
        "atlas/atlas.db",
        "atlas/eval.json",
        "probe/probe.json",
    ):
        assert (out / p).is_file(), p
    stamp = (out / "atlas" / "atlas.json").stat().st_mtime_ns
    # The same command again: completed stages are skipped, nothing is rewritten.
    assert main(_argv(tiny, out, "--skip", "eval,probe,scan,trace")) == 0
    again = capsys.readouterr().out
    assert (
        "already complete" in again and "already trained" in again and "already profiled" in again
    )
    assert (out / "atlas" / "atlas.json").stat().st_mtime_ns == stamp


def test_run_bad_input(tiny, tmp_path, capsys):
    assert main(["run", "--skip", "nothing"]) == 2
    assert "not a stage" in capsys.readouterr().err
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "x.txt").write_text("keep")
    assert main(_argv(tiny, mine)) == 2
    assert "did not make" in capsys.readouterr().err and (mine / "x.txt").read_text() == "keep"
    assert main(_argv(tiny, tmp_path / "o", "--layer", "9")) == 2
    assert "out of range" in capsys.readouterr().err
