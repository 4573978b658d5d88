"""The OpenAI-compatible client against real HTTP servers on 127.0.0.1: our local server with a real
tiny transformers model behind it, and a misbehaving real server (500, 429 + Retry-After, malformed
JSON, slow) in front of it; an unreachable port; partial progress + resume of an LLM explain run."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lmscope.atlas.db import AtlasDB
from lmscope.errors import UserError
from lmscope.explain import ExplainConfig, explain_atlas
from lmscope.explain.llm_client import LLMClient, LLMError
from lmscope.explain.local_server import LocalServer
from lmscope.read.demo import HOOKS, build_demo_atlas


@pytest.fixture(scope="module")
def server():
    from lmscope.models.tiny import tiny_model

    with LocalServer(tiny_model("llama", n_layers=2, d_model=32), "tiny") as s:
        yield s


class Faulty:
    """A real HTTP server: answers the first requests from `plan`, then forwards to `upstream`."""

    def __init__(self, upstream: str, plan: list) -> None:
        self.plan, self.hits = list(plan), 0
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.hits += 1
                step = outer.plan.pop(0) if outer.plan else None
                if step is None:
                    req = urllib.request.Request(
                        upstream + self.path.removeprefix("/v1"),
                        data=body,
                        headers={"Content-Type": "application/json"},
                    )
                    code, data, headers = 200, urllib.request.urlopen(req).read(), {}
                else:
                    code, data, headers, delay = step
                    time.sleep(delay)
                self.send_response(code)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


MSG = [{"role": "user", "content": "the horse ran in the field"}]


def test_real_server_chat_usage_cache_no_key_on_disk(server, tmp_path):
    models = json.loads(urllib.request.urlopen(server.url + "/models").read())
    assert models["data"][0]["id"] == "tiny"
    c = LLMClient(
        server.url, "tiny", cache_dir=tmp_path, api_key="sk-SECRET-123", price_in=1.0, price_out=2.0
    )
    a = c.chat(MSG, max_tokens=5)
    assert isinstance(a, str) and c.usage.requests == 1
    assert c.usage.prompt_tokens > 5 and 1 <= c.usage.completion_tokens <= 5
    assert c.usage.cost_usd == pytest.approx(
        (c.usage.prompt_tokens + 2 * c.usage.completion_tokens) / 1e6
    )
    assert c.chat(MSG, max_tokens=5) == a  # greedy + cached
    assert c.usage.requests == 1 and c.usage.cached == 1
    files = list(tmp_path.rglob("*.json"))
    assert len(files) == 1 and "SECRET" not in files[0].read_text()
    # the key is not part of the cache key either
    c2 = LLMClient(server.url, "tiny", cache_dir=tmp_path, api_key="other")
    c2.chat(MSG, max_tokens=5)
    assert c2.usage.cached == 1


def test_retries_500_and_429_retry_after(server):
    f = Faulty(server.url, [(500, b"oops", {}, 0), (429, b"slow down", {"Retry-After": "0.2"}, 0)])
    try:
        c = LLMClient(f.url, "tiny", backoff=0.01, retries=2)
        t = time.perf_counter()
        assert isinstance(c.chat(MSG, max_tokens=3), str)
        assert f.hits == 3 and time.perf_counter() - t >= 0.2  # Retry-After honoured
        f.plan = [(500, b"x", {}, 0)] * 5
        with pytest.raises(LLMError, match="failed after 2 attempts: HTTP 500"):
            LLMClient(f.url, "tiny", backoff=0.01, retries=1).chat(MSG, max_tokens=3)
    finally:
        f.close()


def test_malformed_timeout_unreachable(server):
    f = Faulty(
        server.url,
        [
            (200, b'{"choices": []}', {}, 0),
            (200, b"<html>", {}, 0),
            (200, b"{}", {}, 1.5),
            (401, b"bad key", {}, 0),
        ],
    )
    try:
        c = LLMClient(f.url, "tiny", retries=0, timeout=0.5)
        with pytest.raises(LLMError, match="malformed completion"):
            c.chat(MSG)
        with pytest.raises(LLMError, match="not JSON"):
            c.chat(MSG)
        with pytest.raises(LLMError, match="timed out"):
            c.chat(MSG)
        with pytest.raises(LLMError, match="401.*API key"):
            c.chat(MSG)
    finally:
        f.close()
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(LLMError, match="unreachable"):
        LLMClient(f"http://127.0.0.1:{port}/v1", "m", retries=1, backoff=0.01).chat(MSG)


def test_llm_explain_partial_progress_then_resume(server, tmp_path):
    atlas = build_demo_atlas(tmp_path / "atlas")
    feats = ",".join(f"{HOOKS[0]}/{i}" for i in range(6))
    f = Faulty(server.url, [])
    f.plan = [None, None, None] + [
        (500, b"down", {}, 0)
    ] * 50  # 3 good requests, then the server fails
    try:
        cfg = ExplainConfig(
            atlas=str(atlas),
            features=feats,
            explainer="llm",
            llm=f"openai:{f.url}",
            llm_model="tiny",
            scorers="direct",
            concurrency=1,
            retries=0,
        )
        with pytest.raises(UserError, match="3 features were saved, rerun"):
            explain_atlas(cfg, progress=False)
        with AtlasDB(atlas / "atlas.db") as db:
            assert db._q("SELECT COUNT(*) FROM explanations WHERE method = 'llm'")[0][0] == 3
        f.plan = []  # the server recovers: resume finishes the rest
        r = explain_atlas(cfg, progress=False)
        assert r.skipped == 3 and r.explained == 3 and r.llm_usage["requests"] >= 3
        with AtlasDB(atlas / "atlas.db") as db:
            rows = db._q("SELECT text FROM explanations WHERE method = 'llm'")
            assert len(rows) == 6 and all(t for (t,) in rows)
    finally:
        f.close()


# ---- a scripted OpenAI-compatible server running as its own process (tests/llm_script_server.py)
# ----


class Scripted:
    def __init__(self, fail_first: int = 0) -> None:
        import subprocess
        import sys
        from pathlib import Path

        script = Path(__file__).with_name("llm_script_server.py")
        self.proc = subprocess.Popen(
            [sys.executable, str(script), "--fail-first", str(fail_first)],
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline()
        assert line.startswith("PORT "), line
        self.base = f"http://127.0.0.1:{int(line.split()[1])}"
        self.url = self.base + "/v1"

    def stats(self) -> dict:
        return json.loads(urllib.request.urlopen(self.base + "/stats").read())

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def _scores(db, hook, idx, method):
    ex = [e for e in db.explanations(hook, idx) if e.method == method]
    return ex[0].text, {s.scorer: s.value for s in ex[0].scores}


def test_scripted_server_process_explainer_judges_retry_cache_and_no_secret(tmp_path, monkeypatch):
    import shutil

    from lmscope.read.demo import PLANTED, PLANTED_WORD

    monkeypatch.setenv("LMSCOPE_LLM_API_KEY", "sk-test-SECRET-42")
    feats = ",".join(f"{HOOKS[0]}/{i}" for i in (PLANTED, 1, 2))
    with Scripted(fail_first=1) as srv:
        a = build_demo_atlas(tmp_path / "a")
        shutil.copytree(a, tmp_path / "b")  # a fresh copy for the second run
        cfg = ExplainConfig(
            atlas=str(a),
            features=feats,
            explainer="llm",
            llm=f"openai:{srv.url}",
            llm_model="scripted",
            scorers="direct,detection,fuzzing",
            concurrency=1,
            retries=2,
            baselines=False,
        )
        r = explain_atlas(cfg, progress=False)
        st = srv.stats()
        # the first call got a 500 and was retried; every answered call is one the client counted
        assert r.explained == 3 and st["failed"] == 1 and st["chat"] == r.llm_usage["requests"] > 3
        assert st["auth"] == st["chat"] + 1  # the key went in the header of every request
        with AtlasDB(a / "atlas.db") as db:
            text, sc = _scores(db, HOOKS[0], PLANTED, "llm")
        # the planted feature fires exactly on its word: the scripted explainer names it, and the
        # judges, reading the label the way the script does, separate held-out windows perfectly
        assert text == f"the word {PLANTED_WORD}"
        assert sc["direct"] == 1.0 and sc["detection"] == 1.0 and sc["fuzzing"] == 1.0
        # nothing written anywhere holds the key
        for f in a.rglob("*"):
            if f.is_file():
                assert b"SECRET" not in f.read_bytes(), f
        # a second run over the same features (a fresh atlas, the first run's cache) sends nothing
        b = tmp_path / "b"
        shutil.copytree(a / "llm_cache", b / "llm_cache")
        r2 = explain_atlas(ExplainConfig(**{**cfg.__dict__, "atlas": str(b)}), progress=False)
        assert r2.explained == 3 and r2.llm_usage["requests"] == 0
        assert (
            r2.llm_usage["cached"] == r.llm_usage["requests"] and srv.stats()["chat"] == st["chat"]
        )


def test_triage_and_budget_spend_calls_on_the_weakest_labels_only(tmp_path):
    from lmscope.explain.runner import split_config
    from lmscope.explain.split import split_examples
    from lmscope.explain.stats_explainer import Labeller
    from lmscope.explain.triage import stats_reading
    from lmscope.read.demo import PLANTED

    a = build_demo_atlas(tmp_path / "a")
    ids = [PLANTED] + [i for i in range(12) if i != PLANTED]
    feats = [(HOOKS[0], i) for i in ids]
    lab = Labeller(coherence=False)
    with AtlasDB(a / "atlas.db") as db:
        scfg = split_config(db)
        reading = {
            i: stats_reading(
                db.feature(HOOKS[0], i), split_examples(db.feature(HOOKS[0], i), scfg), lab
            )
            for i in ids
        }
    assert reading[PLANTED][0] == 1.0  # the planted feature's stats label is perfect on validation
    weak = sorted((v, i) for i, (v, s) in reading.items() if v is not None and v < 0.9)
    assert len(weak) >= 3
    with Scripted() as srv:
        cfg = ExplainConfig(
            atlas=str(a),
            features=",".join(f"{h}/{i}" for h, i in feats),
            explainer="llm",
            llm=f"openai:{srv.url}",
            llm_model="scripted",
            scorers="direct",
            concurrency=1,
            baselines=False,
            triage=0.9,
            budget=2,
        )
        with pytest.raises(UserError, match="budget of 2 calls is spent"):
            explain_atlas(cfg, progress=False)
        assert srv.stats()["chat"] == 2
        with AtlasDB(a / "atlas.db") as db:
            got = sorted(i for (i,) in db._q("SELECT idx FROM explanations WHERE method = 'llm'"))
        # the two calls went to the two weakest stats labels (validation), never to the planted one
        assert got == sorted(i for _, i in weak[:2]) and PLANTED not in got


def test_dollar_budget(tmp_path):
    with Scripted() as srv:
        c = LLMClient(
            srv.url, "scripted", price_in=1e6, price_out=0.0, max_cost_usd=5.0
        )  # $1 per prompt token
        c.chat(MSG, max_tokens=3)  # ~6 prompt tokens -> $6 > $5
        from lmscope.explain.llm_client import BudgetSpent

        with pytest.raises(BudgetSpent, match=r"budget of \$5 is spent"):
            c.chat(MSG, max_tokens=3)
        assert srv.stats()["chat"] == 1 and c.usage.cost_usd == pytest.approx(c.usage.prompt_tokens)
