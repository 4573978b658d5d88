"""Attacks on the viewer as real HTTP requests over real sockets: each one refused (403 / 415 /
503).

DNS rebinding (a foreign Host header), cross-site POSTs (foreign Origin / Referer, a browser's
Sec-Fetch-Site, text/plain and form bodies), a missing or wrong token on a server that needs one,
clients that send nothing or trickle bytes, more connections than handler threads, more model runs
than the queue holds. Each test also checks that the normal request still works.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time

import pytest

from lmscope.read import Reader
from lmscope.viewer.server import Limits, make_server, needs_token, split_host


def _start(root, **kw):
    reader = Reader.open(root, max_tokens=16)
    srv = make_server(reader, port=0, **kw)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


@pytest.fixture(scope="module")
def atlas(demo_atlas_root):
    return demo_atlas_root


@pytest.fixture(scope="module")
def server(atlas):
    srv = _start(
        atlas,
        limits=Limits(
            idle_timeout_s=1.0, header_timeout_s=1.5, body_grace_s=1.0, min_body_rate=100
        ),
    )
    yield srv
    srv.shutdown()
    srv.server_close()


def raw(srv, head: str, body: bytes = b"", timeout: float = 30) -> tuple[int, dict, bytes]:
    """Send `head` (request line + headers, \\n-separated) and body as bytes; (status, headers,
    body)."""
    host, port = srv.server_address[:2]
    data = head.strip().replace("\n", "\r\n").format(port=port).encode() + b"\r\n"
    data += f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(data)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    top, _, payload = reply.partition(b"\r\n\r\n")
    lines = top.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    return int(lines[0].split()[1]), headers, payload


SCAN = json.dumps({"prompt": "the horse ran", "top_k": 1}).encode()


@pytest.mark.parametrize(
    "host, status",
    [
        ("127.0.0.1:{port}", 200),
        ("localhost:{port}", 200),
        ("[::1]:{port}", 200),
        ("127.0.0.1", 200),
        ("LOCALHOST:{port}", 200),
        ("evil.example:{port}", 403),
        ("evil.example", 403),
        ("127.0.0.1.evil.example:{port}", 403),
        ("localhost.evil.example", 403),
        ("10.0.0.1:{port}", 403),
        ("", 403),
        ("127.0.0.1:x", 403),
        ("a@127.0.0.1", 403),
    ],
)
def test_dns_rebinding_host_header(server, host, status):
    st, _, body = raw(server, f"GET /api/info HTTP/1.1\nHost: {host}")
    assert st == status, body
    if status == 403:
        assert b"DNS-rebinding" in body and b"datasets" not in body
    st, _, _ = raw(server, f"GET / HTTP/1.1\nHost: {host}")  # the page itself too
    assert st == status


def test_request_without_host_is_refused(server):
    st, _, body = raw(server, "GET /api/info HTTP/1.0")
    assert st == 403


@pytest.mark.parametrize(
    "extra, ctype, status",
    [
        ("Origin: http://127.0.0.1:{port}", "application/json", 200),
        (
            "Referer: http://localhost:{port}/#/scan\nHost: localhost:{port}",
            "application/json",
            200,
        ),
        ("", "application/json", 200),  # curl, scripts: no Origin, no Referer
        ("Origin: http://evil.example", "application/json", 403),
        ("Origin: null", "application/json", 403),
        (
            "Origin: http://127.0.0.1:1",
            "application/json",
            403,
        ),  # another local port, another origin
        ("Origin: http://127.0.0.1:{port}.evil.example", "application/json", 403),
        ("Referer: http://evil.example/page", "application/json", 403),
        ("Sec-Fetch-Site: cross-site", "application/json", 403),
        ("Origin: http://evil.example", "text/plain", 403),  # a cross-site fetch without preflight
        (
            "Origin: http://evil.example",
            "application/x-www-form-urlencoded",
            403,
        ),  # a cross-site form
        ("", "text/plain", 415),
        ("", "application/x-www-form-urlencoded", 415),
        ("", "multipart/form-data; boundary=x", 415),
        ("", "", 415),
    ],
)
def test_cross_origin_posts(server, extra, ctype, status):
    head = "POST /api/scan HTTP/1.1\n" + ("" if "Host:" in extra else "Host: 127.0.0.1:{port}\n")
    head += extra + ("\n" if extra else "") + (f"Content-Type: {ctype}" if ctype else "")
    st, _, body = raw(server, head, SCAN)
    assert st == status, body
    if status == 200:
        assert json.loads(body)["tokens"] == ["<bos>", "the", "horse", "ran"]


def test_cross_origin_get_of_the_api_is_refused(server):
    st, _, _ = raw(
        server, "GET /api/info HTTP/1.1\nHost: 127.0.0.1:{port}\nOrigin: http://evil.example"
    )
    assert st == 403
    st, _, _ = raw(
        server, "GET /api/info HTTP/1.1\nHost: 127.0.0.1:{port}\nOrigin: http://127.0.0.1:{port}"
    )
    assert st == 200


def test_split_host_and_token_policy():
    assert split_host("[::1]:80") == ("::1", "80") and split_host("LocalHost.:1") == (
        "localhost",
        "1",
    )
    assert split_host("::1") is None and split_host("a b") is None and split_host("x/y") is None
    assert (
        not needs_token("127.0.0.1") and not needs_token("localhost") and not needs_token("[::1]")
    )
    assert needs_token("0.0.0.0") and needs_token("192.168.1.5") and needs_token("::")


TOKEN = "s3cret-" + "x" * 40


@pytest.fixture(scope="module")
def token_server(atlas):
    # A loopback server with an explicit token: the same checks a non-loopback one makes, without
    # exposing anything beyond 127.0.0.1 during the test.
    srv = _start(atlas, token=TOKEN)
    yield srv
    srv.shutdown()
    srv.server_close()


def test_token_required_on_every_call(token_server):
    cookie = f"Cookie: {token_server.cookie_name}={TOKEN}"
    get = "GET {path} HTTP/1.1\nHost: 127.0.0.1:{port}"
    for path in ("/api/info", "/", "/api/pages", "/plots/x.png"):
        st, _, body = raw(token_server, get.replace("{path}", path))
        assert st == 403 and b"token" in body, path
    for bad in ("wrong", TOKEN[:-1], TOKEN + "x", ""):
        st, _, _ = raw(
            token_server,
            get.replace("{path}", "/api/info") + f"\nCookie: {token_server.cookie_name}={bad}",
        )
        assert st == 403
        st, _, _ = raw(token_server, get.replace("{path}", f"/api/info?token={bad}"))
        assert st == 403
    st, _, _ = raw(token_server, get.replace("{path}", "/static/app.js"))  # packaged code: public
    assert st == 200
    # The printed URL: a cookie, then a redirect that drops the token from the address bar.
    st, h, _ = raw(token_server, get.replace("{path}", f"/?token={TOKEN}"))
    assert st == 303 and h["location"] == "/"
    assert h["set-cookie"].startswith(f"{token_server.cookie_name}={TOKEN};")
    assert "HttpOnly" in h["set-cookie"] and "SameSite=Strict" in h["set-cookie"]
    for auth in (cookie, f"Authorization: token {TOKEN}", f"Authorization: Bearer {TOKEN}"):
        st, _, body = raw(token_server, get.replace("{path}", "/api/info") + "\n" + auth)
        assert st == 200 and b"hooks" in body
    st, _, _ = raw(
        token_server,
        "POST /api/scan HTTP/1.1\nHost: 127.0.0.1:{port}\n"
        f"Content-Type: application/json\n{cookie}",
        SCAN,
    )
    assert st == 200
    # The token does not let a foreign Host or Origin in.
    st, _, _ = raw(token_server, "GET /api/info HTTP/1.1\nHost: evil.example\n" + cookie)
    assert st == 403


def _closed_by_server(s: socket.socket, limit_s: float = 30) -> bool:
    """True once the server closes (EOF or reset) `s`; False if still open after limit_s."""
    s.settimeout(limit_s)
    try:
        while s.recv(4096):
            pass
        return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def _ok(srv) -> bool:
    st, _, _ = raw(srv, "GET /api/info HTTP/1.1\nHost: 127.0.0.1:{port}")
    return st == 200


def test_silent_and_trickling_clients_are_cut_off(server):
    host, port = server.server_address[:2]
    silent = socket.create_connection((host, port))
    assert _closed_by_server(silent)  # sends nothing: closed after the idle timeout
    # Headers one byte at a time, each byte well within the per-read timeout: the whole-request
    # deadline still cuts it off long before the 200 bytes are sent.
    trickle = socket.create_connection((host, port))
    head = b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * 200
    sent, cut = 0, False
    try:
        for b in head:
            trickle.sendall(bytes([b]))
            sent += 1
            time.sleep(0.05)
    except (BrokenPipeError, ConnectionResetError):
        cut = True
    assert cut or _closed_by_server(trickle, 5)
    # A body slower than min_body_rate after the grace: cut, and the server answers others.
    slow = socket.create_connection((host, port))
    slow.sendall(
        b"POST /api/scan HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 5000\r\n\r\n{"
    )
    assert _closed_by_server(slow)
    assert _ok(server)
    for s in (silent, trickle, slow):
        s.close()


def test_thread_pool_is_bounded_and_overflow_gets_503(atlas):
    srv = _start(
        atlas,
        limits=Limits(
            max_threads=2, max_waiting_connections=1, idle_timeout_s=30, header_timeout_s=30
        ),
    )
    try:
        host, port = srv.server_address[:2]
        before = threading.active_count()

        # 2 connections occupy the workers, 1 waits, the other 3 must get a 503 at once (which
        # ones depends on scheduling, so count replies instead of naming connections).
        def settle(n_waiting):  # wait (bounded) until the accept loop has handed connections out
            end = time.monotonic() + 30
            while srv._conns.qsize() != n_waiting and time.monotonic() < end:
                time.sleep(0.05)

        conns = []
        for i in range(3):
            conns.append(socket.create_connection((host, port)))
            time.sleep(0.2)
            settle(0 if i < 2 else 1)
        conns += [socket.create_connection((host, port)) for _ in range(3)]
        replies: dict[int, bytes] = {}
        deadline = time.monotonic() + 30
        while len(replies) < 3 and time.monotonic() < deadline:
            ready, _, _ = select.select(
                [c for i, c in enumerate(conns) if i not in replies], [], [], 1
            )
            for c in ready:
                data = b""
                while chunk := c.recv(4096):
                    data += chunk
                replies[conns.index(c)] = data
        assert len(replies) == 3, replies
        for r in replies.values():
            assert r.startswith(b"HTTP/1.1 503") and b"busy" in r and b"Retry-After: 1" in r
        assert threading.active_count() == before  # no thread per connection
        for s in conns:
            s.close()
        deadline = time.monotonic() + 30
        while not _ok(srv) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _ok(srv)
    finally:
        srv.shutdown()
        srv.server_close()


def test_model_run_queue_full_is_503(atlas):
    srv = _start(atlas, limits=Limits(max_model_queue=1))
    try:
        assert srv._model_slots.acquire(blocking=False)  # one model run in flight
        st, h, body = raw(
            srv, "POST /api/scan HTTP/1.1\nHost: 127.0.0.1\nContent-Type: application/json", SCAN
        )
        assert st == 503 and h["retry-after"] == "2" and b"model is busy" in body
        st, _, _ = raw(srv, "GET /api/search?mode=text&q=horse HTTP/1.1\nHost: 127.0.0.1")
        assert st == 503
        st, _, _ = raw(srv, "GET /api/search?mode=labels&q=horse HTTP/1.1\nHost: 127.0.0.1")
        assert st == 200  # a DB lookup does not queue behind the model
        srv._model_slots.release()
        st, _, _ = raw(
            srv, "POST /api/scan HTTP/1.1\nHost: 127.0.0.1\nContent-Type: application/json", SCAN
        )
        assert st == 200
    finally:
        srv.shutdown()
        srv.server_close()
