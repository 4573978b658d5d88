"""The activation store and `lmscope capture` on a tiny real model: exact contents, aligned
shuffles, resume == uninterrupted, never rewritten, one-line errors, and (slow) the default model.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmscope.capture.pipeline import CaptureConfig, capture_to_store
from lmscope.capture.store import MANIFEST, PROGRESS, ActivationStore
from lmscope.cli import main
from lmscope.errors import UserError

HOOKS = "blocks.1.resid_pre,blocks.1.attn_out,blocks.1.resid_mid,blocks.2.resid_post"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_model_dir):
    from lmscope.models import load_model
    from lmscope.models.tiny import WORDS

    d = tmp_path_factory.mktemp("tiny")
    (d / "model").symlink_to(tiny_model_dir("llama", n_layers=3))
    r = random.Random(0)
    (d / "corpus.txt").write_text(
        "\n\n".join(" ".join(r.choice(WORDS) for _ in range(r.randint(10, 60))) for _ in range(400))
    )
    return d, load_model(str(d / "model"))


def _cfg(d: Path, out: Path, **kw) -> CaptureConfig:
    base = dict(
        model=str(d / "model"),
        hooks=HOOKS,
        corpus=str(d / "corpus.txt"),
        tokens=4096,
        ctx_len=32,
        batch_size=8,
        out=str(out),
        shard_mb=0.1,
        progress=False,
    )
    base.update(kw)
    return CaptureConfig(**base)


def _tensors(out: Path) -> dict:
    return {f.name: load_file(f) for f in sorted(out.glob("shard-*.safetensors"))}


def test_store_holds_exactly_the_model_activations(tiny, tmp_path):
    d, lm = tiny
    res = capture_to_store(_cfg(d, tmp_path / "s"), lm=lm)
    st = ActivationStore(res.out)
    assert (
        res.tokens == st.n_tokens == 4096
        and st.n_contexts == 128
        and len(st.manifest["shards"]) > 1
    )
    assert st.model == lm.name and st.fingerprint["d_model"] == lm.d_model
    assert not (res.out / PROGRESS).exists()
    toks = st.tokens()
    assert toks.shape == (128, 32) and (toks[:, 0] == lm.bos_token_id).all()
    # The stored activations are the model's own at these tokens.
    got = torch.cat(
        [st.shard_acts(i, "blocks.2.resid_post")[1] for i in range(len(st.manifest["shards"]))]
    )
    ref = lm.run(toks[:16], capture=["blocks.2.resid_post"]).acts["blocks.2.resid_post"]
    torch.testing.assert_close(got[:16], ref, rtol=1e-5, atol=1e-5)
    # Norm statistics match a direct computation over non-BOS positions.
    keep = st.mask(toks)
    n = got.norm(dim=-1)[keep]
    s = st.norms["blocks.2.resid_post"]
    assert s["tokens"] == int(keep.sum())
    assert s["mean_norm"] == pytest.approx(float(n.mean()), rel=1e-5)
    assert s["max_norm"] == pytest.approx(float(n.max()), rel=1e-5)


def test_batches_are_aligned_across_hooks_and_cover_every_row_once(tiny, tmp_path):
    d, lm = tiny
    st = ActivationStore(capture_to_store(_cfg(d, tmp_path / "s"), lm=lm).out)
    kw = dict(seed=7, window=2)
    pre, attn, mid = (
        torch.cat(list(st.batches(h, 300, **kw)))
        for h in ("blocks.1.resid_pre", "blocks.1.attn_out", "blocks.1.resid_mid")
    )
    # Same seed, same row order for every hook: resid_mid = resid_pre + attn_out row by row.
    torch.testing.assert_close(mid, pre + attn, rtol=1e-4, atol=1e-4)
    toks = st.tokens()
    keep = st.mask(toks)
    assert mid.shape[0] == int(keep.sum())
    every = torch.cat(
        [st.shard_acts(i, "blocks.1.resid_mid")[1] for i in range(len(st.manifest["shards"]))]
    )[keep]
    assert torch.equal(
        mid.sum(1).sort().values, every.sum(1).sort().values
    )  # a permutation of all rows
    assert not torch.equal(mid, every)  # and actually shuffled
    other = torch.cat(list(st.batches("blocks.1.resid_mid", 300, seed=8, window=2)))
    assert not torch.equal(other, mid)
    sizes = [b.shape[0] for b in st.batches("blocks.1.resid_mid", 300, drop_last=True)]
    assert set(sizes) == {300}
    with pytest.raises(UserError, match="not in the store"):
        next(st.batches("blocks.9.resid_post", 10))


def test_interrupted_capture_resumes_to_the_same_store(tiny, tmp_path, monkeypatch):
    d, lm = tiny
    full = capture_to_store(_cfg(d, tmp_path / "full"), lm=lm).out
    import lmscope.capture.pipeline as P

    calls = {"n": 0}
    real = P.write_shard

    def flaky(path, tensors, metadata=None):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        real(path, tensors, metadata)

    monkeypatch.setattr(P, "write_shard", flaky)
    part = tmp_path / "part"
    with pytest.raises(KeyboardInterrupt):
        capture_to_store(_cfg(d, part), lm=lm)
    assert (part / PROGRESS).is_file() and not (part / MANIFEST).exists()
    assert len(list(part.glob("shard-*"))) == 2 and not list(part.glob(".*tmp*"))
    with pytest.raises(UserError, match="incomplete"):
        ActivationStore(part)
    monkeypatch.setattr(P, "write_shard", real)
    res = capture_to_store(_cfg(d, part), lm=lm)
    assert res.resumed and res.tokens_this_run < res.tokens
    a, b = _tensors(full), _tensors(part)
    assert a.keys() == b.keys()
    for name in a:
        for k in a[name]:
            assert torch.equal(a[name][k], b[name][k]), (name, k)
    ma, mb = json.loads((full / MANIFEST).read_text()), json.loads((part / MANIFEST).read_text())
    for h in ma["norms"]:
        assert ma["norms"][h]["mean_norm"] == pytest.approx(mb["norms"][h]["mean_norm"], rel=1e-9)


def test_complete_store_is_never_rewritten(tiny, tmp_path):
    d, lm = tiny
    out = tmp_path / "s"
    capture_to_store(_cfg(d, out), lm=lm)
    stamp = {f.name: f.stat().st_mtime_ns for f in out.iterdir()}
    again = capture_to_store(_cfg(d, out), lm=lm)
    assert again.already_complete and {f.name: f.stat().st_mtime_ns for f in out.iterdir()} == stamp
    with pytest.raises(UserError, match="other settings"):
        capture_to_store(_cfg(d, out, tokens=2048), lm=lm)
    # An unfinished store with other settings is refused too.
    (out / MANIFEST).rename(out / "m.bak")
    (out / PROGRESS).write_text(json.dumps({"settings_digest": "x", "settings": {}}))
    with pytest.raises(UserError, match="unfinished capture"):
        capture_to_store(_cfg(d, out), lm=lm)
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("my work")
    with pytest.raises(UserError, match="not an activation store"):
        capture_to_store(_cfg(d, user), lm=lm)
    assert (user / "notes.txt").read_text() == "my work"


def test_bf16_store_and_peak_buffer_bounded_by_shard(tiny, tmp_path):
    d, lm = tiny
    st = ActivationStore(
        capture_to_store(
            _cfg(d, tmp_path / "s", dtype="bfloat16", hooks="blocks.2.resid_post"), lm=lm
        ).out
    )
    assert st.dtype == torch.bfloat16
    x = next(iter(st.batches("blocks.2.resid_post", 64)))
    assert x.dtype == torch.bfloat16 and x.shape == (64, lm.d_model)
    # Shards respect the size budget (the in-memory write buffer is one shard).
    sizes = [s["bytes"] for s in st.manifest["shards"]]
    assert len(sizes) > 1 and max(sizes) <= 0.1 * 2**20 + 4096


def test_disk_checks_are_one_line(tiny, tmp_path, monkeypatch):
    d, lm = tiny
    import shutil

    import lmscope.capture.pipeline as P
    import lmscope.capture.store as S

    real_usage = shutil.disk_usage
    monkeypatch.setattr(P.shutil, "disk_usage", lambda p: real_usage(p)._replace(free=1000))
    with pytest.raises(UserError, match="GiB free"):
        capture_to_store(_cfg(d, tmp_path / "a"), lm=lm)
    monkeypatch.setattr(P.shutil, "disk_usage", real_usage)

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("safetensors.torch.save_file", full)
    with pytest.raises(UserError, match="disk is full"):
        capture_to_store(_cfg(d, tmp_path / "b"), lm=lm)
    assert not (tmp_path / "b" / MANIFEST).exists() and not list(
        (tmp_path / "b").glob("*.safetensors")
    )
    assert S  # the module under test wrote nothing that looks complete


def test_capture_cli(tiny, tmp_path, capsys):
    d, _ = tiny
    out = tmp_path / "cli"
    args = [
        "capture",
        "--model",
        str(d / "model"),
        "--hooks",
        "blocks.0.resid_post,blocks.*.mlp_out",
        "--corpus",
        str(d / "corpus.txt"),
        "--tokens",
        "2048",
        "--ctx-len",
        "32",
        "--out",
        str(out),
        "--no-progress",
        "--json",
    ]
    assert main(args) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["tokens"] == 2048 and res["hooks"] == [
        "blocks.0.mlp_out",
        "blocks.0.resid_post",
        "blocks.1.mlp_out",
        "blocks.2.mlp_out",
    ]
    assert set(res["norms"]) == set(res["hooks"]) and res["tokens_per_s"] > 0
    assert main(args[:-1]) == 0
    assert "already complete" in capsys.readouterr().out


@pytest.mark.parametrize(
    "change, msg",
    [
        ({"--hooks": "blocks.1.resid_pots"}, "resid_post"),
        ({"--model": "no-such-model-xyz"}, "no-such-model-xyz"),
        ({"--corpus": "/nonexistent/corpus.txt"}, "corpus not found"),
        ({"--tokens": "0"}, "--tokens"),
        ({"--tokens": "lots"}, "lots"),
        ({"--ctx-len": "1"}, "ctx-len"),
    ],
)
def test_capture_cli_errors(tiny, tmp_path, capsys, change, msg):
    d, _ = tiny
    flags = {
        "--model": str(d / "model"),
        "--hooks": "blocks.1.resid_post",
        "--corpus": str(d / "corpus.txt"),
        "--tokens": "1k",
        "--ctx-len": "32",
        "--out": str(tmp_path / "x"),
    }
    flags.update(change)
    argv = ["capture", "--no-progress"] + [t for kv in flags.items() for t in kv]
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse type errors exit 2 by themselves
        rc = e.code
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert msg in err[-1] and "Traceback" not in "\n".join(err)
    assert not (tmp_path / "x" / MANIFEST).exists()


def test_empty_corpus_cli(tiny, tmp_path, capsys):
    d, _ = tiny
    (tmp_path / "empty.txt").write_text("")
    assert (
        main(
            [
                "capture",
                "--model",
                str(d / "model"),
                "--hooks",
                "blocks.1.resid_post",
                "--corpus",
                str(tmp_path / "empty.txt"),
                "--tokens",
                "1k",
                "--ctx-len",
                "32",
                "--out",
                str(tmp_path / "x"),
                "--no-progress",
            ]
        )
        == 2
    )
    assert "no text" in capsys.readouterr().err


@pytest.mark.slow
def test_default_model_capture(tmp_path, capsys):
    """The real SmolLM2 through the CLI on the real default corpus: outlier norms from layer ~12."""
    if os.environ.get("LMSCOPE_SKIP_DEFAULT") == "1":
        pytest.skip("LMSCOPE_SKIP_DEFAULT=1")
    out = tmp_path / "st"
    assert (
        main(
            [
                "capture",
                "--hooks",
                "blocks.3.resid_post,blocks.15.resid_post",
                "--tokens",
                "1024",
                "--ctx-len",
                "128",
                "--batch-size",
                "8",
                "--out",
                str(out),
                "--no-progress",
                "--json",
            ]
        )
        == 0
    )
    res = json.loads(capsys.readouterr().out)
    n3, n15 = res["norms"]["blocks.3.resid_post"], res["norms"]["blocks.15.resid_post"]
    assert res["tokens"] == 1024
    assert n15["bos_mean_norm"] > 10 * n15["mean_norm"]  # the BOS attention sink's outlier norm
    assert n15["mean_norm"] > n3["mean_norm"]
    st = ActivationStore(out)
    assert st.fingerprint["d_model"] == 576 and st.fingerprint["n_layers"] == 30
