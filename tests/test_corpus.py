"""Corpus reading, held-out split and packing, on real files and the tiny tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lmscope.capture import corpus as C
from lmscope.errors import UserError


@pytest.fixture()
def tok():
    from lmscope.models.tiny import tiny_tokenizer

    return tiny_tokenizer()


def _docs(n=200):
    from lmscope.models.tiny import WORDS

    return [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(5 + i % 11)) for i in range(n)]


def test_formats_read_the_same_documents(tmp_path):
    docs = _docs(50)
    (tmp_path / "a.txt").write_text("\n\n".join(docs[:20]))
    (tmp_path / "b.md").write_text("\n\n\n".join(docs[20:30]))
    (tmp_path / "c.jsonl").write_text(
        "\n".join(json.dumps({"body": d, "id": i}) for i, d in enumerate(docs[30:40]))
    )
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": docs[40:], "n": list(range(10))}), tmp_path / "d.parquet")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "x.txt").write_text("never read")
    assert list(C.iter_documents(str(tmp_path / "a.txt"), split="all")) == docs[:20]
    assert (
        list(C.iter_documents(str(tmp_path / "c.jsonl"), text_field="body", split="all"))
        == docs[30:40]
    )
    assert (
        list(C.iter_documents(str(tmp_path / "d.parquet"), text_field="body", split="all"))
        == docs[40:]
    )
    # A folder: files in sorted order, .txt/.md paragraphs, .jsonl rows, .parquet rows; dot-folders
    # skipped.
    assert list(C.iter_documents(str(tmp_path), text_field="body", split="all")) == docs


@pytest.mark.parametrize(
    "make, msg",
    [
        (lambda p: p / "missing.txt", "corpus not found"),
        (lambda p: (p / "e.txt").write_text("\n\n  \n") and p / "e.txt", "no text"),
        (lambda p: (p / "x.csv").write_text("a,b") and p / "x.csv", "unsupported corpus file"),
        (
            lambda p: (p / "bad.jsonl").write_text("{not json}\n") and p / "bad.jsonl",
            "not valid JSON",
        ),
        (
            lambda p: (p / "f.jsonl").write_text('{"content": "hi"}\n') and p / "f.jsonl",
            "no field 'text'",
        ),
        (lambda p: (p / "emptydir").mkdir() or p / "emptydir", "holds no"),
    ],
)
def test_bad_corpora_are_one_line_errors(tmp_path, make, msg):
    src = make(tmp_path)
    with pytest.raises(UserError, match=msg) as e:
        list(C.iter_documents(str(src)))
    assert "\n" not in str(e.value)


def test_hub_dataset_offline_is_refused(monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="not reachable"):
        list(C.iter_documents("hf:wikitext:wikitext-2-raw-v1"))


def test_hub_like_name_suggests_hf_prefix():
    with pytest.raises(UserError, match="hf:NAME"):
        list(C.iter_documents("Salesforce/wikitext"))


def test_split_is_disjoint_complete_and_order_free(tmp_path):
    docs = _docs(400)
    f = tmp_path / "c.txt"
    f.write_text("\n\n".join(docs))
    train = list(C.iter_documents(str(f), split="train"))
    held = list(C.iter_documents(str(f), split="heldout"))
    assert list(C.iter_documents(str(f), split="test")) == held  # alias
    assert not set(train) & set(held) and sorted(train + held) == sorted(docs)
    assert 0 < len(held) < 0.15 * len(docs)
    # The split is a property of the text, not of its position.
    g = tmp_path / "r.txt"
    g.write_text("\n\n".join(reversed(docs)))
    assert set(C.iter_documents(str(g), split="heldout")) == set(held)
    with pytest.raises(UserError, match="unknown split"):
        list(C.iter_documents(str(f), split="validation"))


def test_pack_keeps_every_token_in_order(tok, tmp_path):
    docs = _docs(120)
    batches = list(
        C.pack(tok, docs, ctx_len=16, batch_size=4, bos_token_id=tok.bos_token_id, seed=-1)
    )
    assert batches and all(b.shape == (4, 16) and b.dtype == torch.long for b in batches)
    flat = torch.cat(batches)
    assert (flat[:, 0] == tok.bos_token_id).all()
    stream = []
    for d in docs:
        stream += tok(d, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    body = flat[:, 1:].reshape(-1).tolist()
    assert (
        body == stream[: len(body)]
    )  # contexts are consecutive slices: nothing dropped or repeated
    assert len(stream) - len(body) < 15 * 4 + 15  # only the last partial batch/context is left out


def test_pack_is_deterministic_per_seed(tok):
    docs = _docs(300)

    def run(seed):
        return torch.cat(
            list(
                C.pack(
                    tok, docs, ctx_len=12, batch_size=8, bos_token_id=tok.bos_token_id, seed=seed
                )
            )
        )

    a, b, c = run(1), run(1), run(2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(UserError, match="ctx-len"):
        next(C.pack(tok, docs, ctx_len=1, batch_size=1, bos_token_id=0))


def test_shuffled_is_a_permutation():
    xs = [str(i) for i in range(10_000)]
    out = list(C.shuffled(xs, seed=3, buffer=100))
    assert sorted(out) == sorted(xs) and out != xs


def _fake_debian(root: Path) -> tuple[Path, Path]:
    fort, wn = root / "fortunes", root / "wordnet"
    (fort / "off").mkdir(parents=True)
    wn.mkdir()
    recs = [
        f"Record number {i}: a real saying about the sea, the sky and patience."
        for i in range(3000)
    ]
    (fort / "wisdom").write_text("\n%\n".join(recs[:2000]) + "\n%\n")
    (fort / "wisdom.dat").write_bytes(b"\x00\x01binary index")
    (fort / "people").write_text("\n%\n".join(recs[2000:]))
    (fort / "off" / "rude").write_text("OFFENSIVE RECORD that must never be read\n%\n")
    lines = ['  1 This software and database is provided "as is" and Princeton makes no warranties']
    for i in range(500):
        lines.append(
            f"0000{i:04d} 29 v 01 walk 0 000 | use one's feet to advance; "
            f'"we walked to the market number {i}"; "she walks her dog every morning {i}"  '
        )
    (wn / "data.verb").write_text("\n".join(lines) + "\n")
    return fort, wn


def test_default_corpus_built_from_debian_sources(tmp_path, monkeypatch):
    fort, wn = _fake_debian(tmp_path)
    monkeypatch.setenv("LMSCOPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(C, "FORTUNES_DIR", fort)
    monkeypatch.setattr(C, "WORDNET_DIR", wn)
    p = C.build_default(quiet=True)
    assert p.is_file() and p.parent == tmp_path / "cache" / "corpus"
    docs = list(C.iter_documents("default", split="all"))
    assert len(docs) == 3000 + 1000
    assert not any("OFFENSIVE" in d or "binary" in d or "Princeton" in d for d in docs)
    assert "we walked to the market number 7" in docs
    assert docs[:50] != sorted(docs[:50])  # sources and topics are mixed
    names = [s["name"] for s in C.default_corpus_sources()]
    assert any("fortunes" in n for n in names) and any("WordNet" in n for n in names)
    # Built once: a second call does not rebuild.
    mtime = p.stat().st_mtime_ns
    assert C.build_default(quiet=True) == p and p.stat().st_mtime_ns == mtime


def test_default_corpus_fallback_without_apt(tmp_path, monkeypatch):
    monkeypatch.setenv("LMSCOPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(C, "FORTUNES_DIR", tmp_path / "none1")
    monkeypatch.setattr(C, "WORDNET_DIR", tmp_path / "none2")
    C.build_default(quiet=True)
    names = [s["name"] for s in C.default_corpus_sources()]
    assert any("docstrings" in n for n in names)  # the standard library is always there
    assert sum(s["chars"] for s in C.default_corpus_sources()) > 1_000_000


@pytest.mark.skipif(
    not C.FORTUNES_DIR.is_dir() or not C.WORDNET_DIR.is_dir(),
    reason="Debian's fortunes + wordnet-base are not installed (scripts/setup.sh installs them)",
)
def test_real_default_corpus_is_big_varied_english(tmp_path, monkeypatch):
    monkeypatch.setenv("LMSCOPE_CACHE", str(tmp_path / "cache"))
    info = C.corpus_info("default")
    assert info.chars >= 2_000_000 and info.documents > 10_000
    assert 0.02 < info.heldout_documents / info.documents < 0.08
    text = " ".join(d for _, d in zip(range(2000), C.iter_documents("default")))
    for w in (" the ", " and ", " of "):
        assert text.count(w) > 100
