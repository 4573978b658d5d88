"""End to end in a real headless Chromium: `lmscope serve` on a tiny atlas, driven by Playwright.

Type a prompt, see the heatmap, click a token, click through to the feature page, run a search,
open the overview; an HTML-looking token shows as text and never runs. Screenshots of each page
go to a temp folder, or to docs/screenshots/ with LMSCOPE_SCREENSHOTS=docs/screenshots.
Uses Debian's /usr/bin/chromium (never a downloaded browser).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lmscope.read.demo import HOOKS, HTML_TOKEN, PLANTED, PLANTED_LABEL, build_demo_atlas

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} missing (apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def viewer(tmp_path_factory):
    """A real `lmscope serve` process on a free loopback port; yields its base URL."""
    root = build_demo_atlas(tmp_path_factory.mktemp("atlas") / "demo")
    proc = subprocess.Popen([sys.executable, "-m", "lmscope", "serve", str(root), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        m = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
        assert m, f"no URL in {line!r}; stderr: {proc.stderr.read() if proc.poll() is not None else ''}"
        yield m.group(1)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def page(viewer):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install 'lmscope[test]' (playwright)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pg = browser.new_page(viewport={"width": 1360, "height": 860})
        pg.problems = []
        pg.on("console", lambda m: pg.problems.append(m.text) if m.type == "error" else None)
        pg.on("pageerror", lambda e: pg.problems.append(str(e)))
        pg.on("dialog", lambda d: (pg.problems.append(f"dialog: {d.message}"), d.dismiss()))
        # Offline: any request that leaves the viewer's origin is a failure (no CDN).
        pg.offsite = []
        pg.route("**/*", lambda route: route.continue_() if route.request.url.startswith(viewer)
                 else (pg.offsite.append(route.request.url), route.abort()))
        yield pg
        browser.close()


def shot(pg, name):
    folder = Path(os.environ.get("LMSCOPE_SCREENSHOTS") or pg.shots_dir)
    folder.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(folder / f"{name}.png"), full_page=True)


@pytest.fixture(autouse=True)
def _shots_dir(page, tmp_path_factory):
    if not hasattr(page, "shots_dir"):
        page.shots_dir = tmp_path_factory.mktemp("screenshots")


def test_scan_heatmap_token_and_feature_page(page, viewer):
    page.goto(viewer)
    page.wait_for_selector("#prompt")
    page.fill("#prompt", "the horse galloped to the big river")
    page.click("#scan-btn")
    page.wait_for_selector("#brain .cell")
    n_tokens = 8  # <bos> + 7 words
    assert page.locator("#brain .cell").count() == len(HOOKS) * n_tokens
    heads = page.locator("#brain .tokhead")
    assert heads.nth(2).text_content() == "horse"
    # The hottest cell of each row is the planted word (background = the heat ramp's red end).
    assert page.locator("#brain .cell[data-pos='2']").first.evaluate("e => e.style.background") == "rgb(255, 70, 20)"
    heads.nth(2).click()  # pin the token
    panel = page.locator("#token-panel")
    assert "horse" in panel.text_content()
    first = panel.locator("a.feat").first
    assert first.text_content() == f"{HOOKS[0]}/{PLANTED}"
    assert PLANTED_LABEL in panel.text_content()  # the label, as text
    assert "(unlabeled)" in panel.text_content()  # features without explanations
    shot(page, "scan")
    first.click()
    page.wait_for_selector("#feature-title")
    assert page.locator("#feature-title").text_content() == f"{HOOKS[0]}/{PLANTED}"
    assert page.locator("table.up tr").count() == 10  # promoted tokens
    assert page.locator(".bigLabel").text_content() == PLANTED_LABEL
    assert page.locator("main b").count() == 0  # the HTML-looking label never became markup
    examples = page.locator("#examples .example")
    assert examples.count() > 0
    for i in range(examples.count()):  # the hottest token of every top example is "horse"
        assert examples.nth(i).locator(".etok.on").first.text_content() == "horse"
    assert page.locator("#quantiles .example").count() > 0
    assert "detection balanced_accuracy 1.00" in page.locator("#explanations").text_content()
    assert "density" in page.locator("main").text_content()
    shot(page, "feature")
    assert not page.problems and not page.offsite


def test_scan_with_vs(page, viewer):
    page.goto(viewer + "#/scan")
    page.fill("#prompt", "the horse ran")
    page.fill("#vs", "the dog ran")
    page.click("#scan-btn")
    page.wait_for_selector("#compare a.feat")
    assert page.locator("#compare a.feat").first.text_content().endswith(f"/{PLANTED}")
    assert not page.problems


def test_search_pages(page, viewer):
    page.goto(viewer + "#/search")
    page.wait_for_selector("#search-q")
    page.fill("#search-q", "a big horse")
    page.select_option("#search-mode", "text")
    page.click("#search-btn")
    page.wait_for_selector("#search-results")
    row = page.locator("#search-results tr").nth(1)
    assert f"/{PLANTED}" in row.text_content() and "horse" in row.text_content()
    shot(page, "search")
    page.fill("#search-q", "ponies")
    page.select_option("#search-mode", "labels")
    page.click("#search-btn")
    page.locator("#search-results", has_text="label:").wait_for()
    assert page.locator("#search-results a.feat").count() == len(HOOKS)
    shot(page, "search-labels")
    page.fill("#search-q", "zebra")
    page.click("#search-btn")
    # (wait_for_function would need eval, which the viewer's CSP forbids: good)
    page.locator("#search-out", has_text="No feature").wait_for()
    assert not page.problems


def test_overview_page(page, viewer):
    page.goto(viewer + "#/overview")
    page.wait_for_selector("#dict-table")
    assert page.locator("#dict-table tr").count() == 1 + len(HOOKS)
    assert page.locator("figure.hist").count() == len(HOOKS) + 1  # densities + one score distribution
    assert "explanations" in page.locator("#db-summary").text_content()
    shot(page, "overview")
    assert not page.problems


def test_html_looking_model_text_shows_as_text(page, viewer):
    page.goto(viewer + "#/scan")
    page.fill("#prompt", f"the horse {HTML_TOKEN} ran")
    page.click("#scan-btn")
    page.wait_for_selector("#brain .cell")
    heads = page.locator("#brain .tokhead")
    assert heads.nth(3).text_content() == HTML_TOKEN.replace(" ", "·")
    heads.nth(3).click()
    assert HTML_TOKEN.replace(" ", "·") in page.locator("#token-panel").text_content()
    page.wait_for_timeout(200)
    assert page.locator("main img").count() == 0  # the token never became an element
    assert not page.problems  # no alert() dialog, no script error


def test_bad_feature_shows_error_message(page, viewer):
    page.goto(viewer + "#/feature/" + "blocks.0.resid_post%2F9999")
    page.wait_for_selector(".error")
    assert "out of range" in page.locator(".error").text_content()
