"""Every CLI command against a table of malformed inputs: exit 2, one line, no traceback, nothing
existing modified (the input folders are hashed before and after each command).

Inputs: empty, binary and invalid-UTF-8 files, a 10 MB single line, a JSONL without the text
field (as corpora); an empty folder, a binary / invalid-UTF-8 manifest, truncated safetensors, a
dictionary of another model (as atlases); an empty folder, a binary probe.json, truncated probe
weights (as probes). Commands run in-process through lmscope.cli.main on the demo atlas's tiny
model, except `serve`, which would block on success and so runs as a subprocess with a timeout.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lmscope.cli import main

REPO = Path(__file__).resolve().parents[1]
HOOK = "blocks.0.resid_post"


def tree_hash(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def bad(demo_atlas_root, tmp_path_factory):
    """{name: path} of malformed inputs, plus the good atlas copy, its model and a good corpus."""
    d = tmp_path_factory.mktemp("bad")
    good = d / "good"
    shutil.copytree(demo_atlas_root, good, ignore=shutil.ignore_patterns("atlas.db*"))
    model = json.loads((good / "atlas.json").read_text())["model"]
    files = {
        "empty": b"",
        "binary": bytes(range(256)) * 64,
        "invalid_utf8": b"the horse \xff\xfe\xc3\x28 ran\n\nthe dog \x80 sat\n",
        "one_line_10mb": b'{"text": "'
        + b"horse " * (10 * 2**20 // 6),  # one unterminated JSON line
        "jsonl_no_text": b'{"body": "the horse ran"}\n{"body": "the dog sat"}\n',
    }
    paths = {}
    for name, data in files.items():
        p = (
            d
            / "corpora"
            / (name + (".jsonl" if name in ("one_line_10mb", "jsonl_no_text") else ".txt"))
        )
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(data)
        paths[f"corpus:{name}"] = p
    # Atlases.
    empty = d / "atlases" / "empty"
    empty.mkdir(parents=True)
    paths["atlas:empty_dir"] = empty
    for name, data in (
        ("manifest_binary", bytes(range(256))),
        ("manifest_invalid_utf8", b'{"model": "\xff"}'),
    ):
        a = d / "atlases" / name
        shutil.copytree(good, a)
        (a / "atlas.json").write_bytes(data)
        paths[f"atlas:{name}"] = a
    a = d / "atlases" / "truncated_safetensors"
    shutil.copytree(good, a)
    w = a / "dictionaries" / HOOK / "sae_weights.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 3])
    paths["atlas:truncated_safetensors"] = a
    a = d / "atlases" / "other_model_dictionary"  # a dictionary for a 48-wide model
    shutil.copytree(good, a)
    from lmscope.dictionaries import DictionaryConfig, build
    from lmscope.dictionaries.io.saelens import save_saelens

    other = build(
        DictionaryConfig(d_in=48, d_sae=64, arch="relu", hook_name=HOOK, model_name="other")
    )
    shutil.rmtree(a / "dictionaries" / HOOK)
    save_saelens(other, a / "dictionaries" / HOOK)
    paths["atlas:other_model_dictionary"] = a
    # Probes.
    p = d / "probes" / "empty"
    p.mkdir(parents=True)
    paths["probe:empty_dir"] = p
    p = d / "probes" / "meta_binary"
    p.mkdir()
    (p / "probe.json").write_bytes(bytes(range(256)))
    (p / "probe.safetensors").write_bytes(b"\x00" * 64)
    paths["probe:meta_binary"] = p
    p = d / "probes" / "truncated_weights"
    p.mkdir()
    (p / "probe.json").write_text(
        json.dumps(
            {
                "schema_version": 1,
                "kind": "mean_diff",
                "hook": HOOK,
                "bias": 0.0,
                "model": {"model": model},
            }
        )
    )
    (p / "probe.safetensors").write_bytes(b'\x40\x00\x00\x00\x00\x00\x00\x00{"direction":')
    paths["probe:truncated_weights"] = p
    return {"paths": paths, "good": good, "model": model, "root": d, "corpus": good / "corpus.txt"}


CORPUS_CMDS = {
    "capture": lambda c, b, out: [
        "capture",
        "--model",
        b["model"],
        "--hooks",
        HOOK,
        "--corpus",
        str(c),
        "--tokens",
        "2k",
        "--ctx-len",
        "16",
        "--out",
        str(out),
    ],
    "train": lambda c, b, out: [
        "train",
        "--model",
        b["model"],
        "--hooks",
        HOOK,
        "--corpus",
        str(c),
        "--tokens",
        "2k",
        "--ctx-len",
        "16",
        "--width",
        "2x",
        "--k",
        "2",
        "--out",
        str(out),
        "--no-progress",
    ],
    "corpus info": lambda c, b, out: ["corpus", "info", "--corpus", str(c)],
}
ATLAS_CMDS = {
    "feature": lambda a, b: ["feature", str(a), f"{HOOK}/1"],
    "search": lambda a, b: ["search", str(a), "horse"],
    "export": lambda a, b: [
        "export",
        str(a),
        "--format",
        "saelens",
        "--out",
        str(b["root"].parent / "export-out"),
    ],
    "explain": lambda a, b: ["explain", str(a), "--features", "2"],
    "explain-report": lambda a, b: ["explain-report", str(a)],
    "scan": lambda a, b: ["scan", str(a), "the horse ran"],
    "trace": lambda a, b: ["trace", str(a), "the horse ran"],
    "graph": lambda a, b: ["graph", str(a), "the horse ran"],
    "eval": lambda a, b: ["eval", str(a), "--corpus", str(b["corpus"]), "--tokens", "1k"],
    "atlas build": lambda a, b: [
        "atlas",
        "build",
        str(a),
        "--corpus",
        str(b["corpus"]),
        "--tokens",
        "1k",
    ],
}
PROBE_CMDS = {
    "lie-check": lambda p, b: [
        "lie-check",
        "the horse ran",
        "--probe",
        str(p),
        "--model",
        b["model"],
    ],
}

CASES = (
    [
        (cmd, inp)
        for cmd in CORPUS_CMDS
        for inp in ("empty", "binary", "invalid_utf8", "one_line_10mb", "jsonl_no_text")
    ]
    + [
        (cmd, inp)
        for cmd in ATLAS_CMDS
        for inp in (
            "empty_dir",
            "manifest_binary",
            "manifest_invalid_utf8",
            "truncated_safetensors",
            "other_model_dictionary",
        )
        # export copies files and never loads the model, so it cannot tell whose they are
        # (every dictionary is still loaded, so damaged ones are refused).
        if (cmd, inp) != ("export", "other_model_dictionary")
    ]
    + [
        (cmd, inp)
        for cmd in PROBE_CMDS
        for inp in ("empty_dir", "meta_binary", "truncated_weights")
    ]
)


@pytest.mark.parametrize("cmd, inp", CASES, ids=[f"{c}-{i}" for c, i in CASES])
def test_bad_input_is_one_line_exit_2(bad, cmd, inp, capfd, tmp_path):
    paths = bad["paths"]
    if cmd in CORPUS_CMDS:
        argv = CORPUS_CMDS[cmd](paths[f"corpus:{inp}"], bad, tmp_path / "out")
    elif cmd in ATLAS_CMDS:
        argv = ATLAS_CMDS[cmd](paths[f"atlas:{inp}"], bad)
    else:
        argv = PROBE_CMDS[cmd](paths[f"probe:{inp}"], bad)
    before = tree_hash(bad["root"])
    code = main(argv)
    err = capfd.readouterr().err
    # Progress bars (tqdm, carriage-return lines) may precede the error; the message is one line.
    lines = [x for x in err.replace("\r", "\n").splitlines() if x.strip() and "%|" not in x]
    assert code == 2, (argv, err[-2000:])
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("lmscope: error: "), err[-2000:]
    assert tree_hash(bad["root"]) == before  # nothing existing was modified


@pytest.mark.parametrize(
    "inp", ["empty_dir", "manifest_binary", "truncated_safetensors", "other_model_dictionary"]
)
def test_serve_bad_atlas_is_one_line(bad, inp):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    before = tree_hash(bad["root"])
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "lmscope",
            "serve",
            str(bad["paths"][f"atlas:{inp}"]),
            "--port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    lines = [x for x in r.stderr.replace("\r", "\n").splitlines() if x.strip() and "%|" not in x]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("lmscope: error: "), (
        r.stderr
    )
    assert tree_hash(bad["root"]) == before
