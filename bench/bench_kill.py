"""Jobs killed at random moments, and jobs that hit a full disk: every stage, seeded trials.

    nice -n 10 .venv/bin/python bench/bench_kill.py                         # 20 trials per stage
    nice -n 10 .venv/bin/python bench/bench_kill.py --trials 3 --stages capture,train

For each stage of the pipeline (on a tiny llama built in code, so a trial takes seconds):

1. two uninterrupted reference runs of the stage's command; what differs between them (a time
   stamp in a JSON field, a `created` column) is the stage's nondeterminism and is ignored below;
2. each trial: start the same command in a fresh folder (its inputs copied in), SIGKILL it after
   a seeded uniform delay in [0.05, 1.0] x the reference wall time, then
   - "no half-written artifact taken as finished": if the stage's completion marker exists after
     the kill (manifest, atlas.json entry, build meta, probe.json, graph file), the artifact must
     equal the reference;
   - rerun the same command: it must exit 0 and its artifact must equal the reference.
3. a full disk: a tmpfs a few KiB larger than the stage's inputs (mounted for the trial; root
   only, else the stage is reported as skipped), the inputs copied in, the command run with its
   output inside: it must exit 2 with one line on stderr, and the inputs must be unchanged (files
   byte for byte; an atlas.db the stage writes into: every table but the stage's own
   (explanations, scores, meta) row for row, and `PRAGMA quick_check` still "ok").

Artifacts are compared by content: safetensors tensors bit for bit, JSON after dropping the
fields that differ between the two reference runs, SQLite tables row by row (same rule for
columns), torch checkpoints are not compared (they are intermediate). Results:
bench/results/kill.json and a markdown table on stdout (docs/security.md has it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


# --- the pipeline on a tiny model ---------------------------------------------------------------
def make_base(root: Path) -> dict:
    """A tiny llama saved as a model folder, a corpus: the inputs every stage starts from."""
    import torch

    from lmscope.models.tiny import WORDS, tiny_model

    torch.manual_seed(0)
    lm = tiny_model("llama", n_layers=2)
    lm.model.save_pretrained(root / "model")
    lm.tokenizer.save_pretrained(root / "model")
    r = random.Random(0)
    docs = [" ".join(r.choice(WORDS) for _ in range(r.randint(20, 80))) for _ in range(400)]
    (root / "corpus.txt").write_text("\n\n".join(docs))
    return {"model": str(root / "model"), "corpus": str(root / "corpus.txt")}


@dataclass
class Stage:
    name: str
    argv: callable
    """(base, folder) -> the command's arguments after `lmscope`."""
    artifact: str
    """What the stage writes, relative to the trial folder."""
    needs: str | None = None
    """The stage whose finished artifact is copied into the trial folder first."""
    finished: callable = None
    """(folder) -> True when the completion marker is present."""
    extra: dict = field(default_factory=dict)


def _atlas_lists(folder: Path, hooks: int = 1) -> bool:
    m = folder / "atlas" / "atlas.json"
    try:
        return len(json.loads(m.read_text()).get("dictionaries", {})) >= hooks
    except (OSError, ValueError):
        return False


def _db_built(folder: Path) -> bool:
    db = folder / "atlas" / "atlas.db"
    if not db.exists():
        return False
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        row = con.execute("SELECT value FROM meta WHERE key = 'build'").fetchone()
        con.close()
        return row is not None
    except sqlite3.DatabaseError:
        return False


def _explained(folder: Path) -> bool:
    db = folder / "atlas" / "atlas.db"
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        n = con.execute("SELECT count(*) FROM explanations").fetchone()[0]
        con.close()
        return n > 0
    except sqlite3.DatabaseError:
        return False


TRAIN = [
    "--width",
    "4x",
    "--k",
    "4",
    "--tokens",
    "6k",
    "--batch-size",
    "256",
    "--ctx-len",
    "32",
    "--checkpoint-every",
    "3",
    "--no-progress",
    "--seed",
    "0",
]

STAGES = {
    "train": Stage(
        "train",
        lambda b, f: [
            "train",
            "--model",
            b["model"],
            "--hooks",
            "blocks.1.resid_post",
            "--corpus",
            b["corpus"],
            "--out",
            str(f / "atlas"),
            *TRAIN,
        ],
        "atlas",
        finished=lambda f: _atlas_lists(f),
    ),
    "train_transcode": Stage(
        "train_transcode",
        lambda b, f: [
            "train",
            "--model",
            b["model"],
            "--hooks",
            "blocks.*.mlp_in",
            "--transcode",
            "--corpus",
            b["corpus"],
            "--out",
            str(f / "atlas"),
            *TRAIN,
        ],
        "atlas",
        finished=lambda f: _atlas_lists(f, 2),
    ),
    "atlas_build": Stage(
        "atlas_build",
        lambda b, f: [
            "atlas",
            "build",
            str(f / "atlas"),
            "--corpus",
            b["corpus"],
            "--tokens",
            "4k",
            "--ctx-len",
            "32",
        ],
        "atlas",
        needs="train",
        finished=_db_built,
    ),
    "explain": Stage(
        "explain",
        lambda b, f: [
            "explain",
            str(f / "atlas"),
            "--explainer",
            "stats",
            "--sample",
            "8",
            "--no-progress",
        ],
        "atlas",
        needs="atlas_build",
        finished=_explained,
    ),
    "graph": Stage(
        "graph",
        lambda b, f: [
            "graph",
            str(f / "atlas"),
            "the cat sat on the",
            "--out",
            str(f / "graph.json"),
        ],
        "graph.json",
        needs="train_transcode",
        finished=lambda f: (f / "graph.json").exists(),
        # The tiny graph is ~10 KiB: the default 16 KiB of spare room would hold it.
        extra={"disk_margin_kb": 0},
    ),
    "probe_train": Stage(
        "probe_train",
        lambda b, f: [
            "probe",
            "train",
            "--model",
            b["model"],
            "--dataset",
            "cities,neg_cities",
            "--layers",
            "all",
            "--kinds",
            "logistic,massmean",
            "--out",
            str(f / "probe"),
            "--png",
            "none",
        ],
        "probe",
        finished=lambda f: (f / "probe" / "probe.json").exists(),
        extra={"disk_margin_kb": 0},
    ),  # a ~2 KiB probe: no spare room
    "capture": Stage(
        "capture",
        lambda b, f: [
            "capture",
            "--model",
            b["model"],
            "--hooks",
            "blocks.1.resid_post",
            "--corpus",
            b["corpus"],
            "--tokens",
            "16k",
            "--ctx-len",
            "32",
            "--out",
            str(f / "store"),
        ],
        "store",
        finished=lambda f: (f / "store" / "manifest.json").exists(),
    ),
}


def run_cmd(argv: list[str], timeout: float = 600) -> tuple[int, str, float]:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
    }
    t0 = time.monotonic()
    r = subprocess.run(
        [PY, "-m", "lmscope", *argv], capture_output=True, text=True, timeout=timeout, env=env
    )
    return r.returncode, r.stderr, time.monotonic() - t0


def killed_run(argv: list[str], delay: float) -> bool:
    """Start the command, SIGKILL it after `delay` s; True if it was still running when killed."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
    }
    p = subprocess.Popen(
        [PY, "-m", "lmscope", *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
    )
    try:
        p.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        return True


# --- comparing artifacts by content --------------------------------------------------------------
def snapshot(path: Path) -> dict:
    """{relative file: comparable content} for an artifact (a file or a folder)."""
    from safetensors.torch import load_file

    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    out = {}
    for p in files:
        rel = p.name if path.is_file() else str(p.relative_to(path))
        if (
            p.name.startswith(".")
            or p.suffix in (".pt", ".lock", ".png")
            or p.name.endswith(("-wal", "-shm"))
        ):
            continue  # temp files, checkpoints (intermediate), locks, plots
        if "train/" in rel or rel.startswith("build/"):
            continue  # resume state, deleted once finished
        if p.suffix == ".safetensors":
            out[rel] = {
                k: hashlib.sha256(v.contiguous().numpy().tobytes()).hexdigest()
                for k, v in load_file(str(p)).items()
            }
        elif p.suffix in (".json", ".jsonl"):
            try:
                out[rel] = json.loads(p.read_text())
            except ValueError:
                out[rel] = "<invalid json>"
        elif p.suffix == ".db":
            con = sqlite3.connect(f"file:{p}?mode=ro", uri=True)
            tables = [
                r[0]
                for r in con.execute(
                    "SELECT name FROM sqlite_master WHERE type='table' "
                    "AND name NOT LIKE 'search%' AND name NOT LIKE 'sqlite%'"
                )
            ]
            out[rel] = {}
            for t in tables:  # time stamps of rows are not content
                cols = [r[1] for r in con.execute(f"PRAGMA table_info({t})") if r[1] != "created"]
                rows = con.execute(f"SELECT {', '.join(cols)} FROM {t}").fetchall()
                out[rel][t] = sorted(map(repr, rows))
            con.close()
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def diff_paths(a, b, at: str = "") -> set[str]:
    """JSON-ish paths where a and b differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = set()
        for k in set(a) | set(b):
            if k not in a or k not in b:
                out.add(f"{at}/{k}")
            else:
                out |= diff_paths(a[k], b[k], f"{at}/{k}")
        return out
    return set() if a == b else {at}


def equal(a: dict, b: dict, ignore: set[str]) -> tuple[bool, list[str]]:
    d = {p for p in diff_paths(a, b) if not any(p == i or p.startswith(i + "/") for i in ignore)}
    return not d, sorted(d)[:5]


def volatile(ref1: dict, ref2: dict) -> set[str]:
    """Paths that differ between two clean runs; DB tables differing only in time columns
    included."""
    return diff_paths(ref1, ref2)


def rerun_ok(t: dict) -> bool:
    """The rerun finished it, or (the job had finished before the kill, or was killed while
    exiting after its completion marker was written) refused as already done."""
    if t["rerun_exit"] == 0:
        return True
    return (
        t["marker_after_kill"]
        and t["rerun_exit"] == 2
        and not t["half_written_taken_as_finished"]
        and any(refusal(line) for line in t.get("stderr", []))
    )


def refusal(line: str) -> bool:
    """The one line a finished artifact's rerun prints when it will not overwrite it without
    --force (train says "already", graph and probe "exists; pass --force")."""
    return "already" in line or "pass --force" in line


def final_ok(t: dict) -> bool:
    """The artifact equals the uninterrupted run's: after the rerun, or (finished before the
    kill) as checked right after the kill."""
    return t["final_equal"] or (
        rerun_ok(t)
        and t["rerun_exit"] != 0
        and t["marker_after_kill"]
        and not t["half_written_taken_as_finished"]
    )


# --- one stage -----------------------------------------------------------------------------------
def prepare(stage: Stage, base: dict, refs: dict[str, Path], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if stage.needs:
        src = refs[stage.needs] / STAGES[stage.needs].artifact
        shutil.copytree(src, folder / STAGES[stage.needs].artifact)


# Tables a stage may legitimately add rows to when it writes into an existing atlas.db (explain's
# own output, bookkeeping); everything else in the DB is an earlier stage's artifact.
OWN_TABLES = {"explanations", "scores", "meta"}


def tree_hash(root: Path) -> dict[str, object]:
    """Byte hashes of files; for SQLite files, their content outside OWN_TABLES plus quick_check."""
    out = {}
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.name.endswith(("-wal", "-shm", ".lock")):
            continue
        rel = str(p.relative_to(root))
        if p.suffix == ".db":
            con = sqlite3.connect(f"file:{p}?mode=ro", uri=True)
            try:
                tables = [
                    r[0]
                    for r in con.execute(
                        "SELECT name FROM sqlite_master WHERE type='table' "
                        "AND name NOT LIKE 'search%'"
                    )
                    if r[0] not in OWN_TABLES
                ]
                out[rel] = {
                    "quick_check": con.execute("PRAGMA quick_check").fetchall(),
                    **{
                        t: hashlib.sha256(
                            repr(sorted(con.execute(f"SELECT * FROM {t}").fetchall())).encode()
                        ).hexdigest()
                        for t in tables
                    },
                }
            except sqlite3.DatabaseError as e:
                out[rel] = f"unreadable: {e}"
            finally:
                con.close()
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def disk_full_trial(stage: Stage, base: dict, refs: dict[str, Path], work: Path) -> dict:
    mnt = work / f"disk-{stage.name}"
    mnt.mkdir(parents=True)
    staging = work / f"staging-{stage.name}"
    prepare(stage, base, refs, staging)
    used = sum(p.stat().st_blocks * 512 for p in staging.rglob("*") if p.is_file())
    margin = stage.extra.get("disk_margin_kb", 16)
    size_kb = used // 1024 + (4 * len(list(staging.rglob("*"))) + margin if margin else 4)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        return {"result": "skipped", "why": (r.stderr.strip() or "mount failed")[:200]}
    try:
        try:
            for p in staging.iterdir():
                (shutil.copytree if p.is_dir() else shutil.copy2)(p, mnt / p.name)
        except OSError:
            return {"result": "skipped", "why": "inputs did not fit"}
        before = tree_hash(mnt)
        code, err, _ = run_cmd(stage.argv(base, mnt))
        lines = [x for x in err.replace("\r", "\n").splitlines() if x.strip() and "%|" not in x]
        after = tree_hash(mnt)
        kept = all(after.get(k) == v for k, v in before.items())
        ok = code == 2 and len(lines) == 1 and "Traceback" not in err and kept
        return {
            "result": "ok" if ok else "FAIL",
            "exit": code,
            "stderr": lines[-3:],
            "inputs_intact": kept,
            "tmpfs_kb": size_kb,
        }
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def run_stage(
    stage: Stage,
    base: dict,
    refs: dict[str, Path],
    work: Path,
    trials: int,
    seed: int,
    disk: bool = True,
) -> dict:
    # Two clean references: what differs between them is the stage's own nondeterminism.
    ref_dirs = []
    walls = []
    for i in (1, 2):
        d = work / f"ref{i}-{stage.name}"
        prepare(stage, base, refs, d)
        code, err, wall = run_cmd(stage.argv(base, d))
        if code != 0:
            return {
                "stage": stage.name,
                "error": f"reference run failed ({code}): {err.strip()[-500:]}",
                "n": 0,
                "trials": [],
            }
        ref_dirs.append(d)
        walls.append(wall)
    refs[stage.name] = ref_dirs[0]
    ref = snapshot(ref_dirs[0] / stage.artifact)
    ignore = volatile(ref, snapshot(ref_dirs[1] / stage.artifact))
    wall = min(walls)
    r = random.Random(f"{seed}-{stage.name}")
    rows = []
    for t in range(trials):
        folder = work / f"trial-{stage.name}-{t}"
        prepare(stage, base, refs, folder)
        delay = r.uniform(0.05, 1.0) * wall
        was_running = killed_run(stage.argv(base, folder), delay)
        marker = stage.finished(folder)
        half_taken = False
        if marker:
            ok, _ = equal(ref, snapshot(folder / stage.artifact), ignore)
            half_taken = not ok
        code, err, _ = run_cmd(stage.argv(base, folder))
        # A job that had already finished (or only had to exit) when the kill came: `train`
        # refuses to overwrite a finished dictionary without --force (exit 2, one line), by
        # design; its artifact is what must equal the reference.
        done_before = marker and not half_taken  # finished (maybe killed while exiting)
        refused_done = code == 2 and done_before and refusal(err)
        same, where = (
            equal(ref, snapshot(folder / stage.artifact), ignore)
            if code == 0 or refused_done
            else (False, [])
        )
        rows.append(
            {
                "trial": t,
                "delay_s": round(delay, 2),
                "killed_while_running": was_running,
                "marker_after_kill": marker,
                "half_written_taken_as_finished": half_taken,
                "rerun_exit": code,
                "rerun_refused_as_already_finished": refused_done,
                "final_equal": same,
                "diff": where,
                "stderr": err.strip().splitlines()[-1:] if code else [],
            }
        )
        shutil.rmtree(folder, ignore_errors=True)
    out = {
        "stage": stage.name,
        "command": "lmscope " + " ".join(stage.argv(base, Path("OUT"))),
        "reference_wall_s": round(wall, 2),
        "ignored_fields": sorted(ignore)[:20],
        "trials": rows,
        "n": len(rows),
        "killed_while_running": sum(x["killed_while_running"] for x in rows),
        "half_written_taken": sum(x["half_written_taken_as_finished"] for x in rows),
        "rerun_ok": sum(rerun_ok(x) for x in rows),
        "final_equal": sum(final_ok(x) for x in rows),
    }
    if disk:
        out["disk_full"] = disk_full_trial(stage, base, refs, work)
    return out


def print_table(results: list[dict]) -> int:
    bad = 0
    print(
        "| stage | trials | killed while running | marker present after kill | half-written taken "
        "as "
        "finished | rerun finishes | final = uninterrupted | full disk: exit 2, one line, inputs "
        "intact |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| {r['stage']} | error: {r['error'][:200]} |")
            bad += 1
            continue
        disk = r.get("disk_full", {}).get("result", "not run")
        markers = sum(x["marker_after_kill"] for x in r["trials"])
        print(
            f"| {r['stage']} | {r['n']} | {r['killed_while_running']} | {markers} | "
            f"{r['half_written_taken']} | "
            f"{sum(rerun_ok(x) for x in r['trials'])} | {sum(final_ok(x) for x in r['trials'])} | "
            f"{disk} |"
        )
        bad += r["half_written_taken"] + sum(not (rerun_ok(x) and final_ok(x)) for x in r["trials"])
        bad += disk == "FAIL"
    return 1 if bad else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-disk", action="store_true", help="skip the full-disk trials")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "kill.json"))
    ap.add_argument(
        "--table",
        default=None,
        metavar="KILL_JSON",
        help="only print the table of an earlier run's results file",
    )
    args = ap.parse_args()
    if args.table:
        return print_table(json.loads(Path(args.table).read_text())["results"])
    names = args.stages.split(",")
    for n in names:
        if n not in STAGES:
            raise SystemExit(f"unknown stage {n!r} (stages: {', '.join(STAGES)})")
    # Stages a requested stage needs run first (their references are its inputs).
    wanted = set(names)
    for n in names:
        while STAGES[n].needs:
            n = STAGES[n].needs
            wanted.add(n)
    order = [n for n in STAGES if n in wanted]
    results = []
    with tempfile.TemporaryDirectory(prefix="lmscope-kill-") as tmp:
        work = Path(tmp)
        base = make_base(work)
        refs: dict[str, Path] = {}
        for n in order:
            trials = args.trials if n in names else 0
            t0 = time.monotonic()
            res = run_stage(
                STAGES[n], base, refs, work, trials, args.seed, disk=not args.no_disk and n in names
            )
            res["bench_wall_s"] = round(time.monotonic() - t0, 1)
            if n in names:
                results.append(res)
                print(json.dumps({k: v for k, v in res.items() if k != "trials"}), flush=True)
                # Written after every stage: a long run that is stopped keeps what it measured.
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                Path(args.out).write_text(
                    json.dumps(
                        {"command": " ".join(sys.argv), "seed": args.seed, "results": results},
                        indent=2,
                        default=str,
                    )
                )
    return print_table(results)


if __name__ == "__main__":
    sys.exit(main())
