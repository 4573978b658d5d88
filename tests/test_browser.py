"""End to end in a real headless Chromium: `lmscope serve` on a tiny atlas, driven by Playwright.

Type a prompt, see the heatmap, click a token, click through to the feature page, run a search,
open the overview; an HTML-looking token shows as text and never runs. On a second tiny atlas
with a transcoder for every layer: open a saved attribution graph, hover and click its nodes,
build one from the page, and steer a prompt. Screenshots of each page go to a temp folder, or to
docs/screenshots/ with LMSCOPE_SCREENSHOTS=docs/screenshots.
Uses Debian's /usr/bin/chromium (never a downloaded browser).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lmscope.read.demo import HOOKS, HTML_TOKEN, PLANTED, PLANTED_LABEL

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} missing (apt-get install chromium)"
    ),
]


def serve(root):
    """A real `lmscope serve` process on a free loopback port: (process, base URL)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmscope", "serve", str(root), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    m = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
    if not m:
        proc.kill()
        pytest.fail(f"no URL in {line!r}; stderr: {proc.stderr.read()}")
    return proc, m.group(1)


@pytest.fixture(scope="module")
def viewer(demo_atlas_root):
    """`lmscope serve` on the demo atlas (planted "horse" feature, atlas DB); yields its base
    URL."""
    proc, url = serve(demo_atlas_root)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="pip install 'lmscope[test]' (playwright)"
    )
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def new_page(browser, base):
    pg = browser.new_page(viewport={"width": 1360, "height": 860})
    pg.problems = []
    pg.on("console", lambda m: pg.problems.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: pg.problems.append(str(e)))
    pg.on("dialog", lambda d: (pg.problems.append(f"dialog: {d.message}"), d.dismiss()))
    # Offline: any request that leaves the viewer's origin is a failure (no CDN).
    pg.offsite = []
    pg.route(
        "**/*",
        lambda route: (
            route.continue_()
            if route.request.url.startswith(base)
            else (pg.offsite.append(route.request.url), route.abort())
        ),
    )
    return pg


@pytest.fixture(scope="module")
def page(browser, viewer):
    pg = new_page(browser, viewer)
    yield pg
    pg.close()


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
    # The hottest non-BOS cell of each row is the planted word (the heat ramp's green channel
    # falls from 250 to 70 as activity rises).
    for r in range(len(HOOKS)):
        greens = [
            int(
                re.findall(
                    r"\d+",
                    page.locator(f"#brain .cell[data-row='{r}'][data-pos='{p}']").evaluate(
                        "e => e.style.background"
                    ),
                )[1]
            )
            for p in range(1, n_tokens)
        ]
        assert greens.index(min(greens)) + 1 == 2, greens
    assert page.locator("#brain .fit").count() == len(HOOKS)  # each row's fit beside it
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


def test_clicking_a_cell_shows_that_layers_features_at_that_token(page, viewer):
    """Click (layer 1, token 'horse'): the cell panel lists exactly the API's top features of
    that layer at that token, with labels and links to the feature pages."""
    import json
    import urllib.request

    prompt = "the horse galloped to the big river"
    req = urllib.request.Request(
        viewer + "api/scan",
        data=json.dumps({"prompt": prompt, "top_k": 5}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        want = json.loads(r.read())["top"][HOOKS[1]][2]
    page.goto(viewer + "#/scan")
    page.fill("#prompt", prompt)
    page.click("#scan-btn")
    page.wait_for_selector("#brain .cell")
    cell = page.locator("#brain .cell[data-row='1'][data-pos='2']")
    cell.click()
    panel = page.locator("#cell-panel")
    assert panel.get_attribute("data-hook") == HOOKS[1] and panel.get_attribute("data-pos") == "2"
    links = panel.locator("a.feat")
    assert [links.nth(i).text_content() for i in range(links.count())] == [h["id"] for h in want]
    assert links.first.text_content() == f"{HOOKS[1]}/{PLANTED}"
    assert PLANTED_LABEL in panel.text_content() and "horse" in panel.text_content()
    assert "sel" in cell.get_attribute("class")
    assert page.locator("#brain .cell.sel").count() == 1  # only the clicked cell
    assert links.first.get_attribute("href") == f"#/feature/{HOOKS[1]}%2F{PLANTED}"
    # Another cell of the same token: the panel follows the row.
    page.locator("#brain .cell[data-row='0'][data-pos='2']").click()
    assert page.locator("#cell-panel").get_attribute("data-hook") == HOOKS[0]
    assert not page.problems


def test_scan_with_vs(page, viewer):
    page.goto(viewer + "#/scan")
    page.fill("#prompt", "the horse ran")
    page.fill("#vs", "the dog ran")
    page.click("#scan-btn")
    page.wait_for_selector("#compare a.feat")
    assert page.locator("#compare a.feat").first.text_content().endswith(f"/{PLANTED}")
    # The diff map: layers x aligned positions; the shared prefix is unchanged (white), the
    # swapped word is not.
    assert page.locator("#diffmap .cell").count() == len(HOOKS) * 4
    white = "rgb(255, 250, 220)"
    cell = "#diffmap .cell[data-row='0'][data-pos='{}']"
    style = "e => e.style.background"
    assert page.locator(cell.format(1)).evaluate(style) == white
    assert page.locator(cell.format(2)).evaluate(style) != white
    assert "horse / dog" in page.locator("#diffmap").text_content()
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
    assert (
        page.locator("figure.hist").count() == len(HOOKS) + 1
    )  # densities + one score distribution
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


# --- graph and steer pages: a tiny atlas with SAEs and a transcoder for every layer ----------
TC_PROMPT = "the capital of france is"
STEER_PROMPT = "she sees the cat and the"
DEMO_LABEL = "demo label: a random transcoder feature"


@pytest.fixture(scope="module")
def tc_atlas(tmp_path_factory, tiny_model_dir):
    """(atlas root, the labeled feature "HOOK/INDEX", the saved graph's file name).

    The tiny llama of tests/test_trace.py with random SAEs and transcoders; the most influential
    feature of the prompt's graph gets a hand-written label in the atlas DB, then `lmscope graph`
    writes ATLAS/graphs/<slug>.json with that label in it.
    """
    import json

    from test_trace import make_atlas

    from lmscope.atlas.db import AtlasDB
    from lmscope.cli import main
    from lmscope.layout import AtlasLayout
    from lmscope.models.tiny import tiny_model

    tmp = tmp_path_factory.mktemp("tc")
    root, dicts = make_atlas(
        tmp, tiny_model("llama", n_layers=3), tiny_model_dir("llama", n_layers=3)
    )
    scratch = tmp / "first.json"
    assert main(["graph", str(root), TC_PROMPT, "--out", str(scratch), "--json"]) == 0
    feats = [
        n
        for n in json.loads(scratch.read_text())["nodes"]
        if n["feature_type"] == "cross layer transcoder"
    ]
    top = min(feats, key=lambda n: n["influence"])
    hook, idx = top["lmscope_hook"], top["lmscope_feature"]
    with AtlasDB(AtlasLayout(root).db_path) as db:
        db._dict_id(
            hook,
            create={"arch": "topk", "d_sae": dicts[hook].cfg.d_sae, "d_in": dicts[hook].cfg.d_in},
        )
        db.set_label(hook, idx, DEMO_LABEL)
    assert main(["graph", str(root), TC_PROMPT, "--json"]) == 0
    return root, f"{hook}/{idx}", "the-capital-of-france-is.json"


def unexpected(pg):
    """Console errors other than Chromium's note on the 400 a test asked for; clears the list."""
    out = [p for p in pg.problems if "status of 400" not in p]
    pg.problems.clear()
    return out


@pytest.fixture(scope="module")
def tc_page(browser, tc_atlas, tmp_path_factory):
    proc, url = serve(tc_atlas[0])
    pg = new_page(browser, url)
    pg.base = url
    pg.shots_dir = tmp_path_factory.mktemp("screenshots")
    try:
        yield pg
    finally:
        pg.close()
        proc.terminate()
        proc.wait(timeout=10)


def test_graph_page_draws_hovers_and_links(tc_page, tc_atlas):
    import json

    root, labeled, name = tc_atlas
    data = json.loads((root / "graphs" / name).read_text())
    page = tc_page
    page.goto(page.base + "#/graph")
    page.wait_for_selector("#graph-list")
    page.locator(f"#graph-list a:text-is('{name}')").click()
    page.wait_for_selector("#graph-svg")
    assert page.locator("#graph-svg [data-node]").count() == len(data["nodes"])
    assert page.locator("#graph-svg path.edge").count() == min(300, len(data["links"]))
    # Embeddings along the bottom row, left to right in token order; logits in the top row.
    emb = page.locator("#graph-svg .emb")
    assert [emb.nth(i).text_content() for i in range(emb.count())] == data["metadata"][
        "prompt_tokens"
    ]
    ys = {
        cls: page.locator(f"#graph-svg .{cls} rect").first.get_attribute("y")
        for cls in ("emb", "logit")
    }
    assert float(ys["logit"]) < float(ys["emb"])
    xs = [float(emb.nth(i).locator("rect").get_attribute("x")) for i in range(emb.count())]
    assert xs == sorted(xs)
    # Both edge signs drawn with their colours.
    strokes = set(
        page.locator("#graph-svg path.edge").evaluate_all(
            "es => es.map(e => e.getAttribute('stroke'))"
        )
    )
    signs = {link["weight"] >= 0 for link in data["links"]}
    assert len(strokes) == len(signs)
    # Hover the labeled feature: the tooltip shows its id and label and its edges light up.
    hook, idx = labeled.rsplit("/", 1)
    node_id = next(
        n["node_id"]
        for n in data["nodes"]
        if n.get("lmscope_hook") == hook and n.get("lmscope_feature") == int(idx)
    )
    node = page.locator(f"#graph-svg [data-node='{node_id}']")
    node.hover()
    tip = page.locator("#graph-tip")
    tip.wait_for(state="visible")
    assert labeled in tip.text_content() and DEMO_LABEL in tip.text_content()
    assert page.locator("#graph-svg path.edge.hi").count() > 0
    assert "null" not in tip.text_content() and "undefined" not in tip.text_content()
    # A token has no inputs and no label: its tooltip shows only what it has.
    page.locator("#graph-svg .emb").first.hover()
    tip.wait_for(state="visible")
    assert "null" not in tip.text_content() and "strongest inputs" not in tip.text_content()
    node.hover()
    tip.wait_for(state="visible")
    shot(page, "graph")
    node.click()  # a feature node opens its feature page
    page.wait_for_selector("#feature-title")
    assert page.locator("#feature-title").text_content() == labeled
    assert page.locator(".bigLabel").text_content() == DEMO_LABEL
    assert not page.problems and not page.offsite


def test_graph_page_builds_a_graph(tc_page):
    page = tc_page
    page.goto(page.base + "#/graph")
    page.wait_for_selector("#graph-prompt")
    page.fill("#graph-prompt", "the dog ran to the river")
    page.click("#graph-btn")
    page.wait_for_selector("#graph-svg")
    assert page.url.endswith("#/graph/the-dog-ran-to-the-river.json")
    assert "the dog ran to the river" in page.locator("#graph-title").text_content()
    # Too long for the page's bound: the server's one-line message shows.
    page.goto(page.base + "#/graph")
    page.wait_for_selector("#graph-prompt")
    page.fill("#graph-prompt", "the cat " * 20)
    page.click("#graph-btn")
    page.wait_for_selector("#graph-status .error")
    assert "tokens long" in page.locator("#graph-status .error").text_content()
    assert not unexpected(page)


def test_steer_page_matches_the_engine(tc_page, tc_atlas, tiny_model_dir):
    from lmscope.dictionaries import load_dictionary
    from lmscope.models import load_model
    from lmscope.steer import VectorSpec, steer

    root, labeled, _ = tc_atlas
    page = tc_page
    page.goto(page.base + f"#/feature/{labeled.replace('/', '%2F')}")
    page.click("#steer-link")  # the feature page links to the steer page with the feature filled in
    page.wait_for_selector("#steer-prompt")
    assert page.locator("#steer-rows .fid").first.input_value() == labeled
    page.fill("#steer-prompt", STEER_PROMPT)
    page.locator("#steer-rows .val").first.fill("+40")
    page.click("#steer-add")
    page.locator("#steer-rows .fid").nth(1).fill("blocks.2.resid_post/3")
    page.locator("#steer-rows .val").nth(1).fill("*3")
    page.fill("#vec-pos", "love")
    page.fill("#vec-neg", "hate")
    page.select_option("#vec-layer", "1")
    page.fill("#vec-coeff", "4")
    page.fill("#steer-generate", "8")
    page.fill("#steer-targets-in", "cat,dog")
    page.click("#steer-btn")
    page.wait_for_selector("#steered")
    hook, idx = labeled.rsplit("/", 1)
    lm = load_model(str(tiny_model_dir("llama", n_layers=3)))  # the atlas's model
    dicts = {h: load_dictionary(root / "dictionaries" / h) for h in (hook, "blocks.2.resid_post")}
    ref = steer(
        lm,
        dicts,
        STEER_PROMPT,
        features=[f"{labeled}=+40", "blocks.2.resid_post/3=*3"],
        vector=VectorSpec("love", "hate", 1, 4.0),
        max_new_tokens=8,
        targets=["cat", "dog"],
    )
    assert page.locator("#unsteered .cont").text_content() == ref.unsteered
    assert page.locator("#steered .cont").text_content() == ref.steered
    rows = page.locator("#steer-targets tr")
    assert rows.count() == 3 and rows.nth(1).locator("td").first.text_content() == "cat"
    assert rows.nth(1).locator("td").nth(2).text_content() == f"{ref.targets[0]['p_steered']:.4f}"
    assert page.locator("#steer-next tr").count() == 1 + len(ref.next_tokens)
    assert page.locator("#steer-chips .chip").count() == 3
    assert DEMO_LABEL in page.locator("#steer-out").text_content()
    shot(page, "steer")
    # A wrong feature id: the server's one-line message, no result.
    page.locator("#steer-rows .fid").nth(1).fill("blocks.9.resid_post/3")
    page.click("#steer-btn")
    page.wait_for_selector("#steer-result .error")
    assert "no dictionary at" in page.locator("#steer-result .error").text_content()
    assert not unexpected(page) and not page.offsite


# --- everything a model, corpus or LLM writes is data: planted payloads stay text ------------
XSS_IMG = "<img src=x onerror=\"window.__pwned=1;document.title='PWNED'\">"
XSS_SCRIPT = "</script><script>window.__pwned=2;document.title='PWNED'</script>"
XSS = f"{XSS_IMG} {XSS_SCRIPT}"


@pytest.fixture(scope="module")
def xss_viewer(demo_atlas_root, tmp_path_factory):
    """A copy of the demo atlas whose planted feature's label, explanation, example tokens and
    logit tokens, and a saved graph's prompt, node label and node id, are script payloads."""
    import json
    import shutil
    import sqlite3

    from lmscope.atlas.db import AtlasDB
    from lmscope.layout import AtlasLayout

    root = tmp_path_factory.mktemp("xss") / "demo"
    shutil.copytree(demo_atlas_root, root)
    hook = HOOKS[0]
    with AtlasDB(AtlasLayout(root).db_path) as db:
        db.set_label(hook, PLANTED, XSS)
        db.add_explanation(hook, PLANTED, f"explained: {XSS}", method="hand")
    con = sqlite3.connect(AtlasLayout(root).db_path)
    with con:
        # windows are cut from the stored contexts and spelled with the vocab table: every token
        # becomes a payload (odd ids one, even ids the other), so every window carries them
        con.execute(
            "UPDATE vocab SET token = CASE WHEN id % 2 THEN ? ELSE ? END", (XSS_IMG, XSS_SCRIPT)
        )
        con.execute("UPDATE logit_effects SET token = ?", (XSS_IMG,))
    con.close()
    graph = {
        "metadata": {"slug": "xss", "prompt": XSS, "prompt_tokens": [XSS_IMG, XSS_SCRIPT]},
        "nodes": [
            {
                "node_id": "E_1_0",
                "feature": 0,
                "layer": "E",
                "ctx_idx": 0,
                "feature_type": "embedding",
                "clerp": XSS_IMG,
            },
            {
                "node_id": f'0_{PLANTED}_1"><img src=x onerror=window.__pwned=3>',
                "feature": PLANTED,
                "layer": "0",
                "ctx_idx": 1,
                "feature_type": "cross layer transcoder",
                "clerp": XSS,
                "influence": 0.5,
                "activation": 1.0,
                "lmscope_hook": hook,
                "lmscope_feature": PLANTED,
            },
            {
                "node_id": "3_5_1",
                "feature": 5,
                "layer": "3",
                "ctx_idx": 1,
                "feature_type": "logit",
                "clerp": f'Output "{XSS_SCRIPT}" (p=0.500)',
                "is_target_logit": True,
                "token_prob": 0.5,
            },
        ],
        "links": [
            {
                "source": "E_1_0",
                "target": f'0_{PLANTED}_1"><img src=x onerror=window.__pwned=3>',
                "weight": 1.0,
            },
            {
                "source": f'0_{PLANTED}_1"><img src=x onerror=window.__pwned=3>',
                "target": "3_5_1",
                "weight": 0.7,
            },
        ],
    }
    (root / "graphs").mkdir(exist_ok=True)
    (root / "graphs" / "xss.json").write_text(json.dumps(graph))
    (root / "fixes").mkdir(exist_ok=True)
    (root / "fixes" / "xss.json").write_text(json.dumps(_fix_report(XSS, XSS_IMG, XSS_SCRIPT)))
    proc, url = serve(root)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _fix_report(*payloads) -> dict:
    """A fix report made by the real report classes, its texts the given payloads."""
    from lmscope.correct.fix import FixReport, Outcome
    from lmscope.correct.measure import TextEffect
    from lmscope.probe.metrics import Score

    a, b, c = payloads
    s = Score(0.25, 0.1, 0.4, 12, 12)
    text = TextEffect(900, 8, 3.1, 3.2, s, s, 0.31, 0.30)
    k = {"cities": {"before": 0.7, "after": s.to_dict(), "change": s.to_dict()}}
    out = Outcome(f"edit {a}", s, s, s, text, k)
    rep = FixReport(f"bugs {b}.jsonl", "tiny", 12, 12, s, s, 0.5, [{"name": c}], c, out, out)
    rep.examples = [{"prompt": a, "bad": b, "good": c, "before": b, "after": c, "control": a}]
    return rep.to_dict()


def _no_script_ran(pg):
    assert pg.evaluate("window.__pwned") is None
    assert "PWNED" not in pg.title()
    assert pg.locator("main img").count() == 0  # no payload became an element
    assert pg.locator("main script").count() == 0
    assert not [p for p in pg.problems if "dialog" in p]


def test_planted_payloads_show_as_text_on_every_page(browser, xss_viewer):
    pg = new_page(browser, xss_viewer)
    try:
        fid = f"{HOOKS[0]}%2F{PLANTED}"
        pages = [
            (f"#/feature/{fid}", "#main h1, #main .label, #main"),
            ("#/search/labels/explained", "#main"),
            ("#/overview", "#main"),
            ("#/graph", "#main"),
            ("#/graph/xss.json", "#graph-title"),
            ("#/fix", "#main"),
            ("#/fix/xss.json", "#main"),
        ]
        for hash_, _ in pages:
            pg.goto(xss_viewer + hash_)
            pg.wait_for_load_state("networkidle")
            pg.wait_for_timeout(300)
            text = pg.locator("#main").text_content()
            _no_script_ran(pg)
            if hash_.startswith("#/feature"):
                assert XSS_IMG in text and XSS_SCRIPT in text  # label and example windows, as text
            if hash_.startswith("#/search"):
                assert XSS_IMG in text
            if hash_ == "#/fix/xss.json":  # the report's numbers and texts, side by side
                assert pg.locator("#fix-numbers tr").count() == 8  # header + 6 rows + knowledge
                assert pg.locator("#fix-examples pre").count() == 3
                assert XSS_IMG in text and XSS_SCRIPT in text and "0.250 [0.100, 0.400]" in text
            if hash_ == "#/fix":
                assert pg.locator("#fix-list a").count() == 1
            if hash_ == "#/graph/xss.json":
                assert XSS_IMG in text
                for node in pg.locator(
                    "#graph-wrap [data-node]"
                ).all():  # hover every node's tooltip
                    node.hover()
                    pg.wait_for_timeout(50)
                    _no_script_ran(pg)
                assert "PWNED" not in pg.title()
        # The scan page: a prompt made of the payloads (tokens the model reads back).
        pg.goto(xss_viewer + "#/scan")
        pg.fill("#prompt", f"the horse {XSS}")
        pg.click("#scan-btn")
        pg.wait_for_selector("#brain .cell")
        pg.locator("#brain .tokhead").last.click()
        pg.wait_for_timeout(300)
        _no_script_ran(pg)
    finally:
        pg.close()
