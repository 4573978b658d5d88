"""Every command's flags come from its frozen config (the README's promise), and config.flag()
covers what a field's type cannot say."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

import pytest

from lmscope.cli import build_parser
from lmscope.config import add_arguments, flag, from_args


def _sub(parser: argparse.ArgumentParser, *path: str) -> argparse.ArgumentParser:
    for name in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


def _configs():
    from lmscope.probe.explain import AlignConfig
    from lmscope.probe.liecheck import LieCheckConfig
    from lmscope.probe.lies import LiesConfig
    from lmscope.probe.matrix import MatrixConfig
    from lmscope.probe.sweep import SweepConfig
    from lmscope.probe.transfer import TransferConfig
    from lmscope.read.scan_config import ScanConfig
    from lmscope.steer.plan import SteerConfig
    from lmscope.trace.config import GraphConfig, TraceConfig
    from lmscope.viewer.server import ServeConfig

    return [
        (("probe", "train"), SweepConfig),
        (("probe", "eval"), MatrixConfig),
        (("probe", "transfer"), TransferConfig),
        (("probe", "lies"), LiesConfig),
        (("probe", "explain"), AlignConfig),
        (("lie-check",), LieCheckConfig),
        (("trace",), TraceConfig),
        (("graph",), GraphConfig),
        (("steer",), SteerConfig),
        (("scan",), ScanConfig),
        (("serve",), ServeConfig),
    ]


@pytest.mark.parametrize(
    "path, cls", _configs(), ids=lambda x: " ".join(x) if isinstance(x, tuple) else ""
)
def test_every_flag_is_a_config_field(path, cls):
    """Only --json (an output format, not a setting) is added by hand."""
    p = _sub(build_parser(), *path)
    dests = {a.dest for a in p._actions if not isinstance(a, argparse._HelpAction)}
    fields = {f.name for f in dataclasses.fields(cls)}
    assert dests - {"json"} == fields


@dataclass(frozen=True)
class Example:
    name: str
    """the name"""
    tags: tuple[str, ...] = flag((), action="append", metavar="T")
    """a tag (repeatable)"""
    pair: tuple[str, str] | None = flag(None, nargs=2)
    """two words"""
    loud: bool = flag(False, action="store_true")
    """shout"""
    quiet: bool = False
    """whisper"""
    n: int = 3
    """how many"""


def test_flag_switches_repeats_pairs_and_required_fields():
    p = argparse.ArgumentParser()
    add_arguments(p, Example)
    ns = p.parse_args(
        ["--name", "x", "--tags", "a", "--tags", "b", "--pair", "u", "v", "--loud", "--n", "2k"]
    )
    assert from_args(Example, ns) == Example("x", ("a", "b"), ("u", "v"), True, False, 2000)
    assert from_args(Example, p.parse_args(["--name", "x"])) == Example("x")
    with pytest.raises(SystemExit):  # a field without a default is a required flag
        p.parse_args([])
    text = " ".join(p.format_help().split())
    assert "--no-loud" not in text and "--quiet, --no-quiet" in text  # store_true vs a plain bool
    assert "how many (default: 3)" in text and "--tags T" in text
