"""Files from strangers cannot run code, and every JSON file is size- and schema-checked first.

A checkpoint carrying a real pickle payload (a `__reduce__` that would create a marker file) is
refused with one line, and the marker never appears; the same payload *does* run under plain
pickle (so the test would fail if loading went back to `weights_only=False`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from lmscope.dictionaries.checkpoint import Checkpoints
from lmscope.errors import UserError
from lmscope.layout import AtlasLayout
from lmscope.validate import Int, List, Obj, Str, check, read_json


class _Payload:
    """Unpickling this calls open(marker, "w"): a file appears if any code from the file ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _plant(tmp_path: Path, obj) -> tuple[Checkpoints, Path]:
    ck = Checkpoints(AtlasLayout(tmp_path / "atlas"))
    path = ck.dict_path("blocks.0.resid_post", 5)
    path.parent.mkdir(parents=True)
    torch.save(obj, path)
    return ck, path


def test_checkpoint_with_pickle_payload_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    ck, path = _plant(tmp_path, {"model": {"w": torch.zeros(2)}, "x": _Payload(str(marker))})
    with pytest.raises(UserError) as e:
        ck.load_dictionary("blocks.0.resid_post", 5)
    msg = str(e.value)
    assert "\n" not in msg and "refusing to load" in msg and str(path) in msg
    assert not marker.exists()
    # The payload is real: an unrestricted load runs it (what the old code did).
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_checkpoint_damaged_or_truncated_is_one_line(tmp_path):
    ck, path = _plant(tmp_path, {"model": {"w": torch.arange(1000.0)}})
    assert torch.equal(
        ck.load_dictionary("blocks.0.resid_post", 5)["model"]["w"], torch.arange(1000.0)
    )
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="damaged"):
        ck.load_dictionary("blocks.0.resid_post", 5)
    path.write_bytes(b"\x00" * 100)
    with pytest.raises(UserError):
        ck.load_dictionary("blocks.0.resid_post", 5)


def test_checkpoint_state_schema(tmp_path):
    ck = Checkpoints(AtlasLayout(tmp_path))
    ck.root.mkdir(parents=True)
    ck.state_path.write_text(json.dumps({"step": -3, "tokens": 10}))
    with pytest.raises(UserError, match=r"field 'step' must be between 0"):
        ck.read_state()
    ck.state_path.write_text(json.dumps({"step": "3", "tokens": 10}))
    with pytest.raises(UserError, match="must be an integer"):
        ck.read_state()
    ck.state_path.write_text(json.dumps({"step": 3, "tokens": 10, "sharded_ranks": None}))
    assert ck.read_state().step == 3


def test_read_json_checks_size_before_reading(tmp_path, monkeypatch):
    """A 2 GB file is refused from its size alone: a sparse file, never read."""
    big = tmp_path / "cfg.json"
    with open(big, "wb") as f:
        f.truncate(2 * 2**30)  # sparse: costs no disk
    opened = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda *a, **k: opened.append(a) or real_open(*a, **k))
    with pytest.raises(UserError, match="larger than the 4.0 MiB allowed"):
        read_json(big, what="dictionary config")
    assert not opened
    monkeypatch.undo()
    for body, match in [
        (b"\xff\xfe{}", "not UTF-8"),
        (b'{"a": NaN}', "not valid JSON"),
        (b'{"a": 1', "not valid JSON"),
        (b"[" * 100_000, "not valid JSON"),
    ]:
        big.write_bytes(body)
        with pytest.raises(UserError, match=match):
            read_json(big)


def test_schema_validators_hand_cases():
    schema = {
        "d_in": Int(1, 4096),
        "name": Str(max_chars=5),
        "xs": List(Int(0, 9), max_items=3),
        "sub": Obj({"k": Int(1)}, required=False),
    }
    ok = {"d_in": 64, "name": "abc", "xs": [1, 2], "extra": "fine"}
    assert check(ok, schema, where="f") is ok
    cases = [
        ({**ok, "d_in": -1}, "field 'd_in' must be between 1 and 4096, got -1"),
        ({**ok, "d_in": True}, "field 'd_in' must be an integer, got a boolean"),
        ({**ok, "d_in": 2.5}, "must be an integer, got a number"),
        ({k: v for k, v in ok.items() if k != "d_in"}, "field 'd_in' is missing"),
        ({**ok, "name": "abcdef"}, "is 6 characters long, at most 5"),
        ({**ok, "xs": [1, 2, 3, 4]}, "has 4 items, at most 3"),
        ({**ok, "xs": [1, 10]}, r"field 'xs'\[1\] must be between 0 and 9"),
        ({**ok, "sub": {"k": 0}}, r"field 'sub'.k must be between 1"),
        ([1], "the top level must be an object"),
    ]
    for value, match in cases:
        with pytest.raises(UserError, match=match) as e:
            check(value, schema, where="f")
        assert "\n" not in str(e.value) and str(e.value).startswith("f: ")


def test_no_unrestricted_loaders_in_the_package():
    """No pickle, no weights_only=False, no yaml.load, no eval over the package source."""
    root = Path(__file__).resolve().parents[1] / "lmscope"
    bad = []
    for p in root.rglob("*.py"):
        src = p.read_text()
        for needle in (
            "weights_only=False",
            "import pickle",
            "pickle.load",
            "yaml.load(",
            "allow_pickle=True",
            " eval(",
            "exec(",
        ):
            if needle in src:
                bad.append(f"{p.relative_to(root)}: {needle}")
        for line in src.splitlines():
            if "torch.load(" in line and "weights_only=True" not in line:
                bad.append(f"{p.relative_to(root)}: {line.strip()}")
    # checkpoint.py imports pickle only to catch pickle.UnpicklingError.
    bad = [b for b in bad if b != "dictionaries/checkpoint.py: import pickle"]
    assert not bad, bad


def test_marker_helper_really_creates_file(tmp_path):
    """Sanity for the payload used above (a test that cannot fail would prove nothing)."""
    import pickle

    marker = tmp_path / "m"
    pickle.loads(pickle.dumps(_Payload(str(marker))))
    assert marker.exists()
    os.unlink(marker)


def _saved_sae(tmp_path: Path) -> Path:
    from lmscope.dictionaries import DictionaryConfig, build
    from lmscope.dictionaries.io.saelens import save_saelens

    torch.manual_seed(0)
    d = build(
        DictionaryConfig(d_in=8, d_sae=16, k=2, hook_name="blocks.0.resid_post", model_name="m")
    )
    return save_saelens(d, tmp_path / "sae")


@pytest.mark.parametrize(
    "change, match",
    [
        ({"d_in": 9}, "d_in=9 but lmscope_config says 8"),
        ({"d_in": -8}, "field 'd_in' must be between 1"),
        ({"d_sae": 0}, "field 'd_sae' must be between 1"),
        ({"d_sae": "16"}, "field 'd_sae' must be an integer"),
        (
            {"metadata": {"lmscope_config": {"d_in": 9, "d_sae": 16}}},
            "d_in=8 but lmscope_config says 9",
        ),
        ({"metadata": {"lmscope_config": {"d_in": -1, "d_sae": 16}}}, "lmscope_config"),
    ],
)
def test_saelens_cfg_with_wrong_or_negative_sizes_is_one_line(tmp_path, change, match):
    from lmscope.dictionaries.io.saelens import load_saelens

    path = _saved_sae(tmp_path)
    load_saelens(path)  # the untouched folder loads
    cfg = json.loads((path / "cfg.json").read_text())
    if "metadata" in change:
        cfg["metadata"].update(change["metadata"])
    else:
        cfg.update(change)
    (path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match=match) as e:
        load_saelens(path)
    assert "\n" not in str(e.value)


def test_saelens_cfg_of_2gb_is_refused_before_reading(tmp_path):
    from lmscope.dictionaries.io.saelens import load_saelens

    path = _saved_sae(tmp_path)
    with open(path / "cfg.json", "r+b") as f:  # a huge "examples" field: sparse, never read
        f.truncate(2 * 2**30)
    with pytest.raises(UserError, match="larger than"):
        load_saelens(path)


def test_graph_with_a_million_nodes_is_refused(tmp_path):
    from lmscope.trace.graph_files import MAX_NODES, read_graph

    g = tmp_path / "g.json"
    base = {
        "metadata": {"slug": "x"},
        "nodes": [{"node_id": "a"}, {"node_id": "b"}],
        "links": [{"source": "a", "target": "b", "weight": 0.5}],
    }
    g.write_text(json.dumps(base))
    assert read_graph(g)["nodes"][1]["node_id"] == "b"
    g.write_text('{"metadata": {}, "links": [], "nodes": [' + ",".join(["{}"] * 1_000_000) + "]}")
    with pytest.raises(UserError, match=f"has 1000000 items, at most {MAX_NODES}"):
        read_graph(g)
    for bad, match in [
        ({**base, "nodes": [{"node_id": 3}]}, r"nodes'\[0\].node_id must be a string"),
        (
            {**base, "links": [{"source": "a", "target": "b", "weight": "x"}]},
            "weight must be a number",
        ),
        ({**base, "nodes": "x"}, "not a graph JSON"),
    ]:
        g.write_text(json.dumps(bad))
        with pytest.raises(UserError, match=match):
            read_graph(g)
