"""Responsiveness of the scan: one 64-token prompt through the default model and an atlas.

Measures (issue 6 target: a 64-token scan in < 2 s on 2 CPU cores):
  engine    Reader.scan in process (model forward to the deepest dictionary + encode + top-k)
  http-1    POST /api/scan against `lmscope serve` on loopback, one client, sequential
  http-4    the same with 4 concurrent clients (bounded: --requests per client), p50/p95
            latency per request and throughput

    .venv/bin/python bench/bench_scan.py                      # random 4608-latent TopK on
    blocks.15.resid_post
    .venv/bin/python bench/bench_scan.py --atlas atlas/       # a real atlas
Writes bench/results/scan.json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

PROMPT = (
    "The horse galloped across the field while the farmer watched from the old wooden fence. "
    "Clouds gathered over the hills, and the first drops of rain began to fall on the barn roof, "
    "so the children ran inside to find their grandmother baking bread in the warm kitchen near "
    "the window that looked over the river and the town beyond it"
)


def random_atlas(root: Path, model: str, hook: str, d_sae: int, k: int) -> Path:
    """An atlas with one random TopK dictionary (no training needed for a latency benchmark)."""
    from lmscope.dictionaries import DictionaryConfig, build
    from lmscope.layout import AtlasLayout
    from lmscope.models import load_model

    layout = AtlasLayout(root)
    if layout.exists() and hook in layout.dictionaries():
        return root
    lm = load_model(model)
    cfg = DictionaryConfig(
        d_in=lm.d_model, d_sae=d_sae, arch="topk", k=k, hook_name=hook, model_name=model
    )
    build(cfg).save(layout.dictionary_dir(hook))
    layout.add_dictionary(hook, model=model, arch="topk", d_sae=d_sae)
    return root


def prompt_of(lm, n_tokens: int) -> str:
    """A prompt that tokenizes to exactly n_tokens (BOS included)."""
    ids = lm.tokenizer(PROMPT * 4, add_special_tokens=False)["input_ids"][: n_tokens - 1]
    text = lm.tokenizer.decode(ids)
    assert lm.to_tokens(text).shape[1] == n_tokens, "prompt does not round-trip to the token count"
    return text


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def summary(xs: list[float]) -> dict:
    return {
        "n": len(xs),
        "p50_s": round(pct(xs, 0.5), 4),
        "p95_s": round(pct(xs, 0.95), 4),
        "mean_s": round(statistics.mean(xs), 4),
        "max_s": round(max(xs), 4),
    }


def post(host: str, port: int, body: dict) -> float:
    t = time.perf_counter()
    conn = http.client.HTTPConnection(host, port, timeout=120)
    conn.request(
        "POST", "/api/scan", body=json.dumps(body), headers={"Content-Type": "application/json"}
    )
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {data[:200]!r}")
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--atlas", default=None, help="an existing atlas (default: build a random one in /tmp)"
    )
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--hook", default="blocks.15.resid_post")
    ap.add_argument("--d-sae", type=int, default=4608)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=20, help="sequential scans (engine and http-1)")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--requests", type=int, default=10, help="requests per concurrent client")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of the server (lmscope serve --threads)",
    )
    ap.add_argument("--out", default="bench/results/scan.json")
    args = ap.parse_args()

    from lmscope.read import Reader

    atlas = (
        Path(args.atlas)
        if args.atlas
        else random_atlas(
            Path("/tmp/lmscope-bench-scan-atlas"), args.model, args.hook, args.d_sae, args.k
        )
    )
    t = time.perf_counter()
    reader = Reader.open(atlas)
    load_s = time.perf_counter() - t
    prompt = prompt_of(reader.lm, args.tokens)
    engines = {}
    default_threads = torch.get_num_threads()
    for nt in sorted({1, default_threads}):
        torch.set_num_threads(nt)
        reader.scan(prompt)  # warm-up
        engine = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            reader.scan(prompt)
            engine.append(time.perf_counter() - t)
        engines[f"threads_{nt}"] = summary(engine)
        print(f"engine threads={nt}  {engines[f'threads_{nt}']}", flush=True)
    torch.set_num_threads(default_threads)
    del reader

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lmscope",
            "serve",
            str(atlas),
            "--port",
            "0",
            "--threads",
            str(args.threads),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        m = re.search(r"http://(127\.0\.0\.1):(\d+)/", line)
        if not m:
            raise SystemExit(f"server did not start: {line!r} {proc.stderr.read()}")
        host, port = m.group(1), int(m.group(2))
        body = {"prompt": prompt, "top_k": 5}
        post(host, port, body)  # warm-up
        single = [post(host, port, body) for _ in range(args.repeats)]
        print(f"http-1  {summary(single)}", flush=True)
        lat: list[float] = []
        lock = threading.Lock()

        def client() -> None:
            for _ in range(args.requests):
                dt = post(host, port, body)
                with lock:
                    lat.append(dt)

        t = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wall = time.perf_counter() - t
        conc = {
            **summary(lat),
            "clients": args.clients,
            "wall_s": round(wall, 3),
            "scans_per_s": round(len(lat) / wall, 3),
        }
        print(f"http-{args.clients}  {conc}", flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    result = {
        "bench": "scan",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "torch": torch.__version__,
        },
        "atlas": str(atlas),
        "model": args.model,
        "dictionaries": args.hook if not args.atlas else "atlas",
        "d_sae": args.d_sae,
        "k": args.k,
        "tokens": args.tokens,
        "atlas_load_s": round(load_s, 2),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "server_threads": args.threads,
        "engine": engines,
        "http_1": summary(single),
        f"http_{args.clients}": conc,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
