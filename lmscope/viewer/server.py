"""`lmscope serve`: a local web viewer over one atlas (stdlib HTTP server, JSON API + static files).

    server = make_server(reader, host="127.0.0.1", port=8765)   # port 0 picks a free port
    server.serve_forever()

Safety, because the pages show model and corpus text and a browser talks to it:
- binds to 127.0.0.1 unless told otherwise (--host);
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

import json
import mimetypes
import sys
import traceback
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ..errors import UserError
from .routes import ROUTES, ApiError, Request, load_api_modules

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


class Handler(BaseHTTPRequestHandler):
    server_version = "lmscope"
    sys_version = ""  # do not advertise the Python version
    protocol_version = "HTTP/1.1"

    # --- plumbing --------------------------------------------------------------------------
    def log_message(self, fmt, *args) -> None:
        if getattr(self.server, "verbose", False):
            super().log_message(fmt, *args)

    def _send(self, status: int, body: bytes, ctype: str, *, extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        # The page loads only its own scripts and styles: no CDN, no inline script.
        self.send_header("Content-Security-Policy",
                         "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj) -> None:
        body = json.dumps(obj, allow_nan=False, default=str).encode()
        self._send(status, body, "application/json; charset=utf-8", extra={"Cache-Control": "no-store"})

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message, "status": status})

    # --- methods -----------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._error(405, "method not allowed")

    do_DELETE = do_PATCH = do_PUT

    def _dispatch(self, method: str) -> None:
        try:
            url = urlsplit(self.path)
            path = unquote(url.path)
            if path.startswith("/api/"):
                self._api(method, path, url.query)
            elif method != "GET":
                self._error(405, "method not allowed")
            else:
                self._static(path)
        except ApiError as e:
            self._error(e.status, e.message)
        except UserError as e:
            self._error(400, str(e))
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as e:  # never a traceback to the client; log it for the operator
            traceback.print_exc(file=sys.stderr)
            self._error(500, f"internal error ({type(e).__name__}); see the server log")

    def _read_body(self) -> dict:
        limits: Limits = self.server.limits
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            raise ApiError(411, "chunked bodies are not accepted; send Content-Length")
        try:
            n = int(length or 0)
        except ValueError:
            raise ApiError(400, "bad Content-Length") from None
        if n < 0:
            raise ApiError(400, "bad Content-Length")
        if n > limits.max_body_bytes:
            # Do not read it; close the connection so the rest is not parsed as a request.
            self.close_connection = True
            raise ApiError(413, f"request body too large ({n} bytes, at most {limits.max_body_bytes})")
        raw = self.rfile.read(n) if n else b""
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
        req = Request(reader=self.server.reader, query=Request.parse_query(qs), body=body,
                      limits=self.server.limits)
        self._json(200, fn(req))

    def _static(self, path: str) -> None:
        if path in ("/", "/index.html"):
            file = STATIC / "index.html"
        elif path.startswith("/static/"):
            file = confined(STATIC, path[len("/static/"):])
        elif path.startswith("/plots/") and self.server.reader.atlas is not None:
            file = confined(Path(self.server.reader.atlas) / "plots", path[len("/plots/"):])
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


class ViewerServer(ThreadingHTTPServer):
    daemon_threads = True
    # Bounded: a slow client cannot pile up unbounded threads doing model runs; runs are also
    # serialized by the Reader's lock.
    request_queue_size = 16

    def __init__(self, addr, reader, limits: Limits, verbose: bool = False) -> None:
        self.reader = reader
        self.limits = limits
        self.verbose = verbose
        super().__init__(addr, Handler)


def make_server(reader, *, host: str = "127.0.0.1", port: int = 8765, limits: Limits | None = None,
                verbose: bool = False) -> ViewerServer:
    """A ready (not yet serving) viewer server; port 0 picks a free port (see .server_address)."""
    load_api_modules()
    try:
        return ViewerServer((host, port), reader, limits or Limits(), verbose=verbose)
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror}); pick another --port") from None
