"""A small OpenAI-compatible chat client (stdlib only): retries, timeouts, on-disk cache,
accounting.

    c = LLMClient("http://127.0.0.1:8000/v1", model="smollm2", cache_dir="atlas/llm_cache")
    text = c.chat([{"role": "user", "content": "Label: ..."}], max_tokens=30)
    c.usage  # Usage(requests, cached, prompt_tokens, completion_tokens, cost_usd)

Works with any server speaking /v1/chat/completions (vLLM, llama.cpp server, Ollama, hosted APIs).
The API key is read from the environment (LMSCOPE_LLM_API_KEY, else OPENAI_API_KEY) and sent only in
the Authorization header: it never enters the cache key, the cache files, errors or logs.
Retries: connection errors, timeouts, 429 and 5xx, exponential backoff, honouring Retry-After.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path


class LLMError(Exception):
    """The LLM server failed after every retry (or answered something unusable)."""


class BudgetSpent(LLMError):
    """The run's LLM budget (--budget calls or --budget-usd dollars) is spent; nothing was sent."""


@dataclass
class Usage:
    requests: int = 0
    cached: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0


class LLMClient:
    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        cache_dir: str | Path | None = None,
        timeout: float = 60.0,
        retries: int = 4,
        backoff: float = 1.0,
        price_in: float = 0.0,
        price_out: float = 0.0,
        api_key: str | None = None,
        max_requests: int = 0,
        max_cost_usd: float = 0.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.price_in, self.price_out = price_in, price_out
        """USD per 1M prompt / completion tokens"""
        self._key = (
            api_key
            if api_key is not None
            else (os.environ.get("LMSCOPE_LLM_API_KEY") or os.environ.get("OPENAI_API_KEY"))
        )
        self.usage = Usage()
        self.max_requests, self.max_cost_usd = max_requests, max_cost_usd
        """budget of this client: requests sent (cache hits are free) and dollars; 0 = no limit"""
        self._reserved = 0
        self._lock = threading.Lock()

    def _reserve(self) -> None:
        """Count a request against the budget before it is sent (concurrent callers never overshoot
        the call budget; the dollar budget is checked on the cost so far, so it can overshoot by the
        requests in flight)."""
        with self._lock:
            if self.max_requests and self._reserved >= self.max_requests:
                raise BudgetSpent(f"the LLM budget of {self.max_requests} calls is spent")
            if self.max_cost_usd and self.usage.cost_usd >= self.max_cost_usd:
                raise BudgetSpent(
                    f"the LLM budget of ${self.max_cost_usd:g} is spent "
                    f"(${self.usage.cost_usd:.4f} at the stated prices)"
                )
            self._reserved += 1

    def _cache_path(self, body: dict) -> Path | None:
        if self.cache_dir is None:
            return None
        h = hashlib.sha256(
            json.dumps({"url": self.base_url, **body}, sort_keys=True).encode()
        ).hexdigest()
        return self.cache_dir / h[:2] / f"{h}.json"

    def chat(self, messages: list[dict], *, max_tokens: int = 64, temperature: float = 0.0) -> str:
        body = {
            "model": self.model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": temperature,
        }
        path = self._cache_path(body)
        if path is not None and path.is_file():
            try:
                resp = json.loads(path.read_text())
                with self._lock:
                    self.usage.cached += 1
                return resp["choices"][0]["message"]["content"]
            except (ValueError, KeyError, IndexError, TypeError):
                pass  # a damaged cache entry is refetched
        self._reserve()
        resp = self._post("/chat/completions", body)
        try:
            text = resp["choices"][0]["message"]["content"]
            if not isinstance(text, str):
                raise TypeError
        except (KeyError, IndexError, TypeError):
            raise LLMError(
                f"malformed completion from {self.base_url}: no choices[0].message.content "
                f"in {json.dumps(resp)[:200]}"
            ) from None
        u = resp.get("usage") or {}
        with self._lock:
            self.usage.requests += 1
            self.usage.prompt_tokens += int(u.get("prompt_tokens") or 0)
            self.usage.completion_tokens += int(u.get("completion_tokens") or 0)
            self.usage.cost_usd = (
                self.usage.prompt_tokens * self.price_in
                + self.usage.completion_tokens * self.price_out
            ) / 1e6
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{threading.get_ident()}")
            tmp.write_text(json.dumps(resp))
            os.replace(tmp, path)
        return text

    def _post(self, route: str, body: dict) -> dict:
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        last = ""
        for attempt in range(self.retries + 1):
            wait = self.backoff * 2**attempt
            try:
                req = urllib.request.Request(
                    self.base_url + route, data=data, headers=headers, method="POST"
                )
                with urllib.request.urlopen(req, timeout=self.timeout) as r:
                    raw = r.read()
                try:
                    return json.loads(raw)
                except ValueError:
                    raise LLMError(
                        f"malformed response from {self.base_url}{route}: not JSON ({raw[:120]!r})"
                    ) from None
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code} {e.reason}"
                if e.code != 429 and e.code < 500:
                    raise LLMError(
                        f"{self.base_url}{route} refused the request: {last} "
                        f"({e.read()[:200]!r}); check --llm-model and the API key"
                    ) from None
                ra = e.headers.get("Retry-After") if e.headers else None
                if ra:
                    try:
                        wait = max(wait, float(ra))
                    except ValueError:
                        pass
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
                reason = getattr(e, "reason", e)
                last = (
                    f"timed out after {self.timeout:g}s"
                    if "timed out" in str(reason)
                    else f"unreachable ({reason})"
                )
            if attempt < self.retries:
                time.sleep(min(wait, 60.0))
        raise LLMError(
            f"LLM server {self.base_url} failed after {self.retries + 1} attempts: {last}"
        )
