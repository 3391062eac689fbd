"""The one model client against local stand-ins, no network: the OpenAI-compatible endpoint's
retries, back-off, Retry-After, timeouts and rate limit against a scripted server on loopback;
the vLLM backend's settings (a stand-in module where vLLM is not installed, the real one where
it is)."""

from __future__ import annotations

import sys
import time
import types
from dataclasses import dataclass, field

import pytest

from reflectioncoder.errors import UserError
from reflectioncoder.generate import (
    BackendError,
    GenerationConfig,
    OpenAIClient,
    RetryPolicy,
    VllmModel,
    vllm_available,
)
from reflectioncoder.generate.endpoint import retry_after
from reflectioncoder.testing.http_stub import JsonHandler, serving


@dataclass
class Script:
    """What the server does, request by request: an int status (with ``headers``), "slow"
    (answers after ``slow_s``), "garbage" (200, not JSON), or "ok"; "ok" once the list is out."""

    steps: list = field(default_factory=list)
    headers: dict = field(default_factory=dict)
    slow_s: float = 1.0
    text: str = "return 1<|endofblock|>more"
    extra_choices: int = 0  # /completions: this many choices more than asked for
    arrivals: list[float] = field(default_factory=list)
    bodies: list[dict] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)


def scripted_handler(script: Script) -> type[JsonHandler]:
    class Handler(JsonHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            script.arrivals.append(time.monotonic())
            body = self.read_json()
            script.bodies.append(body)
            script.paths.append(self.path)
            step = script.steps.pop(0) if script.steps else "ok"
            if step == "slow":
                time.sleep(script.slow_s)
            if isinstance(step, int):
                self.reply(b'{"error": {"message": "scripted"}}', step, script.headers)
            elif step == "garbage":
                self.reply(b"<html>not json</html>")
            elif "messages" in body:
                self.reply(
                    {"choices": [{"message": {"role": "assistant", "content": script.text}}]}
                )
            else:  # /completions: n choices, served out of order
                n = body.get("n", 1) + script.extra_choices
                choices = [{"index": i, "text": f"{i}:{script.text}"} for i in reversed(range(n))]
                self.reply({"choices": choices})

    return Handler


@pytest.fixture
def endpoint():
    """(script, base URL) of a fresh scripted server; shut down after the test."""
    script = Script()
    with serving(scripted_handler(script), poll_s=0.05) as base:
        yield script, base + "/v1"


def gaps(arrivals: list[float]) -> list[float]:
    return [b - a for a, b in zip(arrivals[:-1], arrivals[1:], strict=True)]


def test_server_errors_are_retried_with_exponential_back_off(endpoint):
    script, url = endpoint
    script.steps = [500, 503, "garbage"]
    client = OpenAIClient(url, "m", policy=RetryPolicy(retries=3, backoff_s=0.1))
    assert client.chat([{"role": "user", "content": "hi"}]) == script.text
    assert len(script.arrivals) == 4  # three failures, then the answer
    # sleep() waits at least as long as asked: the gaps are at least 0.1, 0.2, 0.4 s
    for gap, least in zip(gaps(script.arrivals), (0.1, 0.2, 0.4), strict=True):
        assert gap >= least - 0.01


def test_retry_after_is_obeyed(endpoint):
    script, url = endpoint
    script.steps, script.headers = [429], {"Retry-After": "0.5"}
    client = OpenAIClient(url, "m", policy=RetryPolicy(retries=1, backoff_s=0.0))
    client.chat([{"role": "user", "content": "hi"}])
    assert len(script.arrivals) == 2 and gaps(script.arrivals)[0] >= 0.49
    assert retry_after("120") == 60.0 and retry_after("-3") == 0.0  # capped, never negative
    assert retry_after(None) is None and retry_after("Wed, 21 Oct 2026 07:28:00 GMT") is None


def test_a_slow_reply_times_out_and_is_retried(endpoint):
    script, url = endpoint
    script.steps, script.slow_s = ["slow"], 10.0
    client = OpenAIClient(url, "m", policy=RetryPolicy(timeout_s=0.3, retries=1, backoff_s=0.0))
    assert client.chat([{"role": "user", "content": "hi"}]) == script.text
    assert len(script.arrivals) == 2
    # The retry came while the server still held the slow reply: the client did not wait for it.
    # An order of events, not a speed: a loaded machine has 9.7 s to spare (the server's thread
    # is a daemon; nothing waits for its sleep).
    assert gaps(script.arrivals)[0] < script.slow_s


def test_after_the_last_retry_the_error_says_what_failed(endpoint):
    script, url = endpoint
    script.steps, script.slow_s = ["slow", "slow"], 1.0
    client = OpenAIClient(url, "m", policy=RetryPolicy(timeout_s=0.2, retries=1, backoff_s=0.0))
    with pytest.raises(BackendError, match=r"/v1/chat/completions: .*timed out.*after 1 retries"):
        client.chat([{"role": "user", "content": "hi"}])
    assert len(script.arrivals) == 2


def test_nothing_listening_is_retried_then_reported():
    import socket

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = OpenAIClient(
        f"http://127.0.0.1:{port}", "m", policy=RetryPolicy(retries=2, backoff_s=0)
    )
    with pytest.raises(BackendError, match=r"127\.0\.0\.1:\d+/v1/completions: .*after 2 retries"):
        client.complete(["x"], GenerationConfig())


def test_client_errors_stop_at_once(endpoint):
    script, url = endpoint
    script.steps = [404]
    client = OpenAIClient(url, "nope", policy=RetryPolicy(retries=3, backoff_s=0.0))
    with pytest.raises(UserError, match="HTTP 404.*scripted"):
        client.chat([{"role": "user", "content": "hi"}])
    assert len(script.arrivals) == 1  # retrying cannot fix a wrong model name


def test_rate_limit_spaces_requests(endpoint):
    script, url = endpoint
    client = OpenAIClient(url, "m", policy=RetryPolicy(rate_limit=10))
    asked, wait, request = [], client.limiter.wait, client._request
    client.limiter.wait = lambda: (asked.append(time.monotonic()), wait())[1]
    # the first request held up on its way to the server, as a loaded machine does
    client._request = lambda *a: (time.sleep(0.05 if len(asked) == 1 else 0), request(*a))[1]
    client.complete(["a", "b", "c", "d"], GenerationConfig())
    # 4 requests at 10/s: the last reaches the server 0.3 s or more after the first asked the
    # limiter. From the first ask, not the first arrival: the gap between arrivals shrinks by
    # whatever delays the first on its way (below 0.29 s on a loaded machine).
    assert len(asked) == 4 and script.arrivals[-1] - asked[0] >= 3 / 10 - 1e-9


def test_completions_request_and_reply(endpoint):
    script, url = endpoint
    config = GenerationConfig(n=3, temperature=0.5, max_new_tokens=7, stop_strings=("\n```",))
    client = OpenAIClient(url, "m", api_key="k")
    texts = client.complete(["p1", "p2"], config)
    assert texts == [[f"{i}:return 1" for i in range(3)]] * 2  # in index order, cut at the stop
    body = script.bodies[0]
    assert script.paths == ["/v1/completions"] * 2 and body["prompt"] == "p1"
    assert body["stop"] == ["<|endofblock|>", "<|endofmessage|>", "\n```"]
    assert (body["n"], body["max_tokens"], body["temperature"]) == (3, 7, 0.5)
    script.extra_choices = 1
    with pytest.raises(BackendError, match="expected 2 choices, got 3"):
        OpenAIClient(url, "m").complete(["p"], GenerationConfig(n=2, temperature=1.0))


def test_base_url_forms():
    assert OpenAIClient("http://h:8000", "m").base_url == "http://h:8000/v1"
    assert OpenAIClient("http://h:8000/", "m").base_url == "http://h:8000/v1"
    assert OpenAIClient("http://h:8000/v1/", "m").base_url == "http://h:8000/v1"
    assert OpenAIClient("https://h/api/openai", "m").base_url == "https://h/api/openai"
    with pytest.raises(ValueError, match="base_url"):
        OpenAIClient("h:8000", "m")
    with pytest.raises(ValueError, match="timeout_s"):
        RetryPolicy(timeout_s=0)
    with pytest.raises(ValueError, match="retries"):
        RetryPolicy(retries=-1)


def test_vllm_backend_passes_the_settings(monkeypatch):
    """With a stand-in ``vllm`` module: what the backend asks vLLM for."""
    seen: dict = {}

    class LLM:
        def __init__(self, **kwargs) -> None:
            seen["llm"] = kwargs

        def generate(self, prompts, params):
            seen["prompts"], seen["params"] = prompts, params
            out = types.SimpleNamespace
            return [out(outputs=[out(text=f"{p}!")] * params.n) for p in prompts]

    def sampling_params(**kwargs):
        return types.SimpleNamespace(**kwargs)

    fake = types.SimpleNamespace(LLM=LLM, SamplingParams=sampling_params)
    monkeypatch.setitem(sys.modules, "vllm", fake)
    model = VllmModel("dir", tensor_parallel=2, seed=3)
    config = GenerationConfig(n=2, temperature=0.8, stop_strings=("```",), max_new_tokens=5)
    done: list[int] = []
    assert model.complete(["a", "b"], config, progress=done.append) == [["a!"] * 2, ["b!"] * 2]
    assert seen["llm"] == {"model": "dir", "tensor_parallel_size": 2, "seed": 3}
    params = seen["params"]
    assert params.stop == ["<|endofblock|>", "<|endofmessage|>", "```"]
    assert (params.n, params.temperature, params.max_tokens) == (2, 0.8, 5)
    assert params.skip_special_tokens is False and sum(done) == 2


def test_vllm_backend_on_a_real_model(tmp_path):
    if not vllm_available():
        pytest.skip("vllm is not installed (pip install vllm, on a CUDA machine)")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("vllm needs a CUDA device; none here")
    from reflectioncoder.testing.tiny_model import save_tiny_model

    texts = ["def add(x, y):\n    return x + y\n"] * 20
    save_tiny_model(tmp_path, texts, hidden_size=64, intermediate_size=128)
    texts = VllmModel(str(tmp_path)).complete(["def add("], GenerationConfig(max_new_tokens=4))
    assert len(texts) == 1 and len(texts[0]) == 1 and isinstance(texts[0][0], str)
