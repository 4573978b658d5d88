"""The code style the config sets is enforced: ruff's lint rules (line length 100 included) and its
formatter, over the package, the tests, the benchmarks and the scripts."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PATHS = ["lmscope", "tests", "bench", "scripts"]


def _ruff(*args: str) -> subprocess.CompletedProcess:
    try:
        import ruff  # noqa: F401  (installed by the test extra)
    except ImportError:
        if shutil.which("ruff") is None:
            pytest.skip("ruff is not installed (pip install -e '.[test]')")
        return subprocess.run(["ruff", *args], cwd=REPO, capture_output=True, text=True)
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args], cwd=REPO, capture_output=True, text=True
    )


def test_lint_rules_hold():
    r = _ruff("check", *PATHS)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-1000:]


def test_code_is_formatted():
    r = _ruff("format", "--check", *PATHS)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-1000:]
