"""`lmscope explain` end to end on a real atlas: features per second with the default scorers, cold
(the atlas's token embeddings computed) and warm (cached), optionally next to an older checkout's
code on the same features, and on the same atlas widened K times (K copies of its dictionaries over
the same corpus windows: a 30 x 4,608 = 138k-feature atlas like the whole-model one).

    PYTHONPATH=$PWD .venv/bin/python bench/bench_explain.py --atlas runs/smollm2-135m/atlas \\
        --work /tmp/bench-explain [--no-cold --warm-repeat 3 --workers 1,2 --embed-dtype float32]
        [--old-code /path/to/old/checkout --old-sample 500] [--replicate 30]
    # before/after in CPU seconds on one seeded sample, alternated, then compare_explain.py on the
    # last pair of copies (the --work folder is kept):
    PYTHONPATH=$PWD .venv/bin/python bench/bench_explain.py --atlas ATLAS --work /tmp/be \\
        --pairs 2 --old-code /path/to/old/checkout --sample 100 --workers 1

Each run reports wall seconds AND the process's CPU seconds (features per CPU second is the
figure that survives a shared, loaded machine; with --workers the workers' CPU is included);
--warm-repeat N adds the median of N warm runs; --workers 1,2 alternates the warm runs between
1 and 2 worker processes.

Works on copies under --work (the atlas given is only read). Prints one JSON line per run and
appends them to bench/results/explain.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

from lmscope.explain import ExplainConfig, explain_atlas


def copy_atlas(src: Path, dst: Path) -> Path:
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    src_db = sqlite3.connect(f"file:{src / 'atlas.db'}?mode=ro", uri=True)
    out = sqlite3.connect(dst / "atlas.db")
    src_db.backup(out)  # a consistent copy even while another process reads the source
    src_db.close()
    out.execute("DELETE FROM scores")
    out.execute("DELETE FROM explanations")
    out.execute("DELETE FROM search WHERE source = 'explanation'")
    out.execute("UPDATE features SET label = NULL")
    out.execute("DELETE FROM search WHERE source = 'label'")
    out.commit()
    out.close()
    shutil.copy(src / "atlas.json", dst / "atlas.json")
    return dst


def replicate(dst: Path, k: int) -> int:
    """Add k-1 copies of every dictionary (same windows, same corpus ids) under new hook names."""
    c = sqlite3.connect(dst / "atlas.db")
    dicts = c.execute(
        "SELECT id, hook, arch, d_sae, d_in, n_tokens, config FROM dictionaries"
    ).fetchall()
    for r in range(1, k):
        for did, hook, *rest in dicts:
            cur = c.execute(
                "INSERT INTO dictionaries (hook, arch, d_sae, d_in, n_tokens, config) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (f"{hook}.copy{r}", *rest),
            )
            new = cur.lastrowid
            c.execute(
                "INSERT INTO features SELECT ?, idx, density, fires, max_act, mean_act, "
                "mean_firing, "
                "histogram, label FROM features WHERE dictionary = ?",
                (new, did),
            )
            c.execute(
                "INSERT INTO example_sets SELECT ?, idx, kind, n, buckets, scores, token_index, "
                "acts FROM example_sets WHERE dictionary = ?",
                (new, did),
            )
            c.execute(
                "INSERT INTO logit_effects SELECT ?, idx, kind, rank, token_id, token, value "
                "FROM logit_effects WHERE dictionary = ?",
                (new, did),
            )
        c.commit()
    n = c.execute("SELECT COUNT(*) FROM features WHERE max_act > 0").fetchone()[0]
    c.close()
    return n


def _children_cpu() -> float:
    """CPU seconds of this process's finished children (the --workers processes)."""
    import resource

    u = resource.getrusage(resource.RUSAGE_CHILDREN)
    return u.ru_utime + u.ru_stime


def run_new(atlas: Path, label: str, **kw) -> dict:
    t, c, cc = time.perf_counter(), time.process_time(), _children_cpu()
    r = explain_atlas(ExplainConfig(atlas=str(atlas), **kw), progress=False)
    wall = time.perf_counter() - t
    cpu = time.process_time() - c + _children_cpu() - cc
    return {
        "run": label,
        "code": "new",
        "features": r.explained,
        "dictionaries": len(r.per_dictionary),
        "seconds": round(wall, 1),
        "cpu_seconds": round(cpu, 1),
        "features_per_s": round(r.explained / wall, 1),
        "features_per_cpu_s": round(r.explained / cpu, 1),
        "embedded_tokens": r.embedded_tokens,
        "embed_seconds": round(r.embed_seconds, 1),
        "workers": r.workers,
        "embed_dtype": r.embed_dtype,
    }


def run_old(code: Path, atlas: Path, sample: int) -> dict:
    cmd = [
        sys.executable,
        "-c",
        "import sys; from lmscope.cli import main; sys.exit(main(sys.argv[1:]))",
        "explain",
        str(atlas),
        "--no-progress",
        "--json",
    ] + (["--sample", str(sample)] if sample else [])
    t = time.perf_counter()
    out = subprocess.run(
        cmd, env={**os.environ, "PYTHONPATH": str(code)}, capture_output=True, text=True, check=True
    ).stdout
    wall = time.perf_counter() - t
    n = json.loads(out[out.index("{") :])["explained"]
    return {
        "run": f"old code, --sample {sample}" if sample else "old code",
        "code": str(code),
        "features": n,
        "seconds": round(wall, 1),
        "features_per_s": round(n / wall, 1),
    }


def run_code(code: Path, atlas: Path, label: str, sample: int, workers: int) -> dict:
    """`lmscope explain` with the checkout at `code` in a subprocess: wall and CPU seconds (the
    child and its worker processes, user + sys)."""
    cmd = [
        sys.executable,
        "-c",
        "import sys; from lmscope.cli import main; sys.exit(main(sys.argv[1:]))",
        "explain",
        str(atlas),
        "--no-progress",
        "--json",
        "--workers",
        str(workers),
    ] + (["--sample", str(sample)] if sample else [])
    t, cc = time.perf_counter(), _children_cpu()
    out = subprocess.run(
        cmd, env={**os.environ, "PYTHONPATH": str(code)}, capture_output=True, text=True, check=True
    ).stdout
    wall, cpu = time.perf_counter() - t, _children_cpu() - cc
    n = json.loads(out[out.index("{") :])["explained"]
    return {
        "run": label,
        "code": str(code),
        "features": n,
        "sample": sample,
        "workers": workers,
        "seconds": round(wall, 1),
        "cpu_seconds": round(cpu, 1),
        "features_per_s": round(n / wall, 1),
        "features_per_cpu_s": round(n / cpu, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--atlas", required=True, help="atlas folder (read only)")
    ap.add_argument("--work", required=True, help="scratch folder for the copies")
    ap.add_argument(
        "--old-code", default="", help="an older checkout to time on a copy (its own split/scorers)"
    )
    ap.add_argument(
        "--old-sample",
        type=int,
        default=0,
        help="features per dictionary for the old code (0 = all)",
    )
    ap.add_argument(
        "--replicate", type=int, default=0, help="also time a K-times wider copy of the atlas"
    )
    ap.add_argument(
        "--skip-base", action="store_true", help="only the --replicate / --old-code runs"
    )
    ap.add_argument(
        "--warm-repeat",
        type=int,
        default=1,
        help="warm runs (token embeddings cached) to take the median of",
    )
    ap.add_argument(
        "--workers",
        default="0",
        help="comma-separated --workers values; warm runs alternate between them (0 = auto)",
    )
    ap.add_argument("--embed-dtype", default="auto", help="--embed-dtype of every run")
    ap.add_argument("--no-cold", action="store_true", help="skip the cold run (needs a cache)")
    ap.add_argument(
        "--pairs",
        type=int,
        default=0,
        help="only: K alternated runs of --old-code and this code on --sample (warm: the atlas's "
        "cache/ copied), CPU seconds, then compare_explain.py on the last two copies",
    )
    ap.add_argument("--sample", type=int, default=0, help="--sample of the --pairs runs")
    a = ap.parse_args()
    src, work = Path(a.atlas), Path(a.work)
    ws = [int(w) for w in a.workers.split(",")]

    def kw(w: int) -> dict:
        return {"workers": w, "embed_dtype": a.embed_dtype}

    results = []

    def emit(r: dict) -> None:
        r = {
            **r,
            "atlas": str(src),
            "cpus": os.cpu_count(),
            "load1": round(os.getloadavg()[0], 2),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        print(json.dumps(r), flush=True)
        results.append(r)

    if a.pairs:
        here = Path(__file__).resolve().parents[1]
        runs: dict = {"old": [], "new": []}
        for i in range(a.pairs):
            for side, code in (("old", Path(a.old_code)), ("new", here)):
                dst = copy_atlas(src, work / side)
                shutil.copytree(src / "cache", dst / "cache")
                runs[side].append(run_code(code, dst, f"{side} {i + 1}", a.sample, ws[0]))
                emit(runs[side][-1])
        for side, rs in runs.items():
            med = {
                k: statistics.median(r[k] for r in rs)
                for k in ("seconds", "cpu_seconds", "features_per_s", "features_per_cpu_s")
            }
            emit({**rs[0], **med, "run": f"{side}, median of {len(rs)}"})
        cmp = subprocess.run(
            [
                sys.executable,
                str(here / "bench" / "compare_explain.py"),
                str(work / "old" / "atlas.db"),
                str(work / "new" / "atlas.db"),
            ],
            capture_output=True,
            text=True,
        )
        print(cmp.stdout.strip(), flush=True)
        a.skip_base = True
    if not a.skip_base:
        dst = copy_atlas(src, work / "new")
        if a.no_cold:
            shutil.copytree(src / "cache", dst / "cache")
        else:
            emit(run_new(dst, "cold (embeds the atlas text)", **kw(ws[0])))
        warm: dict = {w: [] for w in ws}
        for i in range(a.warm_repeat):
            for w in ws:  # alternating, so a change of the machine's load hits both alike
                copy_atlas(src, work / "new-warm")
                shutil.copytree(dst / "cache", work / "new-warm" / "cache")
                warm[w].append(
                    run_new(work / "new-warm", f"warm (token embeddings cached) {i + 1}", **kw(w))
                )
                emit(warm[w][-1])
        for runs in warm.values():
            if len(runs) > 1:
                med = {
                    k: statistics.median(r[k] for r in runs)
                    for k in ("seconds", "cpu_seconds", "features_per_s", "features_per_cpu_s")
                }
                emit({**runs[0], **med, "run": f"warm, median of {len(runs)}"})
    if a.old_code and not a.pairs:
        dst = copy_atlas(src, work / "old")
        emit(run_old(Path(a.old_code), dst, a.old_sample))
        if a.old_sample:
            emit(
                run_new(
                    copy_atlas(src, work / "new-sample"),
                    f"cold, --sample {a.old_sample}",
                    sample=a.old_sample,
                )
            )
    if a.replicate:
        dst = copy_atlas(src, work / "wide")
        n = replicate(dst, a.replicate)
        r = run_new(dst, f"cold, {a.replicate} x the dictionaries ({n} features)")
        emit(r)
    out = Path(__file__).parent / "results" / "explain.jsonl"
    out.parent.mkdir(exist_ok=True)
    with out.open("a") as f:
        for r in results:
            f.write(json.dumps(r) + "\n")
    if not a.pairs:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
