"""The viewer's JSON API against a real server on a free loopback port: answers and bad requests."""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import threading
from urllib.parse import quote

import pytest

from lmscope.errors import UserError
from lmscope.read import Reader
from lmscope.read.demo import HOOKS, HTML_TOKEN, PLANTED, PLANTED_LABEL
from lmscope.viewer.routes import ROUTES
from lmscope.viewer.server import Limits, confined, make_server


@pytest.fixture(scope="module")
def server(demo_atlas_root, tmp_path_factory):
    import shutil

    root = tmp_path_factory.mktemp("atlas") / "demo"
    shutil.copytree(demo_atlas_root, root)  # this test adds files to it
    (root / "plots").mkdir()
    (root / "plots" / "ok.txt").write_text("plot")
    (root / "secret.txt").write_text("secret")
    reader = Reader.open(root, max_tokens=16)
    srv = make_server(reader, port=0, limits=Limits(max_body_bytes=4096))
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def call(srv, method, path, body=None, *, raw: bytes | None = None, headers=None):
    host, port = srv.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=30)
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    conn.request(method, path, body=data, headers=hdrs)
    resp = conn.getresponse()
    payload = resp.read()
    conn.close()
    ctype = resp.getheader("Content-Type", "")
    return resp.status, (json.loads(payload) if ctype.startswith("application/json") else payload)


def test_binds_loopback(server):
    assert server.server_address[0] == "127.0.0.1"


def test_scan_api_is_the_engine(server):
    st, res = call(server, "POST", "/api/scan", {"prompt": "the horse ran", "top_k": 3})
    assert st == 200
    assert res["tokens"] == ["<bos>", "the", "horse", "ran"]
    for hook in HOOKS:
        assert res["top"][hook][2][0]["feature"] == PLANTED
        assert res["top"][hook][2][0]["id"] == f"{hook}/{PLANTED}"
    direct = server.reader.scan("the horse ran", top_k=3).to_dict()
    assert res == json.loads(json.dumps(direct))


def test_compare_feature_search_overview(server):
    st, cmp = call(
        server, "POST", "/api/compare", {"prompt_a": "the horse ran", "prompt_b": "the dog ran"}
    )
    assert st == 200 and cmp["diffs"][0]["feature"] == PLANTED
    st, f = call(server, "GET", f"/api/feature?id={HOOKS[0]}/{PLANTED}")
    assert st == 200 and f["label"] == PLANTED_LABEL and f["id"] == f"{HOOKS[0]}/{PLANTED}"
    assert (
        len(f["logits"]["promoted"]) == 10
        and f["logits"]["promoted"][0]["value"] >= f["logits"]["promoted"][-1]["value"]
    )
    assert 0 < f["density"] < 1
    prof = f["profile"]  # the atlas build's profile: every top example peaks on "horse"
    assert prof["top"] and all(ex["tokens"][ex["position"]] == "horse" for ex in prof["top"])
    assert prof["max_act"] == pytest.approx(max(ex["score"] for ex in prof["top"]))
    hist = prof["histogram"]
    assert sum(hist["counts"]) == prof["fires"] and len(hist["edges"]) == len(hist["counts"]) + 1
    assert f["explanations"][0]["text"] == PLANTED_LABEL
    assert f["explanations"][0]["scores"][0]["value"] == 1.0
    st, f = call(server, "GET", f"/api/feature?id={HOOKS[0]}/{PLANTED + 1}")
    assert st == 200 and f["label"] is None
    st, s = call(server, "GET", "/api/search?mode=text&q=a+big+horse")
    assert (
        st == 200 and s["results"][0]["feature"] == PLANTED and s["results"][0]["token"] == "horse"
    )
    st, s = call(server, "GET", "/api/search?mode=labels&q=ponies")
    assert st == 200 and [r["id"] for r in s["results"]] == [f"{h}/{PLANTED}" for h in HOOKS]
    assert s["results"][0]["label"] == PLANTED_LABEL
    st, o = call(server, "GET", "/api/overview")
    assert st == 200 and [d["hook"] for d in o["dictionaries"]] == list(HOOKS)
    assert sum(o["dictionaries"][0]["density_histogram"]["counts"]) == 64
    assert o["has_db"] and o["scores"][0]["n"] == len(HOOKS)


def test_static_files_and_page_registry(server):
    st, page = call(server, "GET", "/")
    assert (
        st == 200 and b"/static/app.js" in page and b"http" not in page.replace(b"http-equiv", b"")
    )
    st, pages = call(server, "GET", "/api/pages")
    assert [p.rsplit("/", 1)[1] for p in pages["pages"]][:4] == [
        "10-scan.js",
        "20-feature.js",
        "30-search.js",
        "40-overview.js",
    ]
    for p in pages["pages"]:
        st, js = call(server, "GET", p)
        assert st == 200 and b"registerPage" in js
        assert b"innerHTML" not in js  # model text is written with textContent only
    st, _ = call(server, "GET", "/plots/ok.txt")
    assert st == 200


@pytest.mark.parametrize(
    "path",
    [
        "/static/../server.py",
        "/static/%2e%2e/server.py",
        "/static/..%2f..%2fsecret.txt",
        "/plots/../secret.txt",
        "/plots/%2e%2e/secret.txt",
        "/plots/../atlas.json",
        "/static//etc/passwd",
        "/etc/passwd",
        "/static/pages",
        "/plots/ok.txt%00.js",
    ],
)
def test_path_traversal_refused(server, path):
    st, body = call(server, "GET", path)
    assert st == 404 and "error" in body


@pytest.mark.parametrize(
    "method,path,body,raw,status,needle",
    [
        ("POST", "/api/scan", None, b"{not json", 400, "not valid JSON"),
        ("POST", "/api/scan", None, b"", 400, "missing JSON body"),
        ("POST", "/api/scan", None, b"[1, 2]", 400, "JSON object"),
        ("POST", "/api/scan", None, b"\xff\xfe", 400, "not valid JSON"),
        ("POST", "/api/scan", {}, None, 400, "missing field 'prompt'"),
        ("POST", "/api/scan", {"prompt": 5}, None, 400, "must be a string"),
        ("POST", "/api/scan", {"prompt": ""}, None, 400, "empty"),
        ("POST", "/api/scan", {"prompt": "the horse", "top_k": "x"}, None, 400, "integer"),
        ("POST", "/api/scan", {"prompt": "the horse", "top_k": 1000}, None, 400, "between"),
        ("POST", "/api/scan", {"prompt": "the horse ran " * 10}, None, 400, "at most 16"),
        ("POST", "/api/scan", {"prompt": "x" * 3000}, None, 400, "too long"),
        ("POST", "/api/compare", {"prompt_a": "the horse"}, None, 400, "prompt_b"),
        ("GET", "/api/feature", None, None, 400, "missing field 'id'"),
        ("GET", "/api/feature?id=nonsense", None, None, 400, "HOOK/INDEX"),
        ("GET", "/api/feature?id=blocks.0.resid_post/64", None, None, 404, "out of range"),
        ("GET", "/api/feature?id=blocks.7.mlp_out/1", None, None, 404, "no dictionary"),
        ("GET", "/api/search?q=horse&mode=sql", None, None, 400, "mode"),
        ("GET", "/api/search?mode=text", None, None, 400, "missing field 'q'"),
        ("GET", "/api/nope", None, None, 404, "no API endpoint"),
        ("GET", "/api/scan", None, None, 405, "not allowed"),
        ("DELETE", "/api/scan", None, None, 405, "not allowed"),
    ],
)
def test_bad_requests_are_json_4xx(server, method, path, body, raw, status, needle):
    st, res = call(server, method, path, body, raw=raw)
    assert st == status, res
    assert needle in res["error"] and "Traceback" not in res["error"]


def test_oversized_body_refused_without_reading(server):
    st, res = call(server, "POST", "/api/scan", raw=b'{"prompt": "' + b"a" * 10_000 + b'"}')
    assert st == 413 and "too large" in res["error"]
    # A lying Content-Length larger than the limit is refused before any read.
    host, port = server.server_address[:2]
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(
            b"POST /api/scan HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 999999999\r\n\r\n{}"
        )
        reply = b""
        while chunk := s.recv(4096):  # the server closes the connection after refusing
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 413") and b"too large" in reply
    st, _ = call(server, "POST", "/api/scan", raw=b"{}", headers={"Content-Length": "-5"})
    assert st == 400


def test_internal_errors_are_500_json_without_traceback(server, capsys):
    from lmscope.viewer.routes import route

    @route("GET", "/api/_boom")
    def boom(req):
        raise RuntimeError("secret internals")

    try:
        st, res = call(server, "GET", "/api/_boom")
    finally:
        ROUTES.pop(("GET", "/api/_boom"))
    assert st == 500 and res["error"] == "internal error (RuntimeError); see the server log"


def test_html_token_stays_text_in_json(server):
    st, res = call(server, "POST", "/api/scan", {"prompt": f"the {HTML_TOKEN} horse"})
    assert st == 200 and HTML_TOKEN in res["tokens"]


def test_confined(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f.txt").write_text("x")
    (tmp_path / "out.txt").write_text("y")
    (tmp_path / "a" / "link.txt").symlink_to(tmp_path / "out.txt")
    assert confined(tmp_path / "a", "f.txt") == (tmp_path / "a" / "f.txt").resolve()
    assert confined(tmp_path / "a", "../out.txt") is None
    assert confined(tmp_path / "a", "link.txt") is None  # symlink escaping the root
    assert confined(tmp_path / "a", "/etc/passwd") is None
    assert confined(tmp_path / "a", "") is None  # a directory is not a file


def test_serve_cli_refuses_bad_flags(tmp_path):
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "lmscope", "serve", str(tmp_path), "--port", "70000"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "--port" in r.stderr and "Traceback" not in r.stderr


# --- graph and steer pages: a tiny atlas with SAEs and a transcoder for every layer ----------
TC_PROMPT = "the cat sat on the big red"


@pytest.fixture(scope="module")
def tc_server(tmp_path_factory, tiny_model_dir):
    from test_trace import make_atlas

    from lmscope.cli import main
    from lmscope.models.tiny import tiny_model

    tmp = tmp_path_factory.mktemp("tc")
    root, _ = make_atlas(tmp, tiny_model("llama", n_layers=3), tiny_model_dir("llama", n_layers=3))
    assert main(["graph", str(root), TC_PROMPT, "--json"]) == 0  # -> ATLAS/graphs/<slug>.json
    graphs = root / "graphs"
    (graphs / "notes.json").write_text('{"a": 1}')  # JSON, but not a graph
    (tmp / "outside.json").write_text(json.dumps({"metadata": {}, "nodes": [], "links": []}))
    (graphs / "escape.json").symlink_to(tmp / "outside.json")  # a link out of the atlas
    reader = Reader.open(root, max_tokens=24)
    srv = make_server(
        reader,
        port=0,
        limits=Limits(
            max_body_bytes=4096, max_generate=8, max_graph_tokens=12, max_interventions=3
        ),
    )
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_graph_list_and_serve(tc_server):
    st, res = call(tc_server, "GET", "/api/graphs")
    assert st == 200 and res["can_build"] and res["build_note"] is None and res["max_tokens"] == 12
    by_name = {g["name"]: g for g in res["graphs"]}
    assert "escape.json" not in by_name  # symlinks are not listed
    g = by_name["the-cat-sat-on-the-big-red.json"]
    assert g["prompt"] == TC_PROMPT and g["n_nodes"] > 0 and g["error"] is None
    assert "not a graph JSON" in by_name["notes.json"]["error"]
    st, data = call(tc_server, "GET", "/api/graph?name=the-cat-sat-on-the-big-red.json")
    on_disk = json.loads((tc_server.reader.atlas / "graphs" / g["name"]).read_text())
    assert st == 200 and data == on_disk and len(data["nodes"]) == g["n_nodes"]


@pytest.mark.parametrize(
    "name,status,needle",
    [
        ("../atlas.json", 400, "bad graph name"),
        ("%2e%2e%2fatlas.json", 400, "bad graph name"),
        ("/etc/passwd", 400, "bad graph name"),
        ("graphs/x.json", 400, "bad graph name"),
        (".hidden.json", 400, "bad graph name"),
        ("x.txt", 400, "bad graph name"),
        ("x.json%00", 400, "bad graph name"),
        ("missing.json", 404, "no graph named"),
        ("escape.json", 404, "no graph named"),
        ("notes.json", 400, "not a graph JSON"),
    ],
)
def test_graph_names_are_confined(tc_server, name, status, needle):
    st, res = call(tc_server, "GET", f"/api/graph?name={name}")
    assert st == status and needle in res["error"], res


def test_build_graph_from_the_page_is_the_engine(tc_server):
    from lmscope.trace import build_graph, check_transcoders, graph_json, prune

    reader = tc_server.reader
    before = set(p.name for p in (reader.atlas / "graphs").iterdir())
    st, res = call(
        tc_server, "POST", "/api/graph", {"prompt": "the dog ran", "max_feature_nodes": 40}
    )
    assert st == 200 and res["name"] == "the-dog-ran.json" and res["name"] not in before
    st, again = call(
        tc_server, "POST", "/api/graph", {"prompt": "the dog ran", "max_feature_nodes": 40}
    )
    assert st == 200 and again["name"] == "the-dog-ran-2.json"  # never overwrites
    st, data = call(tc_server, "GET", f"/api/graph?name={res['name']}")
    g = build_graph(
        reader.lm, check_transcoders(reader.lm, reader.dicts), "the dog ran", max_feature_nodes=40
    )
    ref = json.loads(json.dumps(graph_json(g, prune(g))))
    assert [n["node_id"] for n in data["nodes"]] == [n["node_id"] for n in ref["nodes"]]
    assert [(x["source"], x["target"]) for x in data["links"]] == [
        (x["source"], x["target"]) for x in ref["links"]
    ]
    assert [x["weight"] for x in data["links"]] == pytest.approx(
        [x["weight"] for x in ref["links"]], rel=1e-4, abs=1e-6
    )
    st, lst = call(tc_server, "GET", "/api/graphs")
    assert {"the-dog-ran.json", "the-dog-ran-2.json"} <= {x["name"] for x in lst["graphs"]}


def test_steer_api_is_the_engine(tc_server):
    from lmscope.steer import VectorSpec, steer

    reader = tc_server.reader
    body = {
        "prompt": TC_PROMPT,
        "features": ["blocks.2.resid_post/3=+5", "blocks.1.mlp_in/2=*3"],
        "vector": {"positive": "love", "negative": "hate", "layer": 1, "coeff": 4},
        "generate": 5,
        "targets": ["cat"],
    }
    st, res = call(tc_server, "POST", "/api/steer", body)
    assert st == 200, res
    ref = steer(
        reader.lm,
        reader.dicts,
        TC_PROMPT,
        features=body["features"],
        vector=VectorSpec("love", "hate", 1, 4.0),
        max_new_tokens=5,
        targets=["cat"],
    )
    assert {k: res[k] for k in ref.to_dict()} == json.loads(json.dumps(ref.to_dict()))
    assert res["labels"] == {"blocks.2.resid_post/3": None, "blocks.1.mlp_in/2": None}
    assert res["targets"][0]["token"] == "cat" and len(res["next_tokens"]) >= 5


@pytest.mark.parametrize(
    "body,status,needle",
    [
        ({"features": ["blocks.2.resid_post/3=+5"]}, 400, "missing field 'prompt'"),
        ({"prompt": TC_PROMPT}, 400, "nothing to steer"),
        ({"prompt": TC_PROMPT, "features": "blocks.2.resid_post/3=+5"}, 400, "list of strings"),
        ({"prompt": TC_PROMPT, "features": ["blocks.9.resid_post/3=+5"]}, 400, "no dictionary at"),
        (
            {"prompt": TC_PROMPT, "features": ["blocks.2.resid_post/999=+5"]},
            400,
            "has 128 features",
        ),
        (
            {"prompt": TC_PROMPT, "features": ["blocks.2.resid_post/3=lots"]},
            400,
            "cannot read feature intervention",
        ),
        ({"prompt": TC_PROMPT, "features": ["blocks.2.resid_post/3=+5"] * 4}, 400, "at most 3"),
        (
            {"prompt": TC_PROMPT, "features": ["blocks.2.resid_post/3=+5"], "generate": 9},
            400,
            "between 0 and 8",
        ),
        (
            {"prompt": TC_PROMPT, "features": ["blocks.2.resid_post/3=+5"], "temperature": -1},
            400,
            "temperature",
        ),
        (
            {"prompt": TC_PROMPT, "features": ["blocks.2.resid_post/3=+5"], "targets": ["big red"]},
            400,
            "2 tokens",
        ),
        (
            {"prompt": TC_PROMPT, "vector": {"positive": "love", "negative": "hate"}},
            400,
            "needs 'layer'",
        ),
        (
            {"prompt": TC_PROMPT, "vector": {"positive": "love", "negative": "hate", "layer": 7}},
            400,
            "between 0 and 2",
        ),
        (
            {"prompt": TC_PROMPT, "vector": {"positive": "love", "negative": " ", "layer": 1}},
            400,
            "non-empty",
        ),
        (
            {
                "prompt": TC_PROMPT,
                "vector": {"positive": "love", "negative": "hate", "layer": 1, "coeff": "x"},
            },
            400,
            "must be a number",
        ),
        (
            {
                "prompt": TC_PROMPT,
                "vector": {"positive": "love", "negative": "hate", "layer": 1, "mode": "sql"},
            },
            400,
            "actadd",
        ),
        ({"prompt": TC_PROMPT, "vector": "love-hate"}, 400, "must be an object"),
        ({"prompt": "the cat " * 20, "features": ["blocks.2.resid_post/3=+5"]}, 400, "at most 24"),
    ],
)
def test_steer_bad_requests(tc_server, body, status, needle):
    st, res = call(tc_server, "POST", "/api/steer", body)
    assert st == status and needle in res["error"] and "Traceback" not in res["error"], res


@pytest.mark.parametrize(
    "body,needle",
    [
        ({}, "missing field 'prompt'"),
        ({"prompt": "the cat sat on the big red house and the dog ran"}, "at most 12"),
        ({"prompt": "the cat", "target": "big red"}, "2 tokens"),
        ({"prompt": "the cat", "target": "99999999"}, "not a token id"),
        ({"prompt": "the cat", "max_feature_nodes": 100000}, "between 1 and 512"),
        ({"prompt": "the cat", "node_threshold": 2}, "between"),
    ],
)
def test_graph_bad_requests(tc_server, body, needle):
    st, res = call(tc_server, "POST", "/api/graph", body)
    assert st == 400 and needle in res["error"], res


def test_graph_build_needs_transcoders(server):
    st, res = call(server, "GET", "/api/graphs")
    assert (
        st == 200
        and res["graphs"] == []
        and not res["can_build"]
        and "missing layers 0-1" in res["build_note"]
    )
    st, res = call(server, "POST", "/api/graph", {"prompt": "the horse"})
    assert st == 400 and "needs a transcoder" in res["error"]


# --- the feature page's JSON: written once (atlas/feature_page.py), read as written -------------
FEATURE_JS = "lmscope/viewer/static/pages/20-feature.js"
# Variables through which 20-feature.js reads the /api/feature JSON (f = the page; prof = its
# profile; ex, q = examples; x = explanations; s = scores; t = logit effects; h = histograms).
_JS_DATA_VARS = ("f", "prof", "ex", "q", "x", "s", "t", "h", "logits")
# Written for `lmscope feature --json` readers and not shown by the viewer, with the reason.
NOT_SHOWN = {
    "hook",
    "feature",  # shown together as the id
    "kind",  # implied by the list an example is in (top / quantiles / negatives)
    "details",  # free-form explainer / scorer records
    "explanation_id",  # a score sits under its explanation
}


def _keys(obj, out: set) -> set:
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.add(k)
            _keys(v, out)
    elif isinstance(obj, list):
        for v in obj:
            _keys(v, out)
    return out


def _js_reads() -> set:
    import re
    from pathlib import Path

    src = Path(__file__).resolve().parents[1].joinpath(FEATURE_JS).read_text()
    src = re.sub(r"//[^\n]*", "", src)  # comments name fields too
    names = "|".join(_JS_DATA_VARS)
    return set(re.findall(rf"\b(?:{names})\.([A-Za-z_]\w*)", src))


def test_viewer_reads_every_feature_field_the_api_writes(server):
    st, f = call(server, "GET", f"/api/feature?id={HOOKS[0]}/{PLANTED}")
    assert st == 200
    written = _keys(f, set())
    reads = _js_reads()
    assert written - NOT_SHOWN <= reads, (
        f"written, never shown: {sorted(written - NOT_SHOWN - reads)}"
    )
    assert NOT_SHOWN <= written  # the exceptions are real fields, not stale names
    # ...and the page guesses no field the API does not write (e.g. `ex.activations`)
    assert reads <= written, f"read, never written: {sorted(reads - written)}"


def test_cli_json_is_the_api_json(server, capsys):
    """`lmscope feature --json` and /api/feature are one structure; the API only adds what the
    loaded model gives (the logit histogram over the vocabulary)."""
    from lmscope.cli import main

    st, api = call(server, "GET", f"/api/feature?id={HOOKS[0]}/{PLANTED}")
    assert main(["feature", str(server.reader.atlas), f"{HOOKS[0]}/{PLANTED}", "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert api["logits"].pop("histogram")["counts"] and cli["logits"].pop("histogram") is None
    assert cli == api


def test_feature_ids_one_rule_everywhere(server, capsys):
    from lmscope.cli import main
    from lmscope.dictionaries.feature_id import format_feature_id, parse_feature_id

    assert (
        parse_feature_id(" a/b.c/12 ") == ("a/b.c", 12)
        and format_feature_id("a/b.c", 12) == "a/b.c/12"
    )
    for bad in (
        "blocks.0.resid_post/-3",
        "blocks.0.resid_post/²",
        "blocks.0.resid_post/1.5",
        "/3",
        "3",
    ):
        with pytest.raises(UserError, match="HOOK/INDEX"):
            parse_feature_id(bad)
        st, res = call(server, "GET", f"/api/feature?id={quote(bad)}")
        assert st == 400 and "HOOK/INDEX" in res["error"]
        assert main(["feature", str(server.reader.atlas), bad]) == 2
        assert "HOOK/INDEX" in capsys.readouterr().err


def test_feature_page_for_a_dictionary_the_db_has_not_profiled(demo_atlas_root, tmp_path):
    """The DB's expected answer (UserError: no such dictionary) means no profile and no label;
    the page still has the dictionary's own logit effects and density."""
    import sqlite3

    from lmscope.read import profiles

    root = tmp_path / "a"
    shutil.copytree(demo_atlas_root, root, ignore=shutil.ignore_patterns("model"))
    with sqlite3.connect(root / "atlas.db") as c:
        (did,) = c.execute("SELECT id FROM dictionaries WHERE hook = ?", (HOOKS[1],)).fetchone()
        for table in ("features", "example_sets", "logit_effects", "explanations"):
            c.execute(f"DELETE FROM {table} WHERE dictionary = ?", (did,))
        c.execute("DELETE FROM dictionaries WHERE id = ?", (did,))
    reader = Reader.open(root, max_tokens=16)
    page = profiles.feature_profile(reader, HOOKS[1], PLANTED)
    assert page.profile is None and page.label is None and page.explanations == []
    assert len(page.logits.promoted) == 10 and page.logits.histogram is not None
    assert page.density is not None and 0 < page.density < 1  # from the sparsity file
    assert reader.label(HOOKS[1], PLANTED) is None
    o = profiles.overview(reader)
    assert [d["hook"] for d in o["dictionaries"]] == list(HOOKS) and o["dictionaries"][1][
        "density_histogram"
    ]
    assert profiles.feature_profile(reader, HOOKS[0], PLANTED).label == PLANTED_LABEL
