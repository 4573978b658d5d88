"""Jobs killed with SIGKILL at a seeded random moment, and jobs that hit a full disk (slow set).

The harness is bench/bench_kill.py (which runs >= 20 seeded trials per stage for docs/security.md);
here one trial per stage for capture, per-layer training and the atlas build: after the kill no
half-written artifact is taken for a finished one, the rerun of the same command exits 0 and its
artifact equals an uninterrupted run's; on a tmpfs a few KiB larger than the inputs the command
exits 2 with one line and the inputs are unchanged (skipped where tmpfs cannot be mounted).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    import bench_kill

    work = tmp_path_factory.mktemp("kill")
    return bench_kill, work, bench_kill.make_base(work), {}


@pytest.mark.parametrize("stage", ["capture", "train", "atlas_build"])
def test_killed_stage_reruns_to_the_uninterrupted_result(pipeline, stage):
    bk, work, base, refs = pipeline
    for need in [bk.STAGES[stage].needs] if bk.STAGES[stage].needs else []:
        if need not in refs:
            bk.run_stage(bk.STAGES[need], base, refs, work, trials=0, seed=0, disk=False)
    res = bk.run_stage(bk.STAGES[stage], base, refs, work, trials=1, seed=1, disk=True)
    assert "error" not in res, res.get("error")
    t = res["trials"][0]
    assert not t["half_written_taken_as_finished"], t
    assert bk.rerun_ok(t) and bk.final_ok(t), t
    disk = res["disk_full"]
    if disk["result"] == "skipped":
        pytest.skip(f"full-disk trial: {disk['why']}")
    assert disk["result"] == "ok", disk
