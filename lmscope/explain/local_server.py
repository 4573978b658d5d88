"""A small OpenAI-compatible HTTP server around a transformers model (ours; stdlib http.server).

    python -m lmscope.explain.local_server smollm2-135m --port 8000
    curl http://127.0.0.1:8000/v1/models

Routes: GET /v1/models, POST /v1/chat/completions, POST /v1/completions (greedy or sampled
generation, `usage` token counts). Bound to 127.0.0.1 only. `--llm local:NAME` starts one in-process
on a free port and talks to it through the same HTTP client as any remote server, so there is one
code path (and the tests exercise the client against a real server with a real model behind it).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..models import LanguageModel


class LocalLLM:
    """Generation with a loaded LanguageModel (one request at a time)."""

    def __init__(self, lm: LanguageModel, name: str) -> None:
        self.lm, self.name = lm, name
        self.lock = threading.Lock()

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        tok = self.lm.tokenizer
        if getattr(tok, "chat_template", None):
            ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
        text = (
            "\n".join(f"{m.get('role', 'user')}: {m.get('content', '')}" for m in messages)
            + "\nassistant:"
        )
        return self.lm.to_tokens(text)[0].tolist()

    def generate(self, ids: list[int], max_tokens: int, temperature: float) -> tuple[str, int]:
        import torch

        with self.lock, torch.no_grad():
            x = torch.tensor([ids], device=self.lm.model.device)
            kw = {
                "do_sample": temperature > 0,
                "max_new_tokens": max(1, int(max_tokens)),
                "pad_token_id": self.lm.tokenizer.pad_token_id
                or self.lm.tokenizer.eos_token_id
                or 0,
            }
            if temperature > 0:
                kw["temperature"] = float(temperature)
            out = self.lm.model.generate(x, attention_mask=torch.ones_like(x), **kw)[
                0, len(ids) :
            ]  # [new]
            return self.lm.tokenizer.decode(out, skip_special_tokens=True), int(out.numel())


def _handler(llm: LocalLLM):
    class H(BaseHTTPRequestHandler):
        def log_message(self, *a) -> None:  # quiet
            pass

        def _send(self, code: int, obj: dict) -> None:
            data = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path.rstrip("/") == "/v1/models":
                return self._send(
                    200, {"object": "list", "data": [{"id": llm.name, "object": "model"}]}
                )
            self._send(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self) -> None:
            try:
                n = int(self.headers.get("Content-Length") or 0)
                if n > 4_000_000:
                    return self._send(413, {"error": {"message": "request too large"}})
                body = json.loads(self.rfile.read(n) or b"{}")
                route = self.path.rstrip("/")
                if route == "/v1/chat/completions":
                    ids = llm.prompt_ids(body["messages"])
                elif route == "/v1/completions":
                    ids = llm.lm.to_tokens(str(body["prompt"]))[0].tolist()
                else:
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                text, n_out = llm.generate(
                    ids, body.get("max_tokens", 64), float(body.get("temperature", 0.0))
                )
            except (ValueError, KeyError, TypeError) as e:
                return self._send(400, {"error": {"message": f"bad request: {e}"}})
            choice = (
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
                if route.endswith("chat/completions")
                else {"index": 0, "text": text, "finish_reason": "stop"}
            )
            self._send(
                200,
                {
                    "id": f"lmscope-{time.time_ns()}",
                    "object": "chat.completion",
                    "model": llm.name,
                    "choices": [choice],
                    "usage": {
                        "prompt_tokens": len(ids),
                        "completion_tokens": n_out,
                        "total_tokens": len(ids) + n_out,
                    },
                },
            )

    return H


class LocalServer:
    """Serve `lm` on 127.0.0.1:port (0 = a free port) in a daemon thread; use as a context
    manager."""

    def __init__(self, lm: LanguageModel, name: str, port: int = 0) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), _handler(LocalLLM(lm, name)))
        self.httpd.daemon_threads = True
        self.name = name
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def start(self) -> LocalServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv=None) -> None:
    import argparse

    from ..models.load import load_model

    ap = argparse.ArgumentParser(
        description="OpenAI-compatible server around a transformers model (127.0.0.1)"
    )
    ap.add_argument("model", help="model alias, HF id or folder (e.g. smollm2-135m)")
    ap.add_argument("--port", type=int, default=8000)
    a = ap.parse_args(argv)
    srv = LocalServer(load_model(a.model), a.model, a.port)
    print(f"serving {a.model} at {srv.url}", flush=True)
    try:
        srv.httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.httpd.server_close()


if __name__ == "__main__":
    main()
