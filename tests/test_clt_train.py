"""Training cross-layer transcoders end to end on a tiny real model: one streaming pass with rows
aligned across layers, resume == uninterrupted, the CLI, 2 latent-sharded processes == 1."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from lmscope.cli import main
from lmscope.dictionaries.clt import CrossLayerTranscoder
from lmscope.dictionaries.train_config import TrainConfig
from lmscope.dictionaries.trainer import Interrupted, train
from lmscope.layout import AtlasLayout


def write_corpus(path: Path, n_docs: int = 300, seed: int = 0) -> Path:
    """Random sentences over the tiny tokenizer's vocabulary, paragraphs = documents."""
    import random

    from lmscope.models.tiny import WORDS

    r = random.Random(seed)
    docs = [" ".join(r.choice(WORDS) for _ in range(r.randint(20, 80))) for _ in range(n_docs)]
    path.write_text("\n\n".join(docs))
    return path


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tiny_model_dir):
    d = tmp_path_factory.mktemp("tiny-clt")
    (d / "model").symlink_to(tiny_model_dir("llama", n_layers=3))
    write_corpus(d / "corpus.txt")
    return d


def _cfg(d: Path, out: Path, **kw) -> TrainConfig:
    base = dict(
        model=str(d / "model"),
        clt=True,
        width="2x",
        k=3,
        tokens=1024,
        batch_size=256,
        ctx_len=32,
        corpus=str(d / "corpus.txt"),
        out=str(out),
        progress=False,
        checkpoint_every=0,
        dead_tokens=512,
        buffer_mb=0.5,
        lr=3e-3,
    )
    base.update(kw)
    return TrainConfig(**base)


def test_stream_rows_are_the_same_token_at_every_layer(tiny_dir):
    """Row r of every hook of a streamed batch comes from one token: layer 0's MLP applied to
    row r of mlp_in gives row r of mlp_out, and the residual stream adds up across layers
    (resid_post[1] = resid_post[0] + attn_out[1] + mlp_out[1])."""
    from lmscope.dictionaries.sources import StreamSource
    from lmscope.models import load_model

    lm = load_model(str(tiny_dir / "model"))
    hooks = [
        "blocks.0.mlp_in",
        "blocks.0.mlp_out",
        "blocks.0.resid_post",
        "blocks.1.attn_out",
        "blocks.1.mlp_out",
        "blocks.1.resid_post",
    ]
    src = StreamSource(
        lm, hooks, corpus=str(tiny_dir / "corpus.txt"), ctx_len=32, batch_size=64, buffer_mb=0.2
    )
    b = next(src.batches())
    mlp0 = lm.hooks.parts[0].mlp
    with torch.no_grad():
        torch.testing.assert_close(mlp0(b["blocks.0.mlp_in"]), b["blocks.0.mlp_out"])
    resid = b["blocks.0.resid_post"] + b["blocks.1.attn_out"] + b["blocks.1.mlp_out"]
    torch.testing.assert_close(resid, b["blocks.1.resid_post"], rtol=1e-4, atol=1e-4)


def test_train_clt_resume_is_exact(tiny_dir, tmp_path):
    """Interrupt after 2 of 4 steps; a changed setting is refused; the same command resumes and
    ends with bit-identical weights."""
    from lmscope.errors import UserError

    full = train(_cfg(tiny_dir, tmp_path / "full"))
    path = full.dictionaries["clt"]
    clt = CrossLayerTranscoder.load(path)
    assert clt.n_layers == 3 and clt.d_sae == 64 and clt.cfg.k == 3
    assert 0 < full.metrics["clt"].fvu < 1.0  # moved off the mean in 4 steps of 256 tokens
    m = AtlasLayout(tmp_path / "full").read()
    assert m["clts"]["clt"]["path"] == "dictionaries/clt" and m["dictionaries"] == {}
    assert len(m["clts"]["clt"]["train_fvu_by_layer"]) == 3
    with pytest.raises(Interrupted):
        train(_cfg(tiny_dir, tmp_path / "cut"), stop_after=2)
    assert not (tmp_path / "cut" / "dictionaries" / "clt").exists()
    with pytest.raises(UserError, match="other settings"):
        train(_cfg(tiny_dir, tmp_path / "cut", k=2))
    train(_cfg(tiny_dir, tmp_path / "cut"))
    a = load_file(tmp_path / "full" / "dictionaries" / "clt" / "clt.safetensors")
    b = load_file(tmp_path / "cut" / "dictionaries" / "clt" / "clt.safetensors")
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_clt_cli_jumprelu_and_bad_hooks(tiny_dir, tmp_path, capsys):
    out = tmp_path / "a"
    args = ["train", "--clt", "--arch", "jumprelu", "--hooks", "blocks.[0-1].mlp_in"]
    args += ["--model", str(tiny_dir / "model"), "--corpus", str(tiny_dir / "corpus.txt")]
    args += ["--width", "32", "--tokens", "1024", "--batch-size", "256", "--ctx-len", "32"]
    args += ["--buffer-mb", "0.5", "--out", str(out), "--no-progress", "--json"]
    assert main(args) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res["dictionaries"]) == {"clt"}
    clt = CrossLayerTranscoder.load(out / "dictionaries" / "clt")
    assert clt.n_layers == 2 and clt.cfg.arch == "jumprelu" and clt.threshold is not None
    bad = [a if a != "blocks.[0-1].mlp_in" else "blocks.1.mlp_in" for a in args]
    bad[bad.index(str(out))] = str(tmp_path / "b")
    assert main(bad) == 2
    err = capsys.readouterr().err
    assert "0..L-1" in err and "Traceback" not in err
    assert main([*args[:3], "batchtopk", *args[4:]]) == 2  # --clt takes topk or jumprelu


# --- two latent-sharded processes == one -----------------------------------------------
L, D, N, BATCH, STEPS = 3, 8, 24, 96, 6


def _data(n: int = 1024) -> dict[str, torch.Tensor]:
    """Synthetic per-layer MLP ins/outs: sparse codes whose effects spread over later layers."""
    g = torch.Generator().manual_seed(0)
    codes = torch.rand(n, L, 10, generator=g) * (torch.rand(n, L, 10, generator=g) < 0.2)
    enc = torch.randn(L, 10, D, generator=g)
    dec = torch.randn(L, 10, L, D, generator=g)
    acts = {}
    for i in range(L):
        acts[f"blocks.{i}.mlp_in"] = codes[:, i] @ enc[i] + 0.01 * torch.randn(n, D, generator=g)
        out = sum(codes[:, s] @ dec[s, :, i] for s in range(i + 1))
        acts[f"blocks.{i}.mlp_out"] = out + 0.01 * torch.randn(n, D, generator=g)
    return acts


def _run_synthetic(out: str, shard: bool, info=None, arch: str = "topk") -> None:
    from lmscope.dictionaries.clt_trainer import run_clt_training
    from lmscope.dictionaries.sources import TensorSource
    from lmscope.dictionaries.train_config import resolve_plan
    from lmscope.dist import DistInfo

    info = info or DistInfo()
    cfg = TrainConfig(
        model="synthetic",
        clt=True,
        arch=arch,
        width=str(N),
        k=3,
        tokens=BATCH * STEPS,
        batch_size=BATCH,
        out=out,
        progress=False,
        checkpoint_every=0,
        dead_tokens=BATCH,
        shard_features=shard,
        lr=3e-3,
    )
    pairs = [(f"blocks.{i}.mlp_in", f"blocks.{i}.mlp_out") for i in range(L)]
    plan = resolve_plan(
        cfg,
        hooks=pairs,
        dims={h: D for p in pairs for h in p},
        model="synthetic",
        world_size=info.world_size,
        source="tensors",
        fingerprint={},
    )
    data_info = DistInfo() if shard else info  # DDP ranks take disjoint parts of each batch
    src = TensorSource(_data(), batch_size=BATCH, seed=0, info=data_info)
    run_clt_training(cfg, plan, src, info=info)


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    from lmscope import dist

    info = dist.setup("cpu")
    try:
        # one spawn for every case: starting the processes is most of the cost
        for arch in ARCHS:
            _run_synthetic(f"{out}-{arch}", True, info, arch)
        _run_synthetic(f"{out}-ddp", False, info, "topk")
    finally:
        dist.teardown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ARCHS = ("topk", "jumprelu")


@pytest.mark.dist
def test_two_processes_equal_one(tmp_path):
    """Latents sharded over 2 ranks (topk: global top-k per layer; jumprelu) and DDP over
    tokens (48 of each 96-token batch per rank) end with the single process's weights."""
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path / "two")), nprocs=2, join=True)
    for case, arch in (("topk", "topk"), ("jumprelu", "jumprelu"), ("ddp", "topk")):
        _run_synthetic(str(tmp_path / f"one-{case}"), False, arch=arch)
        a = load_file(tmp_path / f"one-{case}" / "dictionaries" / "clt" / "clt.safetensors")
        b = load_file(tmp_path / f"two-{case}" / "dictionaries" / "clt" / "clt.safetensors")
        assert set(a) == set(b)
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=f"{case}: {k}")
        # training moved the weights (not two equal untrained CLTs)
        clt = CrossLayerTranscoder.load(tmp_path / f"one-{case}" / "dictionaries" / "clt")
        assert not torch.allclose(clt.W_dec[0], CrossLayerTranscoder(clt.cfg).W_dec[0])


def test_scales_survive_a_massive_token_in_the_first_batch(tiny_dir):
    """init_from_data sets each layer's scale from the MEDIAN token's squared norm: one planted
    token with 1,000x the norm (SmolLM2's layer 11 has tokens ~490x its median) moves no scale
    by more than a rank of the median, where the mean-based scale (the old rule) drops ~30x."""
    import math

    from lmscope.dictionaries.clt import CLTConfig
    from lmscope.dictionaries.sources import StreamSource
    from lmscope.models import load_model

    lm = load_model(str(tiny_dir / "model"))
    L = lm.n_layers
    hooks = [h for i in range(L) for h in (f"blocks.{i}.mlp_in", f"blocks.{i}.mlp_out")]
    src = StreamSource(
        lm, hooks, corpus=str(tiny_dir / "corpus.txt"), ctx_len=32, batch_size=255, buffer_mb=0.5
    )
    b = next(src.batches())
    x = torch.stack([b[f"blocks.{i}.mlp_in"].float() for i in range(L)])  # [L, N, d]
    t = torch.stack([b[f"blocks.{i}.mlp_out"].float() for i in range(L)])
    d = x.shape[2]
    cfg = CLTConfig(n_layers=L, d_model=d, d_sae=8, k=2, b_dec_init="zeros")
    clean = CrossLayerTranscoder(cfg)
    clean.init_from_data(x, t)
    # Reference by hand: sort the N = 255 squared norms, take the 128th (index 127), s = sqrt(d/m).
    for i in range(L):
        for acts, got in ((x[i], clean.act_scale_in[i]), (t[i], clean.act_scale_out[i])):
            sq = sorted(float(sum(v * v for v in row)) for row in acts.tolist())
            assert math.isclose(float(got), math.sqrt(d / sq[127]), rel_tol=1e-4)
    t_out = t.clone()
    t_out[1, 0] *= 1000.0  # one massive token in layer 1's MLP output
    x_out = x.clone()
    x_out[2, 5] *= 1000.0
    planted = CrossLayerTranscoder(cfg)
    planted.init_from_data(x_out, t_out)
    assert torch.isfinite(planted.act_scale_out).all()
    pairs = (
        (planted.act_scale_out, clean.act_scale_out),
        (planted.act_scale_in, clean.act_scale_in),
    )
    for got, ref in pairs:
        assert ((got / ref - 1).abs() < 0.05).all(), (got / ref).tolist()
    # The old rule (mean squared norm = d) would not survive it: the test fails for it.
    old_clean = math.sqrt(d / float(t[1].pow(2).sum(-1).mean()))
    old_planted = math.sqrt(d / float(t_out[1].pow(2).sum(-1).mean()))
    assert old_clean / old_planted > 10
