"""The reading engine on a tiny atlas with a planted feature: scan, brain map, --vs, renderers,
CLI."""

from __future__ import annotations

import html
import json
import subprocess
import sys

import pytest
import torch

from lmscope.dictionaries.feature_id import parse_feature_id
from lmscope.errors import UserError
from lmscope.read import (
    Reader,
    compare,
    render_compare,
    render_html,
    render_png,
    render_scan,
    write_html,
)
from lmscope.read.demo import HOOKS, HTML_TOKEN, PLANTED, PLANTED_LABEL, build_demo_atlas
from lmscope.read.render_terminal import brain_map


@pytest.fixture(scope="module")
def atlas(tmp_path_factory):
    return build_demo_atlas(tmp_path_factory.mktemp("atlas") / "demo")


@pytest.fixture(scope="module")
def reader(atlas):
    return Reader.open(atlas)


def test_planted_feature_lights_on_its_word_only(reader):
    res = reader.scan("the horse galloped across the field . a horse ran", top_k=5)
    assert res.tokens[0] == "<bos>" and res.has_bos
    horse = [p for p, t in enumerate(res.tokens) if t == "horse"]
    assert horse == [2, 9]
    for hook in HOOKS:
        for p in range(len(res.tokens)):
            ids = [h.feature for h in res.top[hook][p]]
            if p in horse:
                assert ids[0] == PLANTED, (hook, p, ids)  # the strongest feature on "horse"
                assert res.top[hook][p][0].act > 1.0
            else:
                assert PLANTED not in ids, (hook, p, ids)  # and absent everywhere else


def test_scan_matches_reference_encode(reader):
    """Top features and activity == a reference: full forward with plain torch hooks + encode."""
    prompt = "the red horse was fast"
    res = reader.scan(prompt, top_k=3)
    lm = reader.lm
    tokens = lm.to_tokens(prompt)
    seen = {}
    layers = lm.model.model.layers
    handles = [
        layers[i].register_forward_hook(
            lambda m, a, o, i=i: seen.__setitem__(i, (o[0] if isinstance(o, tuple) else o).detach())
        )
        for i in range(len(layers))
    ]
    try:
        with torch.no_grad():
            lm.model(tokens)
    finally:
        for h in handles:
            h.remove()
    for r, hook in enumerate(res.hooks):
        x = seen[int(hook.split(".")[1])][0]  # resid_post of block L  [pos, d_model]
        with torch.no_grad():
            f = reader.dicts[hook].encode(x)  # [pos, d_sae]
        for p in range(tokens.shape[1]):
            want = [(int(i), float(v)) for v, i in zip(*f[p].topk(3)) if v > 0]
            got = [(h.feature, h.act) for h in res.top[hook][p]]
            assert [i for i, _ in got] == [i for i, _ in want]
            assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-4, abs=1e-5)
        act = f.clamp(min=0).sum(1)
        assert res.activity[r] == pytest.approx(act.tolist(), rel=1e-4, abs=1e-5)
        assert res.n_active[r] == (f > 0).sum(1).tolist()


def test_brain_map_normalized_per_dictionary_without_bos(reader):
    res = reader.scan("the horse ran to the river")
    for r, row in enumerate(res.brain):
        assert len(row) == len(res.tokens)
        assert all(0.0 <= v <= 1.0 for v in row)
        assert max(row[1:]) == pytest.approx(1.0)  # peak over non-BOS tokens is 1
        peak = max(res.activity[r][1:])
        assert row[3] == pytest.approx(res.activity[r][3] / peak)
    # The planted word dominates both rows.
    assert all(row.index(max(row[1:])) == 2 for row in res.brain)


def test_compare_finds_the_planted_difference(reader):
    cmp = compare(reader, "the horse ran", "the dog ran", top=5)
    assert {d.feature for d in cmp.diffs[:2]} == {PLANTED}
    assert {d.hook for d in cmp.diffs[:2]} == set(HOOKS)
    top = cmp.diffs[0]
    assert top.diff > 1.0 and top.act_b == 0.0 and top.token_a == "horse" and top.token_b is None
    # Symmetric: swapping prompts flips the sign.
    rev = compare(reader, "the dog ran", "the horse ran", top=5)
    assert rev.diffs[0].diff == pytest.approx(-top.diff)
    assert "blocks" in render_compare(cmp)


def test_labels_from_the_atlas_db_and_unlabeled_features(reader):
    res = reader.scan("the horse")
    hit = res.top[HOOKS[0]][2][0]
    assert hit.feature == PLANTED and hit.label == PLANTED_LABEL  # written to atlas.db by the demo
    other = res.top[HOOKS[0]][2][1]
    assert other.label is None  # explanations may not exist yet: shown gracefully
    assert other.display() == f"{HOOKS[0]}/{other.feature} (unlabeled)"
    text = render_scan(res, color=False)
    assert "(unlabeled)" in text and PLANTED_LABEL in text
    bare = Reader(reader.lm, reader.dicts)  # no DB at all
    assert bare.scan("the horse").top[HOOKS[0]][2][0].label is None


def test_labels_come_from_the_label_source(atlas, reader):
    labeled = Reader(
        reader.lm, reader.dicts, labels=lambda h, f: "horses" if f == PLANTED else None
    )
    hit = labeled.scan("the horse").top[HOOKS[1]][2][0]
    assert hit.label == "horses" and hit.display() == "horses"


def test_bad_prompts_are_user_errors(reader):
    with pytest.raises(UserError, match="empty"):
        reader.scan("   ")
    small = Reader(reader.lm, reader.dicts, max_tokens=4)
    with pytest.raises(UserError, match="at most 4"):
        small.scan("the horse ran to the river")
    with pytest.raises(UserError, match="top_k"):
        reader.scan("the horse", top_k=0)
    with pytest.raises(UserError):
        parse_feature_id("blocks.0.resid_post")
    assert parse_feature_id("blocks.0.resid_post/12") == ("blocks.0.resid_post", 12)


def test_terminal_render_plain_and_color(reader):
    res = reader.scan("the horse ran")
    plain = brain_map(res, color=False)
    assert "\x1b[" not in plain and "██" in plain
    assert plain.count("\n") == len(res.hooks) + 2
    colored = brain_map(res, color=True)
    assert "\x1b[48;5;" in colored


def test_html_report_escapes_model_text(reader, tmp_path):
    res = reader.scan(f"the horse {HTML_TOKEN} ran")
    assert HTML_TOKEN in res.tokens  # the tokenizer keeps it as one token
    page = render_html(res, compare(reader, f"{HTML_TOKEN} horse", "the dog"))
    assert HTML_TOKEN not in page and "<img" not in page
    assert html.escape(HTML_TOKEN) in page
    assert (
        PLANTED_LABEL not in page and html.escape(PLANTED_LABEL) in page
    )  # labels are escaped too
    assert "<script" not in page and "http" not in page  # self-contained: no script, no CDN
    out = write_html(res, tmp_path / "r.html")
    assert out.read_text() == render_html(res)


def test_png_heatmap(reader, tmp_path):
    pytest.importorskip("matplotlib")
    res = reader.scan("the horse ran $x$ to the river")
    path = render_png(res, tmp_path / "brain.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from matplotlib.image import imread

    img = imread(path)
    assert img.shape[0] > 100 and img.shape[1] > 200


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "lmscope", *args], capture_output=True, text=True, timeout=120
    )


def test_cli_scan_json_vs_png_html(atlas, tmp_path):
    png, page = tmp_path / "s.png", tmp_path / "s.html"
    r = _cli(
        "scan",
        str(atlas),
        "the horse ran",
        "--vs",
        "the dog ran",
        "--json",
        "--png",
        str(png),
        "--html",
        str(page),
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["tokens"] == ["<bos>", "the", "horse", "ran"]
    assert out["top"][HOOKS[0]][2][0]["feature"] == PLANTED
    assert out["vs"]["diffs"][0]["feature"] == PLANTED
    assert png.is_file() and page.is_file()
    # Never overwrite without --force; errors are one line, exit 2.
    r = _cli("scan", str(atlas), "the horse", "--png", str(png))
    assert r.returncode == 2 and "--force" in r.stderr and "Traceback" not in r.stderr
    r = _cli("scan", str(atlas), "the horse", "--hooks", "blocks.9.*")
    assert r.returncode == 2 and "matches no dictionary" in r.stderr
    r = _cli("scan", str(tmp_path / "nope"), "the horse")
    assert r.returncode == 2 and "not found" in r.stderr


def test_cli_scan_terminal(atlas):
    r = _cli("scan", str(atlas), "the horse galloped", "--color", "never")
    assert r.returncode == 0, r.stderr
    assert "brain map" in r.stdout and f"{PLANTED} " in r.stdout and "\x1b[" not in r.stdout


def test_concurrent_scans_are_batched_and_equal_to_single(reader):
    """Prompts of different lengths scanned from 6 threads at once == each scanned alone."""
    import threading

    prompts = [
        "the horse ran",
        "a big horse and a small cow ran to the river",
        "the dog",
        "she sees the horse in the field",
        "paris is the capital of france",
        "the horse",
    ]
    alone = [reader.scan(p, top_k=4) for p in prompts]
    out: dict[int, object] = {}
    barrier = threading.Barrier(len(prompts))

    def work(i):
        barrier.wait()
        out[i] = reader.scan(prompts[i], top_k=4)

    sizes = []
    real = reader._encode_tokens
    reader._encode_tokens = lambda toks: (sizes.append(len(toks)), real(toks))[
        1
    ]  # count batch sizes
    try:
        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        del reader._encode_tokens
    assert sum(sizes) == len(prompts) and max(sizes) > 1  # some prompts shared a forward pass
    for i, res in enumerate(alone):
        got = out[i]
        assert got.tokens == res.tokens
        for hook in HOOKS:
            # Same activations up to float rounding (a batched GEMM sums in another order), so
            # compare values, not the order of near-zero features at the threshold.
            for row_g, row_r in zip(got.top[hook], res.top[hook]):
                want = {h.feature: h.act for h in row_r if h.act > 1e-3}
                have = {h.feature: h.act for h in row_g if h.feature in want}
                assert have == pytest.approx(want, rel=1e-4, abs=1e-5)
            for a, b in zip(got.activity[HOOKS.index(hook)], res.activity[HOOKS.index(hook)]):
                assert a == pytest.approx(b, rel=1e-4, abs=1e-5)
    # An error in one prompt (too long) is that caller's error only.
    with pytest.raises(UserError):
        Reader(reader.lm, reader.dicts, max_tokens=3).scan("the horse ran to the river")
