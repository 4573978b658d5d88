"""Screenshot an atlas's graph page in headless Chromium (for docs/trace.md).

    .venv/bin/python scripts/graph_screenshot.py ATLAS GRAPH.json OUT.png [--hover HOOK/IDX]

Serves ATLAS with the viewer's own server (Reader.open + make_server, as `lmscope serve`) on a
free loopback port, opens #/graph/GRAPH.json in
Debian's /usr/bin/chromium (playwright, the 'test' extra), hovers the feature node given (or
the most influential feature), and writes a full-page PNG.
"""

from __future__ import annotations

import argparse
import json
import threading
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("atlas")
    ap.add_argument("graph", help="file name under ATLAS/graphs/")
    ap.add_argument("out")
    ap.add_argument(
        "--hover", default=None, help="feature to hover, HOOK/IDX (default: the most influential)"
    )
    ap.add_argument("--edges", default=None, help="edges to draw: 100, 300, 1000 or 3000")
    a = ap.parse_args()
    from playwright.sync_api import sync_playwright

    data = json.loads((Path(a.atlas) / "graphs" / a.graph).read_text())
    feats = [n for n in data["nodes"] if n.get("lmscope_hook") is not None]
    if a.hover:
        hook, idx = a.hover.rsplit("/", 1)
        node = next(
            n for n in feats if n["lmscope_hook"] == hook and n["lmscope_feature"] == int(idx)
        )
    else:
        # `influence` is cumulative (circuit-tracer): the most influential node has the smallest.
        node = min(feats, key=lambda n: n.get("influence") or 1.0) if feats else None
    from lmscope.read import Reader
    from lmscope.viewer.server import make_server

    srv = make_server(Reader.open(a.atlas), port=0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{srv.server_address[1]}/"
    try:
        with sync_playwright() as p:
            b = p.chromium.launch(
                executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"]
            )
            page = b.new_page(viewport={"width": 1360, "height": 1500})
            page.goto(base + "#/graph/" + a.graph)
            page.wait_for_selector("#graph-svg")
            if a.edges:
                page.select_option("#edge-limit", a.edges)
            if node is not None:
                page.locator(f"#graph-svg [data-node='{node['node_id']}']").hover()
                page.locator("#graph-tip").wait_for(state="visible")
            page.screenshot(path=a.out, full_page=True)
            b.close()
    finally:
        srv.shutdown()
        srv.server_close()
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
