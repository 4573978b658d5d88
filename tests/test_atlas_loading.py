"""One way to open an atlas's dictionaries (lmscope.dictionaries.folder): every command that used
to load them its own way (trace, scan/serve, atlas build, search, eval, probe explain) now picks
the same dictionaries for a glob and for an exact name, and fails with the same line for an
unknown hook and for an atlas of another model. Real tiny model, real dictionaries, real builds."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from lmscope.errors import UserError
from lmscope.read.demo import HOOKS


@pytest.fixture(scope="module")
def atlases(demo_atlas_root, tmp_path_factory):
    """(a writable copy of the demo atlas, the same atlas pointing at a model of another width)."""
    from lmscope.models.tiny import tiny_model

    tmp = tmp_path_factory.mktemp("loading")
    good = tmp / "good"
    shutil.copytree(demo_atlas_root, good, ignore=shutil.ignore_patterns("model"))
    other = tiny_model("llama", n_layers=2, d_model=16)
    other.model.save_pretrained(tmp / "m16")
    other.tokenizer.save_pretrained(tmp / "m16")
    bad = tmp / "other-model"
    shutil.copytree(good, bad)
    m = json.loads((bad / "atlas.json").read_text())
    m["model"] = str(tmp / "m16")
    (bad / "atlas.json").write_text(json.dumps(m))
    return good, bad, demo_atlas_root / "corpus.txt"


def _trace(atlas, spec, corpus):
    from lmscope.cli.trace import load_atlas

    return list(load_atlas(str(atlas), hooks=spec)[1])


def _scan(atlas, spec, corpus):
    from lmscope.read import Reader

    r = Reader.open(atlas, hooks=spec)
    r.db.close()
    return r.hooks


def _build(atlas, spec, corpus):
    from lmscope.atlas.build import BuildConfig, build_atlas

    cfg = BuildConfig(
        atlas=str(atlas),
        corpus=str(corpus),
        tokens=32,
        ctx_len=16,
        batch_size=2,
        top_k=2,
        samples=1,
        negatives=1,
        ctx_window=6,
        force=True,
        hooks=spec,
    )
    return build_atlas(cfg, progress=False).hooks


def _eval(atlas, spec, corpus):
    from lmscope.dictionaries.evaluate import EvalConfig, evaluate_atlas

    cfg = EvalConfig(
        atlas=str(atlas),
        corpus=str(corpus),
        tokens=32,
        ctx_len=16,
        plots=False,
        hooks=spec,
        allow_overlap=True,
    )
    return [e.hook for e in evaluate_atlas(cfg, progress=False).dictionaries]


def _probe_explain(atlas, spec, corpus):
    from lmscope.probe.explain import aligned_features
    from lmscope.probe.probes import Probe

    probe = Probe(kind="mean", hook=spec, direction=torch.ones(32), bias=0.0, mean=torch.zeros(32))
    return sorted({f.hook for f in aligned_features(probe, str(atlas), top=3)})


SITES = {"trace": _trace, "scan": _scan, "atlas build": _build, "eval": _eval}


@pytest.mark.parametrize(
    "spec, want",
    [
        ("blocks.*.resid_post", list(HOOKS)),  # a glob
        (HOOKS[1], [HOOKS[1]]),  # an exact name is a glob without wildcards
        (f"{HOOKS[1]},blocks.0.*", [HOOKS[1], HOOKS[0]]),
    ],
)
def test_every_site_selects_the_same_dictionaries(atlases, spec, want):
    good, _, corpus = atlases
    got = {name: sorted(site(good, spec, corpus)) for name, site in SITES.items()}
    assert got == {name: sorted(want) for name in SITES}
    if "," not in spec and "*" not in spec:
        assert _probe_explain(good, spec, corpus) == want  # the probe names exactly one hook


def test_order_is_the_patterns_then_the_atlas():
    from lmscope.dictionaries.folder import select_hooks

    names = ["b.0", "b.1", "b.2"]
    assert select_hooks(names, "b.2, b.*", where="x") == ["b.2", "b.0", "b.1"]
    assert select_hooks(names, None, where="x") == names == select_hooks(names, " , ", where="x")
    with pytest.raises(
        UserError, match=r"'b\.9' matches no dictionary in x.*it has: b\.0, b\.1, b\.2"
    ):
        select_hooks(names, "b.*,b.9", where="x")  # one typo among good patterns is not dropped


def test_unknown_hook_is_the_same_line_everywhere(atlases):
    good, _, corpus = atlases
    msgs = {}
    for name, site in {**SITES, "probe explain": _probe_explain}.items():
        with pytest.raises(UserError) as e:
            site(good, "blocks.9.resid_post", corpus)
        msgs[name] = str(e.value)
    first = msgs["trace"]
    assert (
        first.startswith("'blocks.9.resid_post' matches no dictionary in atlas ")
        and "\n" not in first
    )
    assert all(m.startswith(first) for m in msgs.values()), msgs  # probe explain adds its advice


def test_model_mismatch_is_the_same_line_everywhere(atlases):
    from lmscope.atlas.search import search_text

    good, bad, corpus = atlases
    sites = {**SITES, "search": lambda a, spec, c: search_text(str(a), "the horse")}
    msgs = {}
    for name, site in sites.items():
        with pytest.raises(UserError) as e:
            site(bad, "blocks.*", corpus)
        msgs[name] = str(e.value)
    assert len(set(msgs.values())) == 1, msgs
    assert msgs["trace"] == (
        f"dictionary {HOOKS[0]} expects width 32 at {HOOKS[0]} but model "
        f"{good.parent / 'm16'} has 16; the dictionary belongs to another model"
    )
