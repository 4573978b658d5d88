"""The atlas database under concurrent use and damage, on real SQLite files and real processes.

A reader keeps reading while another process holds a write transaction (WAL); a second writing
process is refused with one line naming the first, and is let in once the first dies (kill -9:
the kernel drops its lock); a damaged file (empty, foreign header, a corrupt page) is one line on
open saying how to rebuild it, in the API and in the CLI.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lmscope.atlas.db import AtlasDB
from lmscope.cli import main
from lmscope.errors import UserError
from lmscope.read.demo import HOOKS, PLANTED

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def atlas(demo_atlas_root, tmp_path):
    root = tmp_path / "demo"
    shutil.copytree(demo_atlas_root, root)
    return root


def _writer(db: Path, tmp: Path, *, commit_after: str) -> subprocess.Popen:
    """A process that opens db for writing, changes the planted label inside an open transaction,
    prints 'ready', and commits only once the file `commit_after` exists."""
    code = textwrap.dedent(f"""
        import os, sys, time
        from lmscope.atlas.db import AtlasDB
        db = AtlasDB({str(db)!r})
        db.conn.execute("BEGIN IMMEDIATE")
        db.conn.execute("UPDATE features SET label = 'changed' WHERE idx = {PLANTED}")
        print("ready", flush=True)
        while not os.path.exists({commit_after!r}):
            time.sleep(0.05)
        db.conn.commit()
        print("committed", flush=True)
        time.sleep(600)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    assert p.stdout.readline().strip() == "ready"
    return p


def test_reader_reads_while_another_process_writes(atlas, tmp_path):
    db_path = atlas / "atlas.db"
    go = tmp_path / "go"
    w = _writer(db_path, tmp_path, commit_after=str(go))
    try:
        with AtlasDB(db_path, readonly=True, timeout=1) as r:  # never waits for the writer (WAL)
            before = r.label(HOOKS[0], PLANTED)
            assert before != "changed" and r.feature(HOOKS[0], PLANTED).fires > 0
            go.touch()
            assert w.stdout.readline().strip() == "committed"
            assert r.label(HOOKS[0], PLANTED) == "changed"
    finally:
        w.kill()
        w.wait()


def test_second_writer_refused_then_admitted_after_kill_9(atlas, tmp_path):
    db_path = atlas / "atlas.db"
    w = _writer(db_path, tmp_path, commit_after=str(tmp_path / "never"))
    try:
        with pytest.raises(UserError) as e:
            AtlasDB(db_path, timeout=0.5)
        msg = str(e.value)
        assert "\n" not in msg and "being written by another lmscope process" in msg
        assert f"pid {w.pid}" in msg
        with AtlasDB(db_path, readonly=True) as r:  # readers are not refused
            assert r.label(HOOKS[0], PLANTED) != "changed"
    finally:
        os.kill(w.pid, signal.SIGKILL)
        w.wait()
    with AtlasDB(db_path, timeout=5) as db:  # the dead writer's lock and transaction are gone
        assert db.label(HOOKS[0], PLANTED) != "changed"
        db.set_label(HOOKS[0], PLANTED, "mine")
        with AtlasDB(db_path) as again:  # opens within one process share the lock
            assert again.label(HOOKS[0], PLANTED) == "mine"


def _corrupt_middle(p: Path) -> None:
    data = bytearray(p.read_bytes())
    page = 4096
    n = len(data) // page
    assert n > 4
    for i in range(2, n - 1):  # every b-tree page but the first: headers and cells garbage
        data[i * page : i * page + 64] = b"\xff" * 64
    p.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage, needle",
    [
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: p.write_bytes(b"PK\x03\x04" + b"\x00" * 5000), "not an SQLite file"),
        (lambda p: p.write_bytes(p.read_bytes()[: 4096 * 2]), "damaged"),
        (_corrupt_middle, "damaged"),
    ],
)
def test_damaged_database_is_one_line_with_the_fix(atlas, damage, needle, capsys):
    db_path = atlas / "atlas.db"
    for side in ("atlas.db-wal", "atlas.db-shm"):
        (atlas / side).unlink(missing_ok=True)
    damage(db_path)
    before = db_path.read_bytes()
    for readonly in (True, False):
        with pytest.raises(UserError) as e:
            AtlasDB(db_path, readonly=readonly)
        msg = str(e.value)
        assert (
            "\n" not in msg and needle in msg and "lmscope atlas build" in msg and "--force" in msg
        )
    code = main(["feature", str(atlas), f"{HOOKS[0]}/{PLANTED}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "Traceback" not in err and "atlas build" in err
    assert db_path.read_bytes() == before  # nothing was "repaired" or overwritten
