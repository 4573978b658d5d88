"""Model loading: names, folders, GGUF, and the real default model."""

from __future__ import annotations

import json

import pytest
import torch

from lmscope.cli import main
from lmscope.errors import UserError
from lmscope.models import load_model, resolve
from lmscope.models.runtime import run
from lmscope.models.tiny import tiny_model


@pytest.fixture(scope="module")
def tiny_folder(tiny_model_dir):
    return tiny_model("qwen2", n_layers=2), tiny_model_dir("qwen2", n_layers=2)


def test_load_local_folder_gives_same_logits(tiny_folder):
    ref, d = tiny_folder
    lm = load_model(str(d))
    toks = ref.to_tokens("the big horse ran")
    torch.testing.assert_close(
        run(lm, toks, logits=True).logits, run(ref, toks, logits=True).logits
    )
    assert lm.n_layers == 2 and lm.d_model == 32


def test_load_bf16(tiny_folder):
    _, d = tiny_folder
    lm = load_model(str(d), dtype="bfloat16")
    assert lm.dtype == torch.bfloat16
    acts = run(lm, lm.to_tokens("the cat"), capture=["blocks.1.resid_post"]).acts
    assert acts["blocks.1.resid_post"].dtype == torch.bfloat16


@pytest.mark.parametrize(
    "name, msg",
    [
        ("smollm", "did you mean: smollm2-135m"),
        ("missing.gguf", "GGUF file not found"),
        ("not a model", "unknown model"),
    ],
)
def test_bad_model_names(name, msg):
    with pytest.raises(UserError, match=msg):
        resolve(name)


def test_folder_without_config(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        resolve(str(tmp_path))


def test_cli_hooks_json_and_bad_model_exit_2(tiny_folder, capsys):
    _, d = tiny_folder
    assert main(["hooks", "--model", str(d), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    names = [h["name"] for h in out["hooks"]]
    assert names[0] == "embed" and "blocks.1.resid_post" in names and names[-1] == "ln_final"
    assert main(["hooks", "--model", "smollm"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "smollm2-135m" in err and "Traceback" not in err


def test_cli_models_lists_default(capsys):
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["name"] == "smollm2-135m"


@pytest.mark.slow
def test_real_default_model_hooks_and_answer(default_lm):
    lm = default_lm
    assert (lm.n_layers, lm.d_model) == (30, 576)
    toks = lm.to_tokens("The capital of France is")
    res = run(
        lm,
        toks,
        capture=["blocks.14.resid_post", "blocks.14.resid_mid", "blocks.14.mlp_out"],
        logits=True,
    )
    with torch.no_grad():
        hs = lm.model(toks, output_hidden_states=True, use_cache=False).hidden_states
    torch.testing.assert_close(res.acts["blocks.14.resid_post"], hs[15])
    torch.testing.assert_close(
        res.acts["blocks.14.resid_mid"] + res.acts["blocks.14.mlp_out"], hs[15]
    )
    assert lm.tokenizer.decode(res.logits[0, -1].argmax()) == " Paris"


def test_half_precision_warning_names_the_cpu_once(monkeypatch, capsys):
    """bf16 on a CPU without native bf16 gets one warning line per flag; fp32 and GPUs never do."""
    import torch

    from lmscope.models import load as L

    monkeypatch.setattr(L, "_WARNED_HALF", set())
    assert not L.cpu_half_is_slow(torch.float32)
    assert not L.cpu_half_is_slow(torch.bfloat16, "cuda")
    monkeypatch.setattr(L, "cpu_half_is_slow", lambda dtype, device="cpu": True)
    L.warn_if_slow_half(torch.bfloat16, "cpu", "--dtype")
    L.warn_if_slow_half(torch.bfloat16, "cpu", "--dtype")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no native bfloat16" in err[0] and "--dtype float32" in err[0]
    monkeypatch.setattr(L, "cpu_half_is_slow", lambda dtype, device="cpu": False)
    L.warn_if_slow_half(torch.bfloat16, "cpu", "--model-dtype")
    assert capsys.readouterr().err == ""
