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
    render_diff,
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


@pytest.fixture(scope="module")
def tc_reader(tmp_path_factory, tiny_model_dir):
    """A Reader over a tiny atlas with a skip transcoder per layer (blocks.L.mlp_in -> mlp_out,
    random weights and a random W_skip), and its model."""
    from lmscope.dictionaries import build
    from lmscope.dictionaries.transcoder import transcoder_config
    from lmscope.layout import AtlasLayout
    from lmscope.models.tiny import tiny_model

    lm = tiny_model("llama", n_layers=3)
    model_dir = tiny_model_dir("llama", n_layers=3)
    layout = AtlasLayout(tmp_path_factory.mktemp("tc") / "atlas")
    for L in range(lm.n_layers):
        tc = build(transcoder_config(L, lm.d_model, 64, arch="topk", k=4, seed=L, skip=True))
        g = torch.Generator().manual_seed(L)
        with torch.no_grad():
            tc.b_enc.normal_(0, 0.1, generator=g)
            tc.W_skip.normal_(0, 0.05, generator=g)
        tc.save(layout.dictionary_dir(tc.cfg.hook_name))
        layout.add_dictionary(tc.cfg.hook_name, model=str(model_dir), arch="topk", d_sae=64)
    return Reader.open(layout.root), lm


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


def test_brain_map_prompt_max_without_a_db(reader):
    """Without atlas profiles, each row is divided by its largest non-BOS activity."""
    bare = Reader(reader.lm, reader.dicts)
    res = bare.scan("the horse ran to the river")
    assert res.brain_norm == "prompt_max" and res.layer_ref == [None, None]
    for r, row in enumerate(res.brain):
        assert len(row) == len(res.tokens)
        assert all(0.0 <= v <= 1.0 for v in row)
        assert max(row[1:]) == pytest.approx(1.0)  # peak over non-BOS tokens is 1
        peak = max(res.activity[r][1:])
        assert row[3] == pytest.approx(res.activity[r][3] / peak)
    # The planted word dominates both rows.
    assert all(row.index(max(row[1:])) == 2 for row in res.brain)


def test_brain_map_cells_by_hand_against_the_corpus_mean(reader, atlas):
    """Each cell = 0.5 + log2(activity / layer mean over the atlas corpus) / 4, clipped to
    [0, 1]; the layer mean is the sum of the profiled features' mean activations, read here
    with plain sqlite, and the activity is recomputed from a plain forward with torch hooks."""
    import math
    import sqlite3

    prompt = "the horse ran to the river"
    res = reader.scan(prompt)
    assert res.brain_norm == "corpus_mean"
    con = sqlite3.connect(atlas / "atlas.db")
    try:
        means = {
            hook: sum(
                v
                for (v,) in con.execute(
                    "SELECT f.mean_act FROM features f JOIN dictionaries d ON d.id = f.dictionary "
                    "WHERE d.hook = ?",
                    (hook,),
                )
            )
            for hook in HOOKS
        }
    finally:
        con.close()
    tokens = reader.lm.to_tokens(prompt)
    layers = reader.lm.model.model.layers
    seen = {}
    handles = [
        layers[i].register_forward_hook(
            lambda m, a, o, i=i: seen.__setitem__(i, (o[0] if isinstance(o, tuple) else o).detach())
        )
        for i in range(len(layers))
    ]
    try:
        with torch.no_grad():
            reader.lm.model(tokens)
    finally:
        for h in handles:
            h.remove()
    for r, hook in enumerate(res.hooks):
        assert res.layer_ref[r] == pytest.approx(means[hook], rel=1e-9)
        with torch.no_grad():
            f = reader.dicts[hook].encode(seen[r][0])  # [pos, d_sae]
        for p in range(tokens.shape[1]):
            act = float(f[p].clamp(min=0).sum())
            want = 0.0 if act == 0 else min(1.0, max(0.0, 0.5 + math.log2(act / means[hook]) / 4))
            assert res.brain[r][p] == pytest.approx(want, abs=1e-5), (hook, p)
            assert res.relative[r][p] == pytest.approx(act / means[hook], rel=1e-4, abs=1e-6)
    # The two layers' raw activity differs in scale; the normalized rows are comparable: the
    # planted word is the hottest non-BOS cell of each row.
    assert all(row.index(max(row[1:])) == 2 for row in res.brain)


def test_explained_fraction_is_one_minus_fvu_by_hand(tc_reader):
    """Per layer: 1 - sum||y - y_hat||^2 / sum||y - mean y||^2 over the non-BOS tokens, with y
    the transcoder's target (mlp_out) from a plain torch hook and y_hat its output (skip
    included); the old per-prompt code had no such number."""
    reader, lm = tc_reader
    prompt = "the capital of france is paris"
    res = reader.scan(prompt)
    tokens = lm.to_tokens(prompt)
    mlp_in, mlp_out = {}, {}
    handles = []

    def keep(i):
        def hook(module, args, out):  # returns None: the forward is left unchanged
            mlp_in[i], mlp_out[i] = args[0].detach(), out.detach()

        return hook

    for i, layer in enumerate(lm.model.model.layers):
        handles.append(layer.mlp.register_forward_hook(keep(i)))
    try:
        with torch.no_grad():
            lm.model(tokens)
    finally:
        for h in handles:
            h.remove()
    assert res.out_hooks == [f"blocks.{i}.mlp_out" for i in range(3)]
    for r, hook in enumerate(res.hooks):
        L = int(hook.split(".")[1])
        x, y = mlp_in[L][0, 1:].double(), mlp_out[L][0, 1:].double()  # BOS dropped
        d = reader.dicts[hook].double()
        with torch.no_grad():
            y_hat = d(x)  # [pos - 1, d_model], skip included
        sse, sst = 0.0, 0.0
        mean = [
            sum(y[t, j].item() for t in range(y.shape[0])) / y.shape[0] for j in range(y.shape[1])
        ]
        for t in range(y.shape[0]):
            for j in range(y.shape[1]):
                sse += (y[t, j].item() - y_hat[t, j].item()) ** 2
                sst += (y[t, j].item() - mean[j]) ** 2
        assert res.explained[r] == pytest.approx(1 - sse / sst, rel=1e-4, abs=1e-5), hook
        # BOS left in would give another number: the test tells the two apart.
        with torch.no_grad():
            yb, xb = mlp_out[L][0].double(), mlp_in[L][0].double()
            with_bos = 1 - ((yb - d(xb)) ** 2).sum() / ((yb - yb.mean(0)) ** 2).sum()
        assert abs(float(with_bos) - res.explained[r]) > 1e-4


def test_explained_fraction_undefined_on_one_token():
    from lmscope.read.scan import explained_fraction

    assert explained_fraction(torch.ones(1, 3), torch.zeros(1, 3)) is None
    assert explained_fraction(torch.ones(4, 3), torch.zeros(4, 3)) is None  # no variance
    y = torch.tensor([[1.0, 0.0], [3.0, 0.0]])  # mean (2, 0): sum of squares about it = 2
    assert explained_fraction(y, torch.tensor([[1.0, 1.0], [3.0, 0.0]])) == pytest.approx(0.5)


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
    rows = [ln for ln in plain.splitlines() if ln.lstrip().startswith("blocks.")]
    assert len(rows) == len(res.hooks)  # one row per layer, in model order
    for hook, fit, row in zip(res.hooks, res.explained, rows):
        want = "<-999%" if fit < -9.99 else f"{fit * 100:.0f}%"
        assert row.split()[:2] == [hook, want]  # the fit column
    colored = brain_map(res, color=True)
    assert "\x1b[48;5;" in colored


def test_terminal_map_wraps_long_prompts(reader):
    """Columns wrap into chunks that fit the width, each with its position range; no cell is
    lost."""
    res = reader.scan(" ".join(["the horse ran to the river"] * 8))  # 49 tokens
    text = brain_map(res, color=False, width=60)
    assert max(len(ln) for ln in text.splitlines() if "blocks." in ln) <= 60
    chunks = [ln for ln in text.splitlines() if ln.startswith("positions ")]
    assert len(chunks) > 1 and chunks[0].startswith("positions 0-")
    assert chunks[-1].endswith(f"-{len(res.tokens) - 1} of {len(res.tokens)}")
    cells = sum(
        (len(ln) - len(ln.split("%", 1)[0]) - 2) // 2
        for ln in text.splitlines()
        if ln.lstrip().startswith(res.hooks[0])
    )
    assert cells == len(res.tokens)


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
    assert out["brain_norm"] == "corpus_mean" and len(out["explained"]) == len(HOOKS)
    vmap = out["vs"]["map"]
    assert vmap["first_diff"] == 2 and vmap["change"][0][:2] == [0.0, 0.0]
    assert png.is_file() and page.is_file()
    from matplotlib.image import imread

    assert imread(png).shape[0] > 400  # two panels: the brain map and the diff map below
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


def test_diff_map_of_a_prompt_with_itself_is_zero(reader):
    cmp = compare(reader, "the horse ran to the river", "the horse ran to the river")
    m = cmp.map
    assert m.first_diff is None and m.note is None and m.n_aligned == len(m.tokens_a)
    assert all(v == 0.0 for row in m.change for v in row)
    assert all(v == 0.0 for row in m.activity_diff for v in row)
    assert cmp.diffs == []


def test_diff_map_cells_by_hand(reader):
    """change[l][p] = sum_i |a_i - b_i| / (sum_i a_i + sum_i b_i) of the two prompts' features
    at position p; positions are aligned and the longer prompt's extra tokens are named."""
    a, b = "the horse ran to the river", "the dog ran"
    cmp = compare(reader, a, b)
    m = cmp.map
    _, fa = reader.encode(a)
    _, fb = reader.encode(b)
    assert m.n_aligned == 4 and len(m.tokens_a) == 7 and m.first_diff == 2
    assert "7 vs 4" in m.note and "'to'" in m.note and "'river'" in m.note
    for r, hook in enumerate(HOOKS):
        assert len(m.change[r]) == 4
        for p in range(4):
            va, vb = fa[hook][p].tolist(), fb[hook][p].tolist()
            num = sum(abs(max(x, 0) - max(y, 0)) for x, y in zip(va, vb))
            den = sum(max(x, 0) for x in va) + sum(max(y, 0) for y in vb)
            assert m.change[r][p] == pytest.approx(num / den if den else 0.0, abs=1e-6)
        assert m.change[r][0] == 0.0 and m.change[r][1] == 0.0  # same prefix, causal model
        assert m.change[r][2] > 0.5  # horse vs dog: the planted feature and others change
    d = cmp.to_dict()["map"]
    assert d["n_aligned"] == 4 and len(d["layer_change"]) == len(HOOKS)
    text = render_diff(cmp, color=False)
    assert "diff map" in text and "horse/dog" in text and "7 vs 4" in text


def test_compare_ranks_in_units_of_each_layers_corpus_mean(reader):
    """Across layers, features are ranked by |A - B| / the layer's corpus mean activity (the
    raw ranking would favour the layer with the larger activation scale)."""
    cmp = compare(reader, "the horse ran to the river", "the dog sat on the house", top=12)
    refs = dict(zip(HOOKS, reader.scan("the").layer_ref))
    keys = [abs(d.diff) / refs[d.hook] for d in cmp.diffs]
    assert keys == sorted(keys, reverse=True)
    raw = [abs(d.diff) for d in cmp.diffs]
    assert raw != sorted(raw, reverse=True)  # the two orders differ on this pair


def test_token_table_of_a_whole_model_atlas_ranks_across_layers(reader, monkeypatch):
    """With many dictionaries, each token lists its top features over all layers, ranked by
    activation / the layer's corpus mean (not 3 lines per layer)."""
    from lmscope.read import render_terminal

    res = reader.scan("the horse ran")
    monkeypatch.setattr(render_terminal, "MANY_DICTIONARIES", 1)
    text = render_terminal.token_table(res, per_token=3)
    block = text.split("[2] 'horse'")[1].split("[3]")[0].strip().splitlines()
    refs = dict(zip(res.hooks, res.layer_ref))
    hits = sorted(
        (h for hook in res.hooks for h in res.top[hook][2]), key=lambda h: -h.act / refs[h.hook]
    )[:3]
    assert [ln.split()[0] for ln in block] == [h.id for h in hits]


def test_cli_scan_restores_torch_threads(atlas, capsys):
    """`lmscope run` calls scan in-process and builds a graph after it: scan's --threads must not
    leak into the stages that follow."""
    import torch

    from lmscope.cli import main

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert main(["scan", str(atlas), "the horse", "--threads", "1", "--color", "never"]) == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert "brain map" in capsys.readouterr().out
