"""`lmscope serve`: a local web viewer over one atlas (stdlib HTTP server, JSON API + static files).

    server = make_server(reader, host="127.0.0.1", port=8765)   # port 0 picks a free port
    server.serve_forever()

Safety, because the pages show model and corpus text and any web page the user visits can send
requests to 127.0.0.1 (docs/security.md has the threat model):
- binds to 127.0.0.1 unless told otherwise (--host);
- DNS rebinding: a request whose Host header is not a loopback name (127.0.0.1, localhost,
  [::1]), the bound address or a name given with --allow-host is refused (403);
- cross-site requests: an API request whose Origin (or, without one, Referer) is not this
  server's own origin, or that a browser marks `Sec-Fetch-Site: cross-site`, is refused (403);
  a POST must say `Content-Type: application/json`, so a cross-site HTML form (which can only
  send text/plain, form or multipart bodies without a CORS preflight) is refused (415);
- bound to a non-loopback address, every request but the packaged static files needs a secret
  token (generated, printed once in the URL as Jupyter does, kept in an HttpOnly SameSite=Strict
  cookie after the first visit; compared in constant time);
- slow or many clients: a bounded pool of handler threads (`Limits.max_threads`) with a bounded
  queue of waiting connections (503 beyond it), a deadline for reading a request's line and
  headers and one for its body (a client that sends nothing, or a byte a second, is cut off),
  and a bounded queue of model runs (`Limits.max_model_queue`, 503 + Retry-After when full);
- request bodies are capped (`Limits.max_body_bytes`, 413) and prompts capped in tokens
  (the Reader's max_tokens, 400) and characters;
- files are served only from the packaged static folder and the atlas's plots/ folder, after
  resolving the path (no `..`, no symlink escapes); graph JSON only from ATLAS/graphs/, by plain
  file name, resolved inside the atlas folder;
- steer and graph requests are bounded (`Limits`: tokens generated, interventions, graph prompt
  length, feature nodes, estimated memory) and run under the Reader's model lock;
- every error is a JSON `{"error": message}` with a 4xx status; an unexpected exception is a
  500 with a one-line message, never a traceback sent to the client;
- the front end writes every model string with textContent (never innerHTML).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import mimetypes
import queue
import secrets
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

from ..config import flag
from ..errors import UserError
from .routes import MODEL_RUNS, ROUTES, ApiError, Request, load_api_modules

STATIC = Path(__file__).parent / "static"


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 64 * 1024
    """Largest accepted request body (413 beyond)."""
    max_text_chars: int = 20_000
    """Largest text field (the token limit is checked after tokenizing)."""
    max_generate: int = 64
    """Most new tokens a steer request generates (each one is a forward pass, twice)."""
    max_interventions: int = 16
    """Most feature interventions (and target tokens) in one steer request."""
    max_graph_tokens: int = 32
    """Longest prompt, in tokens, the graph page builds a graph for."""
    max_graph_feature_nodes: int = 512
    """Most feature nodes whose incoming edges a graph request computes."""
    max_graph_memory_gb: float = 4.0
    """A graph request whose estimated memory exceeds this is refused (400)."""
    max_graph_file_bytes: int = 64 * 2**20
    """Largest graph JSON the viewer reads from ATLAS/graphs/."""
    max_threads: int = 64
    """Handler threads (each serves one connection at a time); the pool never grows beyond it."""
    max_waiting_connections: int = 128
    """Accepted connections waiting for a free handler thread; beyond it a 503 is sent at once."""
    idle_timeout_s: float = 5.0
    """A kept-alive connection that sends no new request within this is closed."""
    header_timeout_s: float = 10.0
    """Deadline for a request's line and headers, from its first byte (slowloris)."""
    min_body_rate: int = 1024
    """Bytes per second a body must at least arrive at (after body_grace_s): slower ones are cut."""
    body_grace_s: float = 10.0
    """Time every body gets before min_body_rate applies."""
    max_model_queue: int = 32
    """Model runs (scan, compare, text search, steer, graph) running or waiting; 503 beyond."""


@dataclass(frozen=True)
class ServeConfig:
    """`lmscope serve`: the local web viewer over an atlas."""

    atlas: str
    """atlas folder"""
    host: str = "127.0.0.1"
    """interface to bind (0.0.0.0 exposes the viewer to your network)"""
    port: int = 8765
    """port (0 picks a free one)"""
    allow_host: tuple[str, ...] = flag((), action="append", metavar="NAME")
    """also accept this name in the Host header (repeatable; loopback names are always accepted, any
    other name is refused as DNS rebinding; '*' accepts any, only behind a proxy that checks it)"""
    open: bool = flag(False, action="store_true")
    """open the viewer in the default browser"""
    max_tokens: int = 256
    """longest prompt accepted, in tokens"""
    max_body_kb: int = 64
    """largest request body in KiB"""
    max_generate: int = 64
    """most new tokens the steer page generates per request"""
    max_graph_tokens: int = 32
    """longest prompt, in tokens, the graph page builds a graph for"""
    hooks: str | None = None
    """only these dictionaries (names or globs, comma-separated)"""
    model: str | None = None
    """override the atlas's model (same architecture)"""
    device: str = "cpu"
    """torch device"""
    threads: int = 1
    """torch intra-op threads per scan (on a shared CPU, 2+ threads stall in OpenMP barriers:
    measured 0.37 s vs 2.5-13 s per 64-token scan at load 12 on 2 cores; raise it for large
    models on an idle machine)"""
    verbose: bool = flag(False, action="store_true")
    """log every request"""

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--port must be between 0 and 65535, got {self.port}")
        at_least_1 = (self.max_tokens, self.max_body_kb, self.threads, self.max_graph_tokens)
        if min(at_least_1) < 1 or self.max_generate < 0:
            raise ValueError(
                "--max-tokens, --max-body-kb, --threads and --max-graph-tokens must be "
                ">= 1, --max-generate >= 0"
            )

    def limits(self) -> Limits:
        return Limits(
            max_body_bytes=self.max_body_kb * 1024,
            max_generate=self.max_generate,
            max_graph_tokens=self.max_graph_tokens,
        )


def confined(root: Path, rel: str) -> Path | None:
    """root/rel if it resolves inside root and is a file, else None (traversal, symlinks, dirs)."""
    if "\x00" in rel:
        return None
    root = root.resolve()
    try:
        path = (root / rel.lstrip("/")).resolve()
    except (OSError, RuntimeError):
        return None
    if not path.is_relative_to(root) or not path.is_file():
        return None
    return path


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def split_host(value: str) -> tuple[str, str | None] | None:
    """('name', 'port' or None) from a Host header value, lower-cased; None when malformed."""
    value = value.strip().lower()
    if not value or any(c.isspace() or c in "/\\@?#" for c in value):
        return None
    if value.startswith("["):  # [::1]:8765
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[1:end], value[end + 1 :]
        if rest and not rest.startswith(":"):
            return None
        port = rest[1:] or None
    elif value.count(":") == 1:
        name, port = value.split(":")
    elif ":" in value:  # a bare IPv6 address is not a valid Host
        return None
    else:
        name, port = value, None
    if port is not None and not port.isdigit():
        return None
    return name.rstrip("."), port


def is_loopback(name: str) -> bool:
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class Handler(BaseHTTPRequestHandler):
    server_version = "lmscope"
    sys_version = ""  # do not advertise the Python version
    protocol_version = "HTTP/1.1"

    # --- plumbing --------------------------------------------------------------------------
    def setup(self) -> None:
        # Per-recv timeout: a connection that sends nothing is closed after idle_timeout_s.
        self.timeout = self.server.limits.idle_timeout_s
        super().setup()
        # Headers and body leave in one write, and without Nagle's wait: otherwise each response
        # waits for the client's delayed ACK (~40 ms on Linux; measured 48 ms p50 for a DB lookup).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def handle_one_request(self) -> None:
        # Whole-request deadline for the request line and headers (a per-recv timeout alone
        # lets a client trickle one byte every few seconds forever): the server's reaper shuts
        # the socket down when it passes.
        lim: Limits = self.server.limits
        self.server.watch(self.connection, lim.idle_timeout_s + lim.header_timeout_s)
        try:
            super().handle_one_request()
        finally:
            self.server.unwatch(self.connection)

    def log_message(self, fmt, *args) -> None:
        if getattr(self.server, "verbose", False):
            super().log_message(fmt, *args)

    def _send(self, status: int, body: bytes, ctype: str, *, extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")  # no clickjacking through a framing page
        self.send_header("Referrer-Policy", "no-referrer")  # the token never leaks in a Referer
        # The page loads only its own scripts and styles: no CDN, no inline script.
        self.send_header(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
            "frame-ancestors 'none'",
        )
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        if self.server.crowded():  # others wait for a thread: do not keep this one idle for us
            self.close_connection = True
        if self.close_connection:
            self.send_header("Connection", "close")
        self._headers_buffer.append(b"\r\n")  # end_headers() without its flush
        if self.command != "HEAD":
            self._headers_buffer.append(body)
        self.flush_headers()

    def _json(self, status: int, obj, extra: dict | None = None) -> None:
        body = json.dumps(obj, allow_nan=False, default=str).encode()
        self._send(
            status,
            body,
            "application/json; charset=utf-8",
            extra={"Cache-Control": "no-store", **(extra or {})},
        )

    def _error(self, status: int, message: str, extra: dict | None = None) -> None:
        self._json(status, {"error": message, "status": status}, extra)

    # --- methods -----------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._error(405, "method not allowed")

    do_DELETE = do_PATCH = do_OPTIONS = do_PUT

    def _dispatch(self, method: str) -> None:
        # The headers are in: the header deadline ends (a model run may take longer).
        self.server.unwatch(self.connection)
        try:
            url = urlsplit(self.path)
            path = unquote(url.path)
            if self._guard(method, path, url.query):
                return
            if path.startswith("/api/"):
                self._api(method, path, url.query)
            elif method != "GET":
                self._error(405, "method not allowed")
            else:
                self._static(path)
        except ApiError as e:
            self._error(e.status, e.message, e.headers)
        except UserError as e:
            self._error(400, str(e))
        except OSError:  # the client went away, or the reaper cut a slow one off
            self.close_connection = True
        except Exception as e:  # never a traceback to the client; log it for the operator
            traceback.print_exc(file=sys.stderr)
            self._error(500, f"internal error ({type(e).__name__}); see the server log")

    # --- who may ask ---------------------------------------------------------------------------
    def _guard(self, method: str, path: str, qs: str) -> bool:
        """Refuse DNS-rebound, cross-site and unauthenticated requests; True when answered here."""
        srv: ViewerServer = self.server
        host = self.headers.get("Host", "")
        parsed = split_host(host)
        if parsed is None or not srv.host_allowed(parsed[0]):
            # DNS rebinding: a page on evil.example whose name now resolves to 127.0.0.1.
            self.close_connection = True
            raise ApiError(
                403,
                f"Host {host[:100]!r} is not allowed (DNS-rebinding protection); open "
                f"{srv.local_url()} or start lmscope serve with --allow-host NAME",
            )
        if path.startswith("/api/") or method != "GET":
            self._check_origin(host)
        if method == "POST":
            ctype = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if ctype != "application/json":
                # Cross-site forms and simple fetches can only send text/plain, urlencoded or
                # multipart bodies without a CORS preflight: refusing them closes that door.
                self.close_connection = True
                raise ApiError(
                    415, "POST bodies must be JSON sent with Content-Type: application/json"
                )
        if srv.token is not None and not path.startswith("/static/"):
            return self._check_token(method, path, qs)
        return False

    def _check_origin(self, host: str) -> None:
        origin = self.headers.get("Origin")
        if self.headers.get("Sec-Fetch-Site", "").lower() == "cross-site":
            raise ApiError(403, "cross-site request refused (Sec-Fetch-Site: cross-site)")
        source, kind = (
            (origin, "Origin") if origin is not None else (self.headers.get("Referer"), "Referer")
        )
        if source is None:
            return  # not sent by a browser page (curl, scripts); browsers send Origin on every POST
        u = urlsplit(source.strip())
        if (
            source.strip() == "null"
            or u.scheme not in ("http", "https")
            or u.netloc.lower() != host.lower()
        ):
            self.close_connection = True
            raise ApiError(
                403,
                f"cross-origin request refused ({kind} {source[:100]!r} is not this "
                "server's own page)",
            )

    def _check_token(self, method: str, path: str, qs: str) -> bool:
        srv: ViewerServer = self.server
        given = parse_qs(qs).get("token", [None])[0]
        if (
            given is not None
            and srv.token_ok(given)
            and method == "GET"
            and not path.startswith("/api/")
        ):
            # First visit through the printed URL: keep the token in a cookie and drop it from
            # the address bar (and from history) with a redirect.
            rest = {k: v for k, v in parse_qs(qs, keep_blank_values=True).items() if k != "token"}
            target = path + ("?" + urlencode(rest, doseq=True) if rest else "")
            self._send(
                303,
                b"",
                "text/plain; charset=utf-8",
                extra={
                    "Location": target,
                    "Cache-Control": "no-store",
                    "Set-Cookie": f"{srv.cookie_name}={srv.token}; Path=/; HttpOnly; "
                    "SameSite=Strict",
                },
            )
            return True
        candidates = [given, self._cookie(srv.cookie_name)]
        auth = self.headers.get("Authorization", "")
        if auth.lower().startswith(("token ", "bearer ")):
            candidates.append(auth.split(None, 1)[1].strip() if " " in auth else "")
        if any(c is not None and srv.token_ok(c) for c in candidates):
            return False
        self.close_connection = True
        raise ApiError(
            403,
            "this viewer needs its token: open the URL with ?token=... that "
            "`lmscope serve` printed when it started",
        )

    def _cookie(self, name: str) -> str | None:
        for part in self.headers.get("Cookie", "").split(";"):
            k, _, v = part.strip().partition("=")
            if k == name:
                return v
        return None

    # --- what they ask -----------------------------------------------------------------------
    def _read_body(self) -> dict:
        limits: Limits = self.server.limits
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self.close_connection = True
            raise ApiError(411, "chunked bodies are not accepted; send Content-Length")
        try:
            n = int(length or 0)
        except ValueError:
            self.close_connection = True
            raise ApiError(400, "bad Content-Length") from None
        if n < 0:
            self.close_connection = True
            raise ApiError(400, "bad Content-Length")
        if n > limits.max_body_bytes:
            # Do not read it; close the connection so the rest is not parsed as a request.
            self.close_connection = True
            raise ApiError(
                413, f"request body too large ({n} bytes, at most {limits.max_body_bytes})"
            )
        # A body slower than min_body_rate (after a grace) is cut off by the reaper.
        self.server.watch(self.connection, limits.body_grace_s + n / limits.min_body_rate)
        try:
            raw = self.rfile.read(n) if n else b""
        finally:
            self.server.unwatch(self.connection)
        if len(raw) < n:
            self.close_connection = True
            raise ApiError(408, "request body arrived too slowly or incompletely")
        if not raw:
            raise ApiError(400, "missing JSON body")
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ApiError(400, f"body is not valid JSON ({e.__class__.__name__})") from None
        if not isinstance(body, dict):
            raise ApiError(400, "body must be a JSON object")
        return body

    def _api(self, method: str, path: str, qs: str) -> None:
        if path == "/api/pages":
            self._json(200, {"pages": page_scripts()})
            return
        fn = ROUTES.get((method, path))
        if fn is None:
            if any(p == path for _, p in ROUTES):
                raise ApiError(405, f"{method} not allowed on {path}")
            raise ApiError(404, f"no API endpoint {path}")
        body = self._read_body() if method == "POST" else {}
        req = Request(
            reader=self.server.reader,
            query=Request.parse_query(qs),
            body=body,
            limits=self.server.limits,
        )
        runs_model = MODEL_RUNS.get((method, path))
        if runs_model is not None and runs_model(req):
            with self.server.model_slot():
                result = fn(req)
        else:
            result = fn(req)
        self._json(200, result)

    def _static(self, path: str) -> None:
        if path in ("/", "/index.html"):
            file = STATIC / "index.html"
        elif path.startswith("/static/"):
            file = confined(STATIC, path[len("/static/") :])
        elif path.startswith("/plots/") and self.server.reader.atlas is not None:
            file = confined(Path(self.server.reader.atlas) / "plots", path[len("/plots/") :])
        else:
            file = None
        if file is None:
            raise ApiError(404, f"not found: {path[:200]}")
        ctype = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        if ctype.startswith("text/") or ctype in ("application/javascript",):
            ctype += "; charset=utf-8"
        self._send(200, file.read_bytes(), ctype)


def page_scripts() -> list[str]:
    """Front-end page modules: every static/pages/*.js, in name order (prefix digits to order)."""
    return [f"/static/pages/{p.name}" for p in sorted((STATIC / "pages").glob("*.js"))]


_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\n"
    b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
)


class ViewerServer(HTTPServer):
    """HTTPServer with a fixed pool of handler threads, deadlines and a bounded model-run queue.

    The stdlib ThreadingHTTPServer starts a thread per connection without bound, so a client
    that opens thousands of silent connections pins thousands of threads. Here the accept loop
    hands connections to `limits.max_threads` workers through a queue of at most
    `limits.max_waiting_connections`; beyond that the connection gets a 503 at once.
    """

    request_queue_size = 64  # the kernel's accept backlog

    def __init__(
        self,
        addr,
        reader,
        limits: Limits,
        verbose: bool = False,
        *,
        token: str | None = None,
        allow_hosts: tuple[str, ...] = (),
    ) -> None:
        self.reader = reader
        self.limits = limits
        self.verbose = verbose
        self.token = token
        self.allow_hosts = {h.lower().strip("[]").rstrip(".") for h in allow_hosts}
        if ":" in addr[0]:
            self.address_family = socket.AF_INET6
        super().__init__(addr, Handler)
        self.cookie_name = f"lmscope_token_{self.server_address[1]}"
        bound = addr[0].lower().strip("[]")
        if bound and bound not in ("0.0.0.0", "::"):
            self.allow_hosts.add(bound)
        elif bound:  # every interface: the machine's own names and addresses
            self.allow_hosts |= _own_names()
        self._conns: queue.Queue = queue.Queue(maxsize=limits.max_waiting_connections)
        self._deadlines: dict[socket.socket, float] = {}
        self._deadline_lock = threading.Lock()
        self._model_slots = threading.BoundedSemaphore(limits.max_model_queue)
        self._stopping = threading.Event()
        self._workers = [
            threading.Thread(target=self._work, daemon=True, name=f"lmscope-http-{i}")
            for i in range(limits.max_threads)
        ]
        for t in self._workers:
            t.start()
        threading.Thread(target=self._reap, daemon=True, name="lmscope-http-reaper").start()

    # --- who may connect ---------------------------------------------------------------------
    def host_allowed(self, name: str) -> bool:
        return is_loopback(name) or name in self.allow_hosts or "*" in self.allow_hosts

    def token_ok(self, given: str) -> bool:
        return self.token is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def local_url(self) -> str:
        host, port = self.server_address[:2]
        if host in ("0.0.0.0", "::", "") or is_loopback(host):
            host = "127.0.0.1"
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"

    # --- the pool ------------------------------------------------------------------------------
    def process_request(self, request, client_address) -> None:
        try:
            self._conns.put_nowait((request, client_address))
        except queue.Full:
            msg = json.dumps(
                {
                    "error": "the viewer is busy (too many connections); retry in a moment",
                    "status": 503,
                }
            ).encode()
            try:
                request.settimeout(1.0)
                request.sendall(_BUSY % (len(msg), msg))
            except OSError:
                pass
            self.shutdown_request(request)

    def _work(self) -> None:
        while True:
            item = self._conns.get()
            if item is None:
                return
            request, client_address = item
            try:
                self.finish_request(request, client_address)
            except Exception:
                if self.verbose:
                    self.handle_error(request, client_address)
            finally:
                self.unwatch(request)
                self.shutdown_request(request)

    def crowded(self) -> bool:
        """Connections are waiting for a handler thread."""
        return not self._conns.empty()

    def server_close(self) -> None:
        super().server_close()
        self._stopping.set()
        for _ in self._workers:
            try:
                self._conns.put_nowait(None)
            except queue.Full:
                break

    # --- deadlines ---------------------------------------------------------------------------
    def watch(self, conn: socket.socket, seconds: float) -> None:
        with self._deadline_lock:
            self._deadlines[conn] = time.monotonic() + seconds

    def unwatch(self, conn: socket.socket) -> None:
        with self._deadline_lock:
            self._deadlines.pop(conn, None)

    def _reap(self) -> None:
        while not self._stopping.wait(0.25):
            now = time.monotonic()
            with self._deadline_lock:
                late = [c for c, t in self._deadlines.items() if t < now]
                for c in late:
                    del self._deadlines[c]
            for c in late:
                try:
                    c.shutdown(socket.SHUT_RDWR)  # the blocked read returns; the worker moves on
                except OSError:
                    pass

    # --- model runs ----------------------------------------------------------------------------
    def model_slot(self):
        """Context manager: a place in the bounded queue of model runs, or ApiError(503)."""
        server = self

        class _Slot:
            def __enter__(self):
                if not server._model_slots.acquire(blocking=False):
                    raise ApiError(
                        503,
                        f"the model is busy ({server.limits.max_model_queue} runs "
                        "queued); retry in a moment",
                        headers={"Retry-After": "2"},
                    )

            def __exit__(self, *exc):
                server._model_slots.release()

        return _Slot()


def _own_names() -> set[str]:
    names = set()
    try:
        hn = socket.gethostname()
        names |= {hn.lower(), socket.getfqdn().lower()}
        names |= set(socket.gethostbyname_ex(hn)[2])
    except OSError:
        pass
    return names


def needs_token(host: str) -> bool:
    """A server bound to anything but a loopback address is reachable by others: it needs a
    token."""
    return not is_loopback(host.strip("[]"))


def make_server(
    reader,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    limits: Limits | None = None,
    verbose: bool = False,
    token: str | None = None,
    allow_hosts: tuple[str, ...] = (),
) -> ViewerServer:
    """A ready (not yet serving) viewer server; port 0 picks a free port (see .server_address).

    token: the secret every request must carry; None generates one when `host` is not a loopback
    address (read it back as `.token`), and uses none on loopback. allow_hosts: extra names
    accepted in the Host header ("*": any, for use behind a reverse proxy that checks it).
    """
    load_api_modules()
    limits = limits or Limits()
    if token is None and needs_token(host):
        token = secrets.token_urlsafe(32)
    if token is not None and len(token) < 16:
        raise UserError("the viewer token must be at least 16 characters")
    try:
        return ViewerServer(
            (host.strip("[]"), port),
            reader,
            limits,
            verbose=verbose,
            token=token,
            allow_hosts=tuple(allow_hosts),
        )
    except OSError as e:
        raise UserError(
            f"cannot listen on {host}:{port} ({e.strerror}); pick another --port"
        ) from None
