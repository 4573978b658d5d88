"""Load test of `lmscope serve` on loopback: concurrent clients, then the same with slow clients.

    .venv/bin/python bench/bench_serve_load.py                        # 8 and 32 clients, 60 s each
    .venv/bin/python bench/bench_serve_load.py --clients 8 --seconds 30 --atlas ATLAS

Starts a real `lmscope serve ATLAS --port 0` process (the demo atlas of lmscope.read.demo unless
--atlas is given), then runs N client threads for a fixed duration, each on a keep-alive
connection, looping over a seeded mix of requests:

    50% feature pages   GET  /api/feature?id=HOOK/IDX     (atlas DB)
    25% label search    GET  /api/search?mode=labels&q=W  (SQLite FTS5)
    25% scans           POST /api/scan {"prompt": 6-16 words}   (model forward + dictionaries)

and reports requests/s, p50/p95/p99 latency, errors (no response / connection failures) and 5xx.
The "slow" rounds add, for the whole duration, clients that attack the server's deadlines: 8
connections that send nothing, 8 that send headers one byte per second (slowloris) and 4 that
send a 2 kB POST body one byte per second; each reconnects as soon as the server cuts it off. The
bar:
zero errors and zero 5xx for the normal clients in every round.

Bounded: every loop stops at its deadline, the server is terminated at the end, and nothing but
127.0.0.1 is touched. Results go to bench/results/serve_load.json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORDS = (
    "the horse ran to the big red house and the dog sat on a cat in the city while "
    "she sees many small birds fly over green fields"
).split()


def start_server(atlas: Path, max_tokens: int = 64) -> tuple[subprocess.Popen, str, int]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lmscope",
            "serve",
            str(atlas),
            "--port",
            "0",
            "--max-tokens",
            str(max_tokens),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    line = proc.stdout.readline()
    m = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
    if not m:
        proc.kill()
        raise SystemExit(f"server did not start: {line!r} {proc.stderr.read()[-2000:]}")
    return proc, "127.0.0.1", int(m.group(1))


def feature_ids(atlas: Path) -> list[str]:
    """Feature ids of the atlas (at most 256 per dictionary), from its manifest."""
    m = json.loads((Path(atlas) / "atlas.json").read_text())
    return [
        f"{h}/{i}" for h, d in m["dictionaries"].items() for i in range(min(int(d["d_sae"]), 256))
    ]


def client(host, port, ids, seed, deadline, out: list) -> None:
    """One normal client: a seeded request mix on a keep-alive connection until `deadline`."""
    r = random.Random(seed)
    conn = None
    while time.monotonic() < deadline:
        x = r.random()
        if x < 0.5:
            method, path, body = "GET", f"/api/feature?id={r.choice(ids)}", None
            kind = "feature"
        elif x < 0.75:
            method, path, body = "GET", f"/api/search?mode=labels&q={r.choice(WORDS)}", None
            kind = "search"
        else:
            prompt = " ".join(r.choice(WORDS) for _ in range(r.randint(6, 16)))
            method, path, body = "POST", "/api/scan", json.dumps({"prompt": prompt, "top_k": 5})
            kind = "scan"
        t0 = time.perf_counter()
        try:
            if conn is None:
                conn = http.client.HTTPConnection(host, port, timeout=60)
            conn.request(
                method,
                path,
                body=body,
                headers={"Content-Type": "application/json"} if body else {},
            )
            resp = conn.getresponse()
            resp.read()
            status = resp.status
            if resp.getheader("Connection", "").lower() == "close":
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException):
            status = -1  # an error: no response
            if conn is not None:
                conn.close()
            conn = None
        out.append((kind, status, time.perf_counter() - t0))
    if conn is not None:
        conn.close()


def slow_client(host, port, mode, deadline, counts: dict, lock) -> None:
    """Attack the deadlines until `deadline`; count how often the server cut us off."""
    while time.monotonic() < deadline:
        try:
            s = socket.create_connection((host, port), timeout=2)
        except OSError:
            time.sleep(0.5)
            continue
        payload = {
            "silent": b"",
            "slowloris": b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * 10_000,
            # Within the body size limit, so that it is the rate deadline that cuts it off.
            "slowbody": b"POST /api/scan HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
            b"application/json\r\nContent-Length: 2000\r\n\r\n" + b" " * 2000,
        }[mode]
        head = payload.index(b"\r\n\r\n") + 4 if mode == "slowbody" else 0
        cut = False
        try:
            if head:
                s.sendall(payload[:head])
            i = head
            while time.monotonic() < deadline:
                if mode == "silent" or i >= len(payload):
                    s.settimeout(max(0.1, min(2, deadline - time.monotonic())))
                    try:
                        if s.recv(4096) == b"":
                            cut = True
                            break
                    except TimeoutError:
                        continue
                else:
                    s.sendall(payload[i : i + 1])
                    i += 1
                    time.sleep(1.0)
        except OSError:
            cut = True
        finally:
            s.close()
        with lock:
            counts[mode] = counts.get(mode, 0) + int(cut)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))] if xs else float("nan")


def round_(host, port, ids, n_clients: int, seconds: float, slow: bool, seed: int) -> dict:
    deadline = time.monotonic() + seconds
    results: list[list] = [[] for _ in range(n_clients)]
    threads = [
        threading.Thread(
            target=client, args=(host, port, ids, seed * 1000 + i, deadline, results[i])
        )
        for i in range(n_clients)
    ]
    cuts: dict[str, int] = {}
    lock = threading.Lock()
    if slow:
        for mode, n in (("silent", 8), ("slowloris", 8), ("slowbody", 4)):
            threads += [
                threading.Thread(target=slow_client, args=(host, port, mode, deadline, cuts, lock))
                for _ in range(n)
            ]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 120)
    wall = time.monotonic() - t0
    rows = [x for r in results for x in r]
    lat = [x[2] * 1000 for x in rows if 200 <= x[1] < 500]
    out = {
        "clients": n_clients,
        "slow_clients": 20 if slow else 0,
        "seconds": round(wall, 1),
        "requests": len(rows),
        "rps": round(len(rows) / wall, 1),
        "p50_ms": round(pct(lat, 50), 1),
        "p95_ms": round(pct(lat, 95), 1),
        "p99_ms": round(pct(lat, 99), 1),
        "errors": sum(1 for x in rows if x[1] < 0),
        "5xx": sum(1 for x in rows if x[1] >= 500),
        "4xx": sum(1 for x in rows if 400 <= x[1] < 500),
        "by_kind": {
            k: {
                "n": sum(1 for x in rows if x[0] == k),
                "p50_ms": round(pct([x[2] * 1000 for x in rows if x[0] == k], 50), 1),
            }
            for k in ("feature", "search", "scan")
        },
        "slow_clients_cut_off": cuts,
    }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--atlas", default=None, help="atlas folder (default: build the demo atlas)")
    ap.add_argument(
        "--clients", default="8,32", help="comma-separated client counts (default: 8,32)"
    )
    ap.add_argument(
        "--seconds", type=float, default=60.0, help="duration of each round (default: 60)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "serve_load.json"))
    args = ap.parse_args()
    tmp = None
    if args.atlas is None:
        from lmscope.read.demo import build_demo_atlas

        tmp = tempfile.TemporaryDirectory()
        atlas = build_demo_atlas(Path(tmp.name) / "demo")
    else:
        atlas = Path(args.atlas)
    proc, host, port = start_server(atlas)
    rounds = []
    try:
        ids = feature_ids(atlas)
        for slow in (False, True):
            for n in (int(c) for c in args.clients.split(",")):
                r = round_(host, port, ids, n, args.seconds, slow, args.seed)
                r["atlas"] = "demo (tiny llama)" if args.atlas is None else str(args.atlas)
                rounds.append(r)
                print(json.dumps(r), flush=True)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        if tmp is not None:
            tmp.cleanup()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps(
            {"command": " ".join(sys.argv), "cpus": os.cpu_count(), "rounds": rounds}, indent=2
        )
    )
    print(
        "| clients | slow clients | s | requests | req/s | p50 ms | p95 ms | p99 ms | errors | "
        "5xx |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rounds:
        print(
            f"| {r['clients']} | {r['slow_clients']} | {r['seconds']} | {r['requests']} | "
            f"{r['rps']} | "
            f"{r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | {r['errors']} | {r['5xx']} |"
        )
    bad = sum(r["errors"] + r["5xx"] for r in rounds)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
