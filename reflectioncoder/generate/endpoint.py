"""Any OpenAI-compatible HTTP endpoint (vLLM, TGI, llama.cpp server, a hosted API), no SDK.

``complete`` posts prompts to ``/completions`` (evaluation), ``chat`` posts messages to
``/chat/completions`` (``build-data``). Every request goes through one retry loop: a request
that times out, cannot connect, gets 408/409/425/429/5xx or a reply that is not JSON is
retried with exponential back-off (a server's ``Retry-After`` obeyed); other 4xx replies (a
wrong model name, a bad key) are the user's to fix and stop at once.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from reflectioncoder.errors import UserError
from reflectioncoder.generate.config import GenerationConfig, Generator, cut_at_stop

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class BackendError(UserError):
    """The model could not be reached, or replied nonsense, after the retries: a user's to fix
    (the server, its address), shown as one line, exit 1."""


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try: ``timeout_s`` per request; ``retries`` more tries after a failure,
    ``backoff_s`` before the first and doubled each time; ``rate_limit`` requests per second
    over all threads (0: none)."""

    timeout_s: float = 120.0
    retries: int = 5
    backoff_s: float = 1.0
    rate_limit: float = 0.0

    def __post_init__(self) -> None:
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s: expected seconds > 0, got {self.timeout_s}")
        for name in ("retries", "backoff_s", "rate_limit"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: expected a value >= 0, got {getattr(self, name)}")


class RateLimiter:
    """At most ``per_second`` calls a second across threads (evenly spaced; 0: no limit)."""

    def __init__(self, per_second: float) -> None:
        self.interval = 1.0 / per_second if per_second > 0 else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        time.sleep(max(0.0, start - now))


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (seconds form; capped at 60), None if absent."""
    try:
        return min(max(float(value), 0.0), 60.0) if value is not None else None
    except ValueError:
        return None


class OpenAIClient(Generator):
    """``base_url``: e.g. ``http://localhost:8000/v1``; a bare ``http://host:port`` gets ``/v1``.
    ``api_key`` goes in a Bearer header when given."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        policy: RetryPolicy | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url: expected an http(s) URL, got {base_url!r}")
        base = base_url.rstrip("/")
        self.base_url = base if urllib.parse.urlsplit(base).path else base + "/v1"
        self.model = model
        self.api_key = api_key
        self.policy = policy or RetryPolicy()
        self.limiter = RateLimiter(self.policy.rate_limit)

    prompts_per_call = 1  # one request per prompt

    def _complete_batch(self, prompts: list[str], config: GenerationConfig) -> list[list[str]]:
        """``config.n`` texts per prompt, each cut at the first stop."""
        out = []
        for prompt in prompts:
            body = {
                "model": self.model,
                "prompt": prompt,
                "max_tokens": config.max_new_tokens,
                "temperature": config.temperature,
                "top_p": config.top_p,
                "n": config.n,
                "stop": list(config.all_stops),
                "seed": config.seed,
                "skip_special_tokens": config.skip_special_tokens,  # vLLM's; others ignore it
            }
            url, reply = self._post("/completions", body)
            choices = reply.get("choices") if isinstance(reply, dict) else None
            if not isinstance(choices, list) or len(choices) != config.n:
                got = len(choices) if isinstance(choices, list) else str(reply)[:200]
                raise BackendError(f"{url}: expected {config.n} choices, got {got}")
            choices = sorted(choices, key=lambda c: c.get("index", 0))
            out.append([cut_at_stop(c.get("text", ""), config.all_stops) for c in choices])
        return out

    def chat(self, messages: list[dict], temperature: float = 0.0) -> str:
        """The reply's text to ``messages``."""
        body = {"model": self.model, "messages": messages, "temperature": temperature}
        url, reply = self._post("/chat/completions", body)
        try:
            content = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise BackendError(f"{url}: unexpected chat reply {str(reply)[:200]}") from None
        if not isinstance(content, str):
            raise BackendError(f"{url}: reply content is not text: {str(content)[:200]}")
        return content

    def _request(self, url: str, body: dict) -> urllib.request.Request:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode()
        return urllib.request.Request(url, data=data, headers=headers, method="POST")

    def _post(self, path: str, body: dict) -> tuple[str, object]:
        """(the URL, the reply's JSON), retried as the policy says."""
        url = self.base_url + path
        policy = self.policy
        for attempt in range(policy.retries + 1):
            self.limiter.wait()
            request = self._request(url, body)
            try:
                with urllib.request.urlopen(request, timeout=policy.timeout_s) as reply:
                    return url, json.loads(reply.read().decode())
            except urllib.error.HTTPError as e:
                detail = e.read().decode(errors="replace")[:200]
                if e.code not in RETRY_STATUS:
                    raise UserError(f"HTTP {e.code} {e.reason}: {detail}", file=url) from None
                last = f"HTTP {e.code} {e.reason}"
                delay = retry_after(e.headers.get("Retry-After"))
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
                reason = getattr(e, "reason", e)
                last = f"{type(reason).__name__}: {reason}"
                delay = None
            except json.JSONDecodeError as e:
                last = f"reply is not JSON: {e.msg}"
                delay = None
            if attempt == policy.retries:
                break
            time.sleep(delay if delay is not None else policy.backoff_s * 2**attempt)
        raise BackendError(f"{url}: {last} (after {policy.retries} retries)")
