"""Screenshot an atlas's scan page (the all-layer brain map) in headless Chromium (docs/viewer.md).

    .venv/bin/python scripts/scan_screenshot.py ATLAS "PROMPT" OUT.png [--cell ROW POS]

Serves ATLAS with the viewer's own server (Reader.open + make_server, as `lmscope serve`) on a
free loopback port, scans PROMPT on the #/scan page in Debian's /usr/bin/chromium (playwright,
the 'test' extra), clicks the cell (layer row ROW, token POS; default: the hottest non-BOS cell)
so its layer's features show, and writes a PNG of the viewport.
"""

from __future__ import annotations

import argparse
import threading

CHROMIUM = "/usr/bin/chromium"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("atlas")
    ap.add_argument("prompt")
    ap.add_argument("out")
    ap.add_argument("--cell", nargs=2, type=int, default=None, metavar=("ROW", "POS"))
    ap.add_argument("--width", type=int, default=1400, help="viewport width in pixels")
    ap.add_argument("--height", type=int, default=1000, help="viewport height in pixels")
    a = ap.parse_args()
    from playwright.sync_api import sync_playwright

    from lmscope.read import Reader
    from lmscope.viewer.server import make_server

    reader = Reader.open(a.atlas)
    if a.cell is None:  # the hottest non-BOS cell (the scan is the one the page will show)
        res = reader.scan(a.prompt)
        start = 1 if res.has_bos and len(res.tokens) > 1 else 0
        v, r, p = max(
            (v, r, p) for r, row in enumerate(res.brain) for p, v in enumerate(row) if p >= start
        )
        a.cell = (r, p)
    srv = make_server(reader, port=0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{srv.server_address[1]}/"
    try:
        with sync_playwright() as pw:
            b = pw.chromium.launch(
                executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"]
            )
            page = b.new_page(viewport={"width": a.width, "height": a.height})
            page.goto(base + "#/scan")
            page.wait_for_selector("#prompt")
            page.fill("#prompt", a.prompt)
            page.click("#scan-btn")
            page.wait_for_selector("#brain .cell", timeout=120_000)
            row, pos = a.cell
            page.locator(f"#brain .cell[data-row='{row}'][data-pos='{pos}']").click()
            page.wait_for_selector("#cell-panel")
            page.screenshot(path=a.out)  # the viewport: map and cell panel, not the page's tail
            b.close()
    finally:
        srv.shutdown()
        srv.server_close()
    print(f"wrote {a.out} (cell row {a.cell[0]}, token {a.cell[1]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
