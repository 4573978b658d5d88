"""Training end to end on a tiny real model: streaming, from a store, resume == uninterrupted,
atomic checkpoints, one-line errors through the CLI, and (slow) the default-model demo.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmscope.cli import main
from lmscope.dictionaries import load_dictionary
from lmscope.dictionaries.checkpoint import Checkpoints, save_torch_atomic
from lmscope.dictionaries.train_config import TrainConfig, default_lr, parse_width
from lmscope.dictionaries.trainer import Interrupted, train
from lmscope.layout import AtlasLayout

REPO = Path(__file__).resolve().parents[1]


def write_corpus(path: Path, n_docs: int = 600, seed: int = 0) -> Path:
    """Random sentences over the tiny tokenizer's vocabulary, paragraphs = documents."""
    from lmscope.models.tiny import WORDS

    r = random.Random(seed)
    docs = [" ".join(r.choice(WORDS) for _ in range(r.randint(20, 80))) for _ in range(n_docs)]
    path.write_text("\n\n".join(docs))
    return path


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tiny_model_dir):
    """A tiny llama saved as a model folder (what a user passes as --model) and a corpus."""
    d = tmp_path_factory.mktemp("tiny")
    (d / "model").symlink_to(tiny_model_dir("llama", n_layers=3))
    write_corpus(d / "corpus.txt")
    return d


def _args(d: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--model",
        str(d / "model"),
        "--hooks",
        "blocks.1.resid_post",
        "--width",
        "4x",
        "--k",
        "4",
        "--tokens",
        "6k",
        "--batch-size",
        "512",
        "--ctx-len",
        "32",
        "--corpus",
        str(d / "corpus.txt"),
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


def _cfg(d: Path, out: Path, **kw) -> TrainConfig:
    base = dict(
        model=str(d / "model"),
        hooks="blocks.1.resid_post,blocks.2.resid_post",
        width="4x",
        k=4,
        tokens=6144,
        batch_size=512,
        ctx_len=32,
        corpus=str(d / "corpus.txt"),
        out=str(out),
        progress=False,
        checkpoint_every=0,
        dead_tokens=1024,
        buffer_mb=0.5,
    )
    base.update(kw)
    return TrainConfig(**base)


def test_config_validation_and_defaults():
    assert parse_width("16x", 576) == 9216 and parse_width("4608", 576) == 4608
    for bad in ("0x", "abc", "-3", "x"):
        with pytest.raises(ValueError):
            parse_width(bad, 576)
    assert default_lr(2**14) == pytest.approx(2e-4)
    assert default_lr(4 * 2**14) == pytest.approx(1e-4)  # 1/sqrt(n) scaling (Gao et al.)
    with pytest.raises(ValueError):
        TrainConfig(k=0)
    with pytest.raises(ValueError):
        TrainConfig(tokens=100, batch_size=4096)
    with pytest.raises(ValueError):
        TrainConfig(skip=True)


def test_train_streaming_cli(tiny_dir, tmp_path, capsys):
    out = tmp_path / "atlas"
    assert main(_args(tiny_dir, out, "--json")) == 0
    res = json.loads(capsys.readouterr().out)
    ((h, row),) = res["dictionaries"].items()
    assert h == "blocks.1.resid_post"
    assert 0 < row["fvu"] < 1 and row["l0"] <= 4
    manifest = AtlasLayout(out).read()
    assert manifest["dictionaries"][h]["d_sae"] == 128
    folder = out / "dictionaries" / h
    cfg = json.loads((folder / "cfg.json").read_text())
    assert cfg["architecture"] == "topk" and cfg["d_in"] == 32 and cfg["k"] == 4
    assert cfg["metadata"]["hook_name"] == "model.layers.1"  # the HF module, for SAELens
    sp = load_file(folder / "sparsity.safetensors")["sparsity"]
    assert sp.shape == (128,) and (sp <= 0).all()  # log10 frequencies
    saved = json.loads((out / "train" / "config.json").read_text())
    plan = json.loads((out / "train" / "plan.json").read_text())
    assert saved["k"] == 4 and plan["steps"] == 11 and plan["dictionaries"][0]["d_sae"] == 128
    # Checkpoints are cleaned up once the dictionaries are final.
    assert not list((out / "train").rglob("ckpt-*.pt"))
    # The saved dictionary reconstructs held-out activations of the model (not noise).
    from lmscope.models import load_model

    lm = load_model(str(tiny_dir / "model"))
    sae = load_dictionary(folder)
    x = lm.run(
        lm.to_tokens("the cat sat on the big red house and the dog ran to the city"), capture=[h]
    ).acts[h][0, 1:]
    fvu = ((sae(x) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()).item()
    assert fvu < 0.9


def test_one_pass_feeds_all_dictionaries_and_resume_is_exact(tiny_dir, tmp_path):
    """Interrupt after 3 steps, resume: the final weights equal an uninterrupted run's, bit for
    bit."""
    full = train(_cfg(tiny_dir, tmp_path / "full"))
    assert set(full.dictionaries) == {"blocks.1.resid_post", "blocks.2.resid_post"}
    with pytest.raises(Interrupted) as e:
        train(_cfg(tiny_dir, tmp_path / "cut"), stop_after=3)
    assert e.value.step == 3
    ck = Checkpoints(AtlasLayout(tmp_path / "cut"))
    assert ck.read_state().step == 3
    assert not (tmp_path / "cut" / "atlas.json").exists()  # nothing looks finished
    train(_cfg(tiny_dir, tmp_path / "cut"))
    for h in full.dictionaries:
        a = load_file(tmp_path / "full" / "dictionaries" / h / "sae_weights.safetensors")
        b = load_file(tmp_path / "cut" / "dictionaries" / h / "sae_weights.safetensors")
        for k in a:
            assert torch.equal(a[k], b[k]), (h, k)


def test_checkpoint_atomicity(tiny_dir, tmp_path):
    """A crash while writing the next checkpoint leaves the previous one selected and intact."""
    out = tmp_path / "a"
    with pytest.raises(Interrupted):
        train(_cfg(tiny_dir, out, checkpoint_every=2), stop_after=3)
    ck = Checkpoints(AtlasLayout(out))
    assert ck.read_state().step == 3
    names = sorted(p.name for p in (out / "train" / "blocks.1.resid_post").iterdir())
    assert names == ["ckpt-00000003.pt"]  # older step 2 removed after step 3 was committed
    # Simulate a crash mid-way through step 5's checkpoint: one dictionary's file written
    # (garbage), state.json not yet updated, and a temp file left behind.
    (out / "train" / "blocks.1.resid_post" / "ckpt-00000005.pt").write_bytes(b"half a file")
    (out / "train" / "blocks.1.resid_post" / ".ckpt-00000005.pt.x.tmp").write_bytes(b"junk")
    res = train(_cfg(tiny_dir, out, checkpoint_every=2))
    train(_cfg(tiny_dir, tmp_path / "ref", checkpoint_every=2))
    for h in res.dictionaries:
        a = load_file(out / "dictionaries" / h / "sae_weights.safetensors")
        b = load_file(tmp_path / "ref" / "dictionaries" / h / "sae_weights.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a)
    # An atomic write that fails leaves neither the target nor a temp file.
    target = tmp_path / "x" / "ckpt.pt"
    with pytest.raises((AttributeError, TypeError, pickle.PicklingError)):
        save_torch_atomic({"f": lambda: 0}, target)  # lambdas cannot be pickled
    assert not target.exists() and not list(target.parent.iterdir())


def test_transcoder_training(tiny_dir, tmp_path):
    res = train(
        _cfg(
            tiny_dir,
            tmp_path / "tc",
            hooks="blocks.1.resid_post",
            transcode=True,
            skip=True,
            tokens=30_000,
        )
    )
    ((h, path),) = res.dictionaries.items()
    assert h == "blocks.1.mlp_in"
    d = load_dictionary(path)
    assert d.cfg.out_hook_name == "blocks.1.mlp_out" and d.cfg.skip
    assert res.metrics[h].fvu < 1


@pytest.mark.parametrize("arch", ["batchtopk", "jumprelu", "relu"])
def test_other_architectures_train(tiny_dir, tmp_path, arch):
    res = train(
        _cfg(tiny_dir, tmp_path / arch, hooks="blocks.1.resid_post", arch=arch, tokens=4096)
    )
    ((h, hist),) = res.history.items()
    first, last = sum(m.loss for m in hist[:2]) / 2, sum(m.loss for m in hist[-2:]) / 2
    assert last < first, [m.loss for m in hist]  # the loss goes down for every architecture
    assert load_dictionary(res.dictionaries[h]).cfg.arch == arch


def test_bad_inputs_one_line(tiny_dir, tmp_path, capsys):
    out = tmp_path / "atlas"

    def err(argv) -> str:
        assert main(argv) == 2
        e = capsys.readouterr().err.strip()
        assert e.count("\n") == 0 and e.startswith("lmscope: error:"), e
        return e

    assert "width" in err(_args(tiny_dir, out, "--width", "lots"))
    assert "--k" in err(_args(tiny_dir, out, "--width", "2", "--k", "8"))
    assert "blocks.9.resid_post" in err(_args(tiny_dir, out, "--hooks", "blocks.9.resid_post"))
    assert "less than one batch" in err(_args(tiny_dir, out, "--tokens", "100"))
    # An interrupted run, resumed with other settings, is refused with the changes listed.
    with pytest.raises(Interrupted):
        train(
            TrainConfig(
                model=str(tiny_dir / "model"),
                hooks="blocks.1.resid_post",
                width="4x",
                k=4,
                tokens=6000,
                batch_size=512,
                ctx_len=32,
                corpus=str(tiny_dir / "corpus.txt"),
                out=str(out),
                progress=False,
            ),
            stop_after=2,
        )
    e = err(_args(tiny_dir, out, "--k", "8"))
    assert "k: 4 -> 8" in e and "--force" in e
    assert Checkpoints(AtlasLayout(out)).read_state().step == 2  # untouched
    # A finished dictionary is never overwritten.
    assert main(_args(tiny_dir, out)) == 0
    capsys.readouterr()
    before = (out / "dictionaries" / "blocks.1.resid_post" / "sae_weights.safetensors").read_bytes()
    e = err(_args(tiny_dir, out))
    assert "already holds" in e and "--force" in e
    assert (
        out / "dictionaries" / "blocks.1.resid_post" / "sae_weights.safetensors"
    ).read_bytes() == before
    assert main(_args(tiny_dir, out, "--force", "--seed", "1")) == 0


def test_ctrl_c_saves_and_resumes(tiny_dir, tmp_path):
    """A real SIGINT to a running `python -m lmscope train`: exit 130, checkpoint, same command
    resumes."""
    out = tmp_path / "atlas"
    argv = [
        sys.executable,
        "-m",
        "lmscope",
        # far more tokens than it can train before the signal (the tiny model trains ~500k
        # tokens/s with the native kernels: 400k finished before the signal came)
        *_args(tiny_dir, out, "--tokens", "50M", "--progress"),
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    deadline = time.time() + 120
    buf = ""
    while time.time() < deadline:  # wait until steps are being taken
        ch = p.stderr.read(1)
        buf += ch
        if "tok/s" in buf or not ch:
            break
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    _, rest = p.communicate(timeout=120)
    assert p.returncode == 130, buf + rest
    assert "run the same command to resume" in rest.lower()
    state = Checkpoints(AtlasLayout(out)).read_state()
    assert state is not None and state.step > 0
    assert not (out / "atlas.json").exists()


def test_train_from_store(tiny_dir, tmp_path, tiny_model_dir):
    store_mod = pytest.importorskip("lmscope.capture.store")
    pytest.importorskip("lmscope.capture.corpus")
    out = tmp_path / "store"
    rc = main(
        [
            "capture",
            "--model",
            str(tiny_dir / "model"),
            "--hooks",
            "blocks.1.resid_post",
            "--corpus",
            str(tiny_dir / "corpus.txt"),
            "--tokens",
            "8k",
            "--ctx-len",
            "32",
            "--out",
            str(out),
        ]
    )
    assert rc == 0 and store_mod is not None
    res = train(
        _cfg(tiny_dir, tmp_path / "atlas", hooks="blocks.1.resid_post", from_store=str(out))
    )
    assert res.metrics["blocks.1.resid_post"].fvu < 1
    # A store of another model is refused with one line.
    other = tiny_model_dir("gpt2", n_layers=2, d_model=48)
    assert (
        main(
            [
                "train",
                "--model",
                str(other),
                "--hooks",
                "blocks.1.resid_post",
                "--from-store",
                str(out),
                "--width",
                "2x",
                "--k",
                "4",
                "--tokens",
                "2k",
                "--batch-size",
                "512",
                "--out",
                str(tmp_path / "x"),
                "--no-progress",
            ]
        )
        == 2
    )


@pytest.mark.slow
def test_default_model_demo_small(tmp_path):
    """The README demo at small scale on SmolLM2-135M: the middle layer, 4608 latents."""
    import importlib

    # English prose available everywhere: docstrings of a few standard-library modules.
    docs = []
    for name in (
        "argparse",
        "collections",
        "csv",
        "datetime",
        "decimal",
        "difflib",
        "fractions",
        "heapq",
        "json",
        "logging",
        "pathlib",
        "pickle",
        "random",
        "re",
        "shutil",
        "statistics",
        "string",
        "textwrap",
        "threading",
        "typing",
        "unittest",
        "zipfile",
        "tarfile",
        "subprocess",
        "socket",
    ):
        mod = importlib.import_module(name)
        for obj in [mod, *vars(mod).values()]:
            doc = getattr(obj, "__doc__", None)
            if isinstance(doc, str) and len(doc) > 200 and doc not in docs:
                docs.append(doc.strip())
    (tmp_path / "c.txt").write_text("\n\n".join(docs))
    out = tmp_path / "atlas"
    assert (
        main(
            [
                "train",
                "--hooks",
                "blocks.15.resid_post",
                "--width",
                "4608",
                "--k",
                "32",
                "--tokens",
                "16k",
                "--batch-size",
                "1024",
                "--lr",
                "1e-3",
                "--corpus",
                str(tmp_path / "c.txt"),
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "eval",
                str(out),
                "--tokens",
                "1k",
                "--corpus",
                str(tmp_path / "c.txt"),
                "--no-plots",
                "--json",
            ]
        )
        == 0
    )
    ev = json.loads((out / "eval.json").read_text())["dictionaries"][0]
    assert 0 < ev["fvu"] < 1 and ev["ce_spliced"] < ev["ce_zero"]
    assert ev["ce_recon_plus_error"] == ev["ce_clean_first"]


def test_bf16_autocast_close_to_fp32(tiny_dir, tmp_path):
    """--dtype bfloat16 runs the dictionary under autocast (weights and Adam stay fp32)."""
    f32 = train(_cfg(tiny_dir, tmp_path / "f32", hooks="blocks.1.resid_post"))
    bf16 = train(_cfg(tiny_dir, tmp_path / "bf16", hooks="blocks.1.resid_post", dtype="bfloat16"))
    h = "blocks.1.resid_post"
    assert abs(f32.metrics[h].fvu - bf16.metrics[h].fvu) < 0.05
    w = load_file(tmp_path / "bf16" / "dictionaries" / h / "sae_weights.safetensors")
    assert w["W_enc"].dtype == torch.float32
