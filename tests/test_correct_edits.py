"""correct/: edits at run time, folded into weights, exported; the exported model is plain
transformers and equals the runtime-edited one."""

from __future__ import annotations

import pytest
import torch

from lmscope.correct import AddVector, EditSet, ProjectOut, export, fold
from lmscope.errors import UserError
from lmscope.models.tiny import tiny_model

FOLDABLE = ("llama", "gpt2", "qwen2", "gpt_neox", "mistral")
IDS = torch.tensor([[1, 7, 9, 30, 31, 44, 12, 5, 8, 60]])


def _tied_llama(n_layers=2):
    """A tiny Llama whose output head shares the input embeddings (as SmolLM2's does)."""
    from transformers import AutoModelForCausalLM

    from lmscope.models.load import from_pretrained_model
    from lmscope.models.tiny import tiny_config, tiny_tokenizer

    tok = tiny_tokenizer()
    cfg = tiny_config("llama", n_layers=n_layers, vocab=len(tok))
    cfg.tie_word_embeddings = True
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return from_pretrained_model(model, tok, name="tiny-llama-tied")


def _logits(lm, ids=IDS, edits=None):
    with torch.no_grad():
        if edits is None:
            return lm.model(ids, use_cache=False).logits
        with lm.edit(edits):
            return lm.model(ids, use_cache=False).logits


def _direction(lm, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(lm.d_model, generator=g)


@pytest.mark.parametrize("family", FOLDABLE)
def test_projection_fold_equals_runtime_edit(family):
    lm = _tied_llama() if family == "llama" else tiny_model(family, n_layers=2)
    e = ProjectOut(_direction(lm))
    before = _logits(lm)
    ref = _logits(lm, edits=e.runtime(lm))
    folded = fold(lm, e)
    got = _logits(folded)
    assert not torch.allclose(ref, before, atol=1e-4)  # the edit does something
    torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(_logits(lm), before)  # the original is untouched


def test_projected_residual_has_no_component_along_the_direction():
    lm = tiny_model("llama", n_layers=3)
    u = _direction(lm)
    folded = fold(lm, ProjectOut(u))
    names = ["embed"] + [f"blocks.{L}.resid_post" for L in range(3)]
    acts = folded.run(IDS, capture=names).acts
    un = u / u.norm()
    for n in names:
        assert acts[n].abs().max() > 1e-3
        assert (acts[n] @ un).abs().max() < 1e-5, n
    # and the unembedding still reads the original directions: the output head is untouched
    torch.testing.assert_close(
        folded.model.get_output_embeddings().weight, lm.model.get_output_embeddings().weight
    )


def test_tied_embeddings_are_untied_before_projection():
    lm = _tied_llama()
    m = lm.model
    assert m.get_output_embeddings().weight is m.get_input_embeddings().weight
    folded = fold(lm, ProjectOut(_direction(lm)))
    fm = folded.model
    assert (
        fm.get_output_embeddings().weight.data_ptr() != fm.get_input_embeddings().weight.data_ptr()
    )
    assert fm.config.tie_word_embeddings is False


@pytest.mark.parametrize("family", ("llama", "gpt2"))
def test_add_vector_fold_equals_runtime_edit(family):
    lm = tiny_model(family, n_layers=2)
    e = EditSet((AddVector(1, 3 * _direction(lm, 2)), ProjectOut(_direction(lm), layers=(0,))))
    ref = _logits(lm, edits=e.runtime(lm))
    got = _logits(fold(lm, e))
    assert not torch.allclose(ref, _logits(lm), atol=1e-4)
    torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-4)


def test_empty_and_zero_edits_change_nothing():
    lm = tiny_model("llama", n_layers=2)
    before = _logits(lm)
    torch.testing.assert_close(_logits(fold(lm, EditSet())), before, atol=0, rtol=0)
    torch.testing.assert_close(
        _logits(fold(lm, AddVector(0, torch.zeros(lm.d_model)))), before, atol=0, rtol=0
    )


def test_post_norm_family_is_refused_with_one_line():
    lm = tiny_model("gemma2", n_layers=2)
    with pytest.raises(UserError, match="runtime edit"):
        fold(lm, ProjectOut(_direction(lm)))


def test_bad_edits_are_refused():
    lm = tiny_model("llama", n_layers=2)
    with pytest.raises(UserError, match="zero"):
        fold(lm, ProjectOut(torch.zeros(lm.d_model)))
    with pytest.raises(UserError, match="layers 0-1"):
        fold(lm, AddVector(5, torch.ones(lm.d_model)))
    with pytest.raises(UserError, match="numbers"):
        fold(lm, AddVector(0, torch.ones(lm.d_model + 1)))


@pytest.mark.parametrize("family", ("llama", "gpt2"))
def test_exported_model_loads_in_plain_transformers_and_equals_runtime_edit(family, tmp_path):
    from transformers import AutoModelForCausalLM

    lm = _tied_llama() if family == "llama" else tiny_model(family, n_layers=2)
    e = EditSet((ProjectOut(_direction(lm)), AddVector(1, _direction(lm, 3))))
    ref = _logits(lm, edits=e.runtime(lm))
    out = export(fold(lm, e), tmp_path / "fixed", "## Edit\n" + e.describe())
    plain = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        got = plain(IDS, use_cache=False).logits
    torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-4)
    card = (out / "README.md").read_text()
    assert card.startswith("# Repaired with lmscope") and "project out" in card
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial left


def test_export_never_overwrites_without_force(tmp_path):
    lm = tiny_model("llama", n_layers=2)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("user's file")
    with pytest.raises(UserError, match="--force"):
        export(lm, mine, "x")
    assert (mine / "notes.txt").read_text() == "user's file"
    export(lm, mine, "x", force=True)
    assert (mine / "config.json").exists() and not (mine / "notes.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]


def test_interrupted_export_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    lm = tiny_model("llama", n_layers=2)

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(lm.tokenizer, "save_pretrained", boom)
    with pytest.raises(KeyboardInterrupt):
        export(lm, tmp_path / "fixed", "x")
    assert list(tmp_path.iterdir()) == []
