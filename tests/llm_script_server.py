"""A scripted OpenAI-compatible server, run as its own PROCESS by tests/test_explain_llm.py.

    python tests/llm_script_server.py [--fail-first N]     # prints "PORT <n>" once listening

Deterministic answers that read the prompt the way a competent model would, so a test can tell a
working pipeline from a broken one:
- explainer prompt (lmscope's SYSTEM): "the word X", X the most often marked <<token>>;
- detection ("Does this text contain"): Yes iff a content word of the label occurs in the text
  (as a substring: some windows carry no spaces);
- fuzzing ("Are the marked tokens"): Yes iff a marked token is a content word of the label.
`--fail-first N` answers the first N chat requests with HTTP 500 (to test retries). GET /stats
returns {"chat": calls answered, "failed": 500s sent, "auth": Authorization headers seen (count)}.
Bound to 127.0.0.1; logs nothing (a key in a header must not reach a log).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STOP = {
    "the",
    "word",
    "words",
    "a",
    "an",
    "of",
    "and",
    "or",
    "says",
    "output",
    "no",
    "clear",
    "pattern",
}


def content_words(label: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9]+", label.lower()) if w not in STOP and len(w) >= 2}


def answer(messages: list[dict]) -> str:
    system = next((m["content"] for m in messages if m.get("role") == "system"), "")
    user = messages[-1]["content"]
    if system.startswith("You label features"):
        marked = Counter(m.strip().lower() for m in re.findall(r"<<(.*?)>>", user) if m.strip())
        return f"the word {marked.most_common(1)[0][0]}" if marked else "nothing in particular"
    m = re.search(r"Feature: (.*)", user)
    if m is None:
        return "I do not know."
    label = m.group(1)
    words = content_words(label)
    if "Does this text contain" in user:
        text = re.search(r"Text: (.*)", user).group(1)
        return "Yes" if any(w in text.lower() for w in words) else "No"
    if "Are the marked tokens" in user:
        marked = {m.strip().lower() for m in re.findall(r"<<(.*?)>>", user)}
        return "Yes" if words & marked else "No"
    return "I do not know."


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fail-first", type=int, default=0)
    args = ap.parse_args()
    stats = {"chat": 0, "failed": 0, "auth": 0}

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a) -> None:
            pass

        def _send(self, code: int, obj) -> None:
            data = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/stats":
                self._send(200, stats)
            else:
                self._send(200, {"object": "list", "data": [{"id": "scripted", "object": "model"}]})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            stats["auth"] += bool(self.headers.get("Authorization"))
            if stats["failed"] < args.fail_first:
                stats["failed"] += 1
                self._send(500, {"error": "scripted failure"})
                return
            stats["chat"] += 1
            text = answer(body["messages"])
            prompt = sum(len(m["content"]) for m in body["messages"]) // 4
            self._send(
                200,
                {
                    "id": f"c{stats['chat']}",
                    "object": "chat.completion",
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {
                        "prompt_tokens": prompt,
                        "completion_tokens": len(text) // 4 + 1,
                        "total_tokens": prompt + len(text) // 4 + 1,
                    },
                },
            )

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
    httpd.daemon_threads = True
    print(f"PORT {httpd.server_address[1]}", flush=True)
    sys.stdout.flush()
    httpd.serve_forever()


if __name__ == "__main__":
    main()
