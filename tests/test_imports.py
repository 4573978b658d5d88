"""Imports point one way: a lower stage never imports a higher one (docs/packages.md).

Every module's imports are read with `ast` (module-level, function-level and TYPE_CHECKING
imports alike) and each edge between two parts of lmscope is checked against STAGES below.
The planted-violation tests prove the checker fails on the cases it exists for.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent / "lmscope"

# Lowest first. A part may import its own part and any part of a lower stage. Keep this table
# and the one in docs/packages.md the same.
STAGES: list[set[str]] = [
    # top-level utilities: errors < config, validate, dist < layout
    {"errors"},
    {"config", "validate", "dist"},
    {"layout"},
    {"models"},  # the model and its runtime
    {"lmscope"},  # the package facade (lmscope/__init__.py: load_model, run, add, ...)
    {"capture"},
    {"dictionaries"},
    {"atlas"},
    {"explain"},
    {"read", "trace", "steer", "probe"},
    {"correct"},  # repairs: uses trace, steer and probe
    {"viewer"},
    {"cli"},
    {"__main__"},  # python -m lmscope
]
# Among the parts of one stage, only these imports are allowed (kept acyclic): the reader is
# the base the others build on, steering names features the way trace does.
PEERS: set[tuple[str, str]] = {
    ("trace", "read"),
    ("steer", "read"),
    ("steer", "trace"),
    ("probe", "read"),
}


def stage_of(part: str) -> int:
    for i, parts in enumerate(STAGES):
        if part in parts:
            return i
    raise KeyError(part)


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, root: Path) -> list[tuple[str, int]]:
    """(imported lmscope module or attribute, line) for every import statement in the file."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if node.module:
                out.append((target, node.lineno))
            else:  # `from .. import x`: x is a module (count it) or a name of the package
                out += [
                    (
                        f"{target}.{a.name}" if _is_module(f"{target}.{a.name}", root) else target,
                        node.lineno,
                    )
                    for a in node.names
                ]
    return [(t, line) for t, line in out if t == root.name or t.startswith(root.name + ".")]


def _is_module(dotted: str, root: Path) -> bool:
    path = root.parent.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def part_of(module: str) -> str:
    """lmscope.atlas.db -> atlas; lmscope.errors -> errors; lmscope -> lmscope (the facade)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def violations(root: Path = ROOT) -> list[str]:
    bad = []
    for path in sorted(root.rglob("*.py")):
        src = module_name(path, root)
        a = part_of(src)
        for target, line in imports_of(path, root):
            b = part_of(target)
            if a == b:
                continue
            where = f"{path.relative_to(root.parent)}:{line} imports {target}"
            try:
                sa, sb = stage_of(a), stage_of(b)
            except KeyError as e:
                bad.append(
                    f"{where}: {e.args[0]!r} has no stage; add it to STAGES and docs/packages.md"
                )
                continue
            if sb > sa:
                bad.append(f"{where}: {a} (stage {sa}) must not import {b} (stage {sb})")
            elif sb == sa and (a, b) not in PEERS:
                bad.append(f"{where}: {a} must not import its peer {b} (allowed: {sorted(PEERS)})")
    return bad


def test_imports_point_one_way():
    assert violations() == []


def test_peer_imports_are_acyclic():
    graph = {a: {b for x, b in PEERS if x == a} for a, _ in PEERS}

    def reaches(a: str, goal: str, seen: frozenset = frozenset()) -> bool:
        return any(
            b == goal or (b not in seen and reaches(b, goal, seen | {b})) for b in graph.get(a, ())
        )

    assert not [a for a in graph if reaches(a, a)]


def test_every_part_has_a_stage():
    parts = {
        p.stem if p.is_file() else p.name
        for p in ROOT.iterdir()
        if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()
    }
    assert parts <= set().union(*STAGES)


def _plant(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "lmscope"
    for rel, text in {"__init__.py": "", **files}.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        for parent in p.relative_to(root).parents:
            (root / parent / "__init__.py").touch()
        p.write_text(text)
    return root


@pytest.mark.parametrize(
    "files, needles",
    [
        # module-level relative import of a higher stage
        (
            {"capture/store.py": "from ..atlas.db import AtlasDB\n"},
            ("capture (stage", "must not import atlas"),
        ),
        # function-level import (the way cycles usually hide)
        (
            {"models/load.py": "def f():\n    from ..viewer import server\n"},
            ("models (stage", "must not import viewer"),
        ),
        # absolute import, and one under TYPE_CHECKING
        (
            {"dictionaries/base.py": "import lmscope.explain.runner\n"},
            ("dictionaries (stage", "must not import explain"),
        ),
        (
            {
                "layout.py": "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from .models import LanguageModel\n"
            },
            ("layout (stage", "must not import models"),
        ),
        # `from .. import x` naming a higher package, from a nested module
        (
            {"dictionaries/io/saelens.py": "from ... import cli\n", "cli/__init__.py": ""},
            ("dictionaries (stage", "must not import cli"),
        ),
        # a name of the facade (`lmscope/__init__.py`) from below it
        (
            {"models/load.py": "from .. import UserError\n"},
            ("models (stage", "must not import lmscope"),
        ),
        # peers: read may not import steer, and the reverse of an allowed pair is refused
        (
            {"read/scan.py": "from ..steer import plan\n"},
            ("read must not", "import its peer steer"),
        ),
        (
            {"trace/graph.py": "from ..steer.plan import steer\n"},
            ("trace must not", "import its peer steer"),
        ),
        # a new top-level part must be placed in the order first
        ({"newstage/x.py": "from ..errors import UserError\n"}, ("'newstage'", "has no stage")),
    ],
)
def test_planted_violation_fails(tmp_path, files, needles):
    found = violations(_plant(tmp_path, files))
    assert any(all(n in v for n in needles) for v in found), found


def test_planted_allowed_imports_pass(tmp_path):
    root = _plant(
        tmp_path,
        {
            "atlas/build.py": "from ..dictionaries.registry import build\n"
            "from ..layout import AtlasLayout\n",
            "steer/plan.py": "def f():\n    from ..trace import resolve_target\n",
            "cli/run.py": "from .. import __version__\nfrom ..viewer import server\n",
            "capture/corpus.py": "from .. import UserError\n",  # a name of the facade, not a module
        },
    )
    assert violations(root) == []


def _direct_imports(rel: str) -> set[str]:
    return {t for t, _ in imports_of(ROOT / rel, ROOT)}


def test_base_classes_do_not_import_their_subclasses():
    arch = {
        f"lmscope.dictionaries.{m}" for m in ("topk", "batchtopk", "jumprelu", "relu", "registry")
    }
    kinds = {f"lmscope.probe.{m}" for m in ("logistic", "massmean", "ccs", "registry")}
    assert not _direct_imports("dictionaries/base.py") & arch
    assert not _direct_imports("probe/probes.py") & kinds


def test_registries_cover_every_kind():
    from lmscope.dictionaries.base import ARCHS
    from lmscope.dictionaries.registry import ARCHITECTURES
    from lmscope.probe.registry import KINDS, fit

    assert tuple(ARCHITECTURES) == ARCHS
    assert {c.__module__.rsplit(".", 1)[1] for c in ARCHITECTURES.values()} == {
        "topk",
        "batchtopk",
        "jumprelu",
        "relu",
    }
    with pytest.raises(ValueError, match="choose from logistic"):
        fit("nope", "h", None, None)
    assert len(KINDS) == 4


def test_dictionary_protocol_covers_every_class_and_the_sharded_one():
    from lmscope.dictionaries import DictionaryConfig, build
    from lmscope.dictionaries.protocol import Dictionary
    from lmscope.dictionaries.registry import ARCHITECTURES
    from lmscope.dictionaries.sharded import ShardedTopK
    from lmscope.dist import DistInfo

    for arch in ARCHITECTURES:
        d = build(DictionaryConfig(d_in=8, d_sae=16, arch=arch, k=2))
        assert isinstance(d, Dictionary), arch
    assert isinstance(
        ShardedTopK(build(DictionaryConfig(d_in=8, d_sae=16, k=2)), DistInfo()), Dictionary
    )
    assert not isinstance(torch.nn.Linear(8, 16), Dictionary)  # the check can fail
