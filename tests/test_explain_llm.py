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
                    req = urllib.request.Request(upstream + self.path.removeprefix("/v1"), data=body,
                                                 headers={"Content-Type": "application/json"})
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
    c = LLMClient(server.url, "tiny", cache_dir=tmp_path, api_key="sk-SECRET-123", price_in=1.0, price_out=2.0)
    a = c.chat(MSG, max_tokens=5)
    assert isinstance(a, str) and c.usage.requests == 1
    assert c.usage.prompt_tokens > 5 and 1 <= c.usage.completion_tokens <= 5
    assert c.usage.cost_usd == pytest.approx((c.usage.prompt_tokens + 2 * c.usage.completion_tokens) / 1e6)
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
    f = Faulty(server.url, [(200, b'{"choices": []}', {}, 0), (200, b"<html>", {}, 0), (200, b"{}", {}, 1.5),
                            (401, b"bad key", {}, 0)])
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
    f.plan = [None, None, None] + [(500, b"down", {}, 0)] * 50  # 3 good requests, then the server fails
    try:
        cfg = ExplainConfig(atlas=str(atlas), features=feats, explainer="llm", llm=f"openai:{f.url}",
                            llm_model="tiny", scorers="direct", concurrency=1, retries=0)
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
