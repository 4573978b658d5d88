"""`lmscope run` (the README's main job) end to end on a tiny real model: the whole-model run
(a skip transcoder at every layer, eval, atlas, explain, probe, scan, the attribution graph,
trace) and `--quick` (one SAE), each stage's command and result in the report, a rerun skips
what is complete, the printed viewer command runs an existing executable, a folder of one kind
of run refuses the other, bad flags are one line.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import sys

import pytest

from lmscope.cli import main
from lmscope.cli._invocation import lmscope_command

N_LAYERS = 2


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_model_dir):
    from lmscope.models.tiny import WORDS

    d = tmp_path_factory.mktemp("run")
    (d / "model").symlink_to(tiny_model_dir("llama", n_layers=N_LAYERS))
    r = random.Random(0)
    (d / "corpus.txt").write_text(
        "\n\n".join(" ".join(r.choice(WORDS) for _ in range(r.randint(10, 60))) for _ in range(600))
    )
    return d


def _argv(d, out, *extra):
    # float32: the tiny model is faster so on any CPU; `auto` is covered by test_resolve_dtype.
    return [
        "run",
        "--model",
        str(d / "model"),
        "--corpus",
        str(d / "corpus.txt"),
        "--out",
        str(out),
        "--model-dtype",
        "float32",
        "--train-tokens",
        "3k",
        "--width",
        "4x",
        "--k",
        "4",
        "--batch-size",
        "256",
        "--eval-tokens",
        "500",
        "--atlas-tokens",
        "2k",
        "--ctx-len",
        "32",
        "--probe-layers",
        "1",
        "--prompt",
        "the horse ran in the field",
        "--trace-prompt",
        "the horse was in the",
        *extra,
    ]


@pytest.fixture(scope="module")
def whole(tiny, tmp_path_factory):
    """One whole-model run shared by the tests below: (out folder, its report)."""
    out = tmp_path_factory.mktemp("whole") / "out"
    cap = _Capture()
    with cap:
        assert main(_argv(tiny, out)) == 0
    return out, cap.text


class _Capture:
    """stdout of a block (a module fixture cannot use capsys)."""

    def __enter__(self):
        import io

        self._old, self._buf = sys.stdout, io.StringIO()
        sys.stdout = self._buf

    def __exit__(self, *exc):
        sys.stdout = self._old
        self.text = self._buf.getvalue()


def test_whole_model_run_every_stage(whole):
    out, text = whole
    stages = ("train", "eval", "atlas", "explain", "probe", "scan", "graph", "trace")
    for i, stage in enumerate(stages, 1):
        assert f"== [{i}/{len(stages)}] {stage}:" in text, stage
    assert "--hooks 'blocks.*.mlp_in' --transcode --skip" in text
    assert "] capture" not in text  # the whole-model run streams from the model
    layout = json.loads((out / "atlas" / "atlas.json").read_text())["dictionaries"]
    assert sorted(layout) == [f"blocks.{L}.mlp_in" for L in range(N_LAYERS)]
    assert [layout[f"blocks.{L}.mlp_in"]["out_hook"] for L in range(N_LAYERS)] == [
        f"blocks.{L}.mlp_out" for L in range(N_LAYERS)
    ]
    assert "added nats" in text and "top activating contexts" in text
    assert "paired difference to the baseline" in text and "truth score" in text
    assert "brain map" in text
    for L in range(N_LAYERS):  # the scan reads every layer's dictionary
        assert f"blocks.{L}.mlp_in" in text.split("] scan:")[1].split("] graph:")[0]
    # the graph: built from the run's own transcoders, both scores full and pruned
    graph = out / "atlas" / "graphs" / "run-the-horse-was-in-the.json"
    meta = json.loads(graph.read_text())["metadata"]["lmscope"]
    assert (
        f"replacement score {meta['replacement_score']:.3f} "
        f"(pruned {meta['pruned_replacement_score']:.3f}), "
        f"completeness {meta['completeness_score']:.3f}" in text
    )
    assert f"#/graph/{graph.name}" in text
    assert "ablation" in text and "predicted" in text  # traced, verified by ablation
    assert json.loads((out / "run.json").read_text())["kind"] == "whole-model"


def test_printed_commands_run_an_existing_executable(whole):
    out, text = whole
    lines = text.rstrip().splitlines()
    last, graph = lines[-2], lines[-1]
    assert last.startswith("open the viewer:") and graph.startswith("then the graph:")
    argv = shlex.split(last.removeprefix("open the viewer:"))
    exe, rest = argv[0], argv[1:]
    if rest[:2] == ["-m", "lmscope"]:  # `python -m lmscope` when no console script exists
        rest = rest[2:]
    assert os.path.isfile(exe) and os.access(exe, os.X_OK), exe
    assert rest == ["serve", str(out / "atlas")]
    # every stage header and the sub-commands' own hints use the same command
    prefix = shlex.join(lmscope_command())
    dollar = [ln for ln in text.splitlines() if ln.startswith("$ ")]
    assert dollar and all(ln.startswith(f"$ {prefix} ") for ln in dollar)
    assert "next: lmscope " not in text and "see the scores: lmscope " not in text


def test_rerun_skips_finished_stages(whole, tiny, capsys):
    out, _ = whole
    atlas_stamp = (out / "atlas" / "atlas.json").stat().st_mtime_ns
    graphs = sorted(p.name for p in (out / "atlas" / "graphs").iterdir())
    assert main(_argv(tiny, out, "--skip", "eval,explain,probe,scan,trace")) == 0
    again = capsys.readouterr().out
    assert f"already trained: {N_LAYERS} dictionaries" in again
    assert "already profiled" in again
    assert "already built" in again and "replacement score" in again
    assert (out / "atlas" / "atlas.json").stat().st_mtime_ns == atlas_stamp
    assert sorted(p.name for p in (out / "atlas" / "graphs").iterdir()) == graphs  # no -2.json


def test_quick_run_and_no_mixing(whole, tiny, tmp_path, capsys):
    quick = tmp_path / "quick"
    assert main(_argv(tiny, quick, "--quick", "--skip", "eval,explain,probe")) == 0
    text = capsys.readouterr().out
    for stage in ("capture", "train", "atlas", "scan", "trace"):
        assert f"] {stage}:" in text, stage
    assert "] graph:" not in text and "then the graph:" not in text
    assert text.rstrip().splitlines()[-1].startswith("open the viewer:")
    assert "--hooks blocks.1.resid_post --arch topk" in text  # the middle block's SAE
    assert json.loads((quick / "run.json").read_text())["kind"] == "one-layer"
    # a folder of one kind refuses the other, with one line and nothing written
    whole_out, _ = whole
    assert main(_argv(tiny, quick)) == 2
    assert "holds a one-layer run" in capsys.readouterr().err
    assert main(_argv(tiny, whole_out, "--quick")) == 2
    assert "holds a whole-model run" in capsys.readouterr().err
    # a run folder from before the whole-model run (run.json without "kind") is one-layer
    old = tmp_path / "old"
    old.mkdir()
    (old / "run.json").write_text(json.dumps({"config": {}}))
    assert main(_argv(tiny, old)) == 2
    assert "holds a one-layer run" in capsys.readouterr().err


def test_run_bad_input(tiny, tmp_path, capsys):
    assert main(["run", "--skip", "nothing"]) == 2
    assert "not a stage" in capsys.readouterr().err
    assert main(["run", "--model-dtype", "int8"]) == 2
    assert "--model-dtype" in capsys.readouterr().err
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "x.txt").write_text("keep")
    assert main(_argv(tiny, mine)) == 2
    assert "did not make" in capsys.readouterr().err and (mine / "x.txt").read_text() == "keep"
    assert main(_argv(tiny, tmp_path / "o", "--quick", "--layer", "9")) == 2
    assert "out of range" in capsys.readouterr().err
    assert main(_argv(tiny, tmp_path / "p", "--layer", "1")) == 2
    assert "--quick" in capsys.readouterr().err


def test_default_out_folders_differ():
    from lmscope.cli.run import RunConfig

    assert str(RunConfig().out_dir()) == "runs/smollm2-135m"
    assert str(RunConfig(quick=True).out_dir()) == "runs/smollm2-135m-quick"
    assert str(RunConfig(model="/x/my model.gguf").out_dir()) == "runs/my-model"
    assert RunConfig(quick=True, train_tokens=7).preset().train_tokens == 7


def test_resolve_dtype(monkeypatch):
    import lmscope.models.load as load
    from lmscope.cli.run import resolve_dtype

    monkeypatch.setattr(load, "cpu_half_is_slow", lambda dtype, device="cpu": True)
    assert resolve_dtype("auto") == "float32"
    monkeypatch.setattr(load, "cpu_half_is_slow", lambda dtype, device="cpu": False)
    assert resolve_dtype("auto") == "bfloat16"
    assert resolve_dtype("float32") == "float32"


def test_lmscope_command(tmp_path, monkeypatch):
    script = tmp_path / "venv" / "bin" / "lmscope"
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(script), "run"])  # found on PATH: the full path
    assert lmscope_command() == ["venv/bin/lmscope"]  # under the cwd: relative, as typed
    monkeypatch.chdir(tmp_path / "venv")
    monkeypatch.setattr(sys, "argv", ["bin/lmscope", "run"])
    assert lmscope_command() == ["bin/lmscope"]
    monkeypatch.chdir(tmp_path.parent)
    assert lmscope_command()[0] != "bin/lmscope"  # argv[0] no longer resolves from here
    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.chdir(other)
    monkeypatch.setattr(sys, "argv", [str(script)])
    assert lmscope_command() == [str(script)]  # outside the cwd: absolute
    monkeypatch.setattr(sys, "argv", ["-m"])  # python -m lmscope: no script in argv
    monkeypatch.setattr(sys, "executable", str(tmp_path / "py" / "python3"))
    assert lmscope_command() == [str(tmp_path / "py" / "python3"), "-m", "lmscope"]
