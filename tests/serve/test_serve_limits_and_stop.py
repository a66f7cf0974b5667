"""The service's limits (body size, prompt length, prompts x n, requests in flight), body
parse failures as 400s, tokenizing off the event loop, and a stop whose grace period runs out:
every refusal and every cancelled request ends with an OpenAI error body."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time

import httpx
import openai
import pytest
from serve_support import API_KEY, MODEL, start_service, stop_service

from wanspec.serve.app import ServiceLimits, default_max_request_bytes
from wanspec.serve.errors import APIError

HEADERS = {"Authorization": f"Bearer {API_KEY}"}
PROMPT = "ROMEO.\n"


def _error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == status and err["message"] and err["type"].endswith("Error")
    return err


def test_error_types_are_vllms():
    assert APIError("x", status=500).type == "InternalServerError"
    assert APIError("x", status=400).type == "BadRequestError"
    assert APIError("x", status=503).type == "ServiceUnavailableError"


def test_a_body_over_the_cap_is_a_413_before_it_is_read(service, shipped):
    cap = default_max_request_bytes(shipped[0].max_context)
    assert (1 << 20) <= cap <= (8 << 20)
    body = json.dumps({"prompt": "a" * (cap + 10), "max_tokens": 1}).encode()
    url = f"{service.url}/v1/completions"
    err = _error(httpx.post(url, content=body, headers=HEADERS), 413)
    assert "--max-request-bytes" in err["message"]

    def chunked():  # no Content-Length: counted as it streams in
        for i in range(0, len(body), 64 << 10):
            yield body[i:i + 64 << 10]
    try:
        r = httpx.post(url, content=chunked(), headers=HEADERS)
    except httpx.TransportError:  # the server may close before the client has sent it all
        pytest.skip("the connection closed before the 413 was read")
    assert "content-length" not in r.request.headers
    _error(r, 413)


def test_a_prompt_too_long_for_the_context_is_refused_without_tokenizing(
        service, shipped, monkeypatch):
    target = shipped[0]
    calls = []
    encode = target.encode
    monkeypatch.setattr(target, "encode", lambda text: calls.append(len(text)) or encode(text))
    n = target.max_context * 32 + 1
    for body in ({"prompt": "a" * n}, {"prompt": ["b", "a" * n]}):
        err = _error(httpx.post(f"{service.url}/v1/completions", headers=HEADERS,
                                json={**body, "max_tokens": 1}), 400)
        assert "maximum context length" in err["message"] and "characters" in err["message"]
    err = _error(httpx.post(f"{service.url}/v1/chat/completions", headers=HEADERS,
                            json={"messages": [{"role": "user", "content": "a" * n}]}), 400)
    assert err["param"] == "messages"
    assert calls == []


def test_tokenizing_does_not_block_health(service, shipped, monkeypatch):
    """A slow tokenization (a long prompt) leaves the event loop free: /health answers."""
    target = shipped[0]
    encode = target.encode
    started = threading.Event()

    def slow(text):
        started.set()
        time.sleep(3.0)
        return encode(text)

    monkeypatch.setattr(target, "encode", slow)
    box = {}
    t = threading.Thread(target=lambda: box.update(r=httpx.post(
        f"{service.url}/v1/completions", headers=HEADERS, timeout=30,
        json={"prompt": PROMPT, "max_tokens": 2, "temperature": 0})))
    t.start()
    assert started.wait(10)
    t0 = time.monotonic()
    assert httpx.get(f"{service.url}/health", timeout=5).status_code == 200
    assert time.monotonic() - t0 < 2.0  # well before the 3 s tokenization ends: not blocked
    t.join(30)
    assert box["r"].status_code == 200


@pytest.mark.parametrize("content", [
    b"[" * 100_000 + b"]" * 100_000,
    b'{"prompt": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
    b'{"prompt": "x", "max_tokens": ' + b'{"a": ' * 20_000 + b"1" + b"}" * 20_000 + b"}",
    b"\xff\xfe{}",
])
def test_every_body_parse_failure_is_a_400(service, content):
    _error(httpx.post(f"{service.url}/v1/completions", content=content, headers=HEADERS), 400)
    _error(httpx.post(f"{service.url}/v1/chat/completions", content=content, headers=HEADERS),
           400)


def test_integral_floats_are_integers_as_in_vllm(client):
    r = client.completions.create(model=MODEL, prompt=PROMPT, temperature=0,
                                  extra_body={"max_tokens": 3.0, "n": 1.0})
    assert r.usage.completion_tokens <= 3
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL, prompt=PROMPT, extra_body={"max_tokens": 3.5})


def test_prompts_times_n_is_capped(service):
    url = f"{service.url}/v1/completions"
    err = _error(httpx.post(url, headers=HEADERS, json={"prompt": ["a"] * 65, "max_tokens": 1}),
                 400)
    assert "at most 64" in err["message"] and "--max-prompts-per-request" in err["message"]
    err = _error(httpx.post(url, headers=HEADERS,
                            json={"prompt": [[1, 2]] * 5, "n": 16, "max_tokens": 1}), 400)
    assert "80 completions" in err["message"]
    err = _error(httpx.post(url, headers=HEADERS, json={"prompt": ["a"] * 100_000}), 400)


def _stream_first_line(url: str, body: dict, out: dict, key: str, ready: threading.Event):
    with httpx.stream("POST", url, headers=HEADERS, json=body, timeout=60) as r:
        out[key + "_status"] = r.status_code
        lines = [line for line in r.iter_lines() if line]
        ready.set()
        out[key] = lines


def test_requests_beyond_the_queue_cap_are_503s(shipped, worker):
    svc = start_service(shipped, [worker.address],
                        limits=ServiceLimits(max_queued_requests=2))
    try:
        async def main():
            async with httpx.AsyncClient(base_url=svc.url, headers=HEADERS, timeout=60) as c:
                body = {"prompt": PROMPT, "max_tokens": 400, "ignore_eos": True,
                        "temperature": 0.8, "seed": 1, "stream": True}
                async with c.stream("POST", "/v1/completions", json=body) as a, \
                        c.stream("POST", "/v1/completions", json=body) as b:
                    assert a.status_code == b.status_code == 200
                    third = await c.post("/v1/completions",
                                         json={"prompt": PROMPT, "max_tokens": 1})
                # the streams' clients left: the server frees their places as soon as it sees
                # the disconnects (on its own loop, a moment later on a busy machine)
                deadline = asyncio.get_running_loop().time() + 15.0
                while True:
                    later = await c.post("/v1/completions",
                                         json={"prompt": PROMPT, "max_tokens": 1})
                    if later.status_code != 503 or asyncio.get_running_loop().time() > deadline:
                        return third, later
                    await asyncio.sleep(0.1)

        third, later = asyncio.run(main())
        err = _error(third, 503)
        assert "overloaded" in err["message"] and "--max-queued-requests" in err["message"]
        assert later.status_code == 200  # the streams left: room again
    finally:
        stop_service(svc)


def test_a_stop_past_its_grace_ends_requests_with_error_bodies(shipped, worker, caplog):
    """Grace 0.5 s, two long requests in flight: /health and new requests get 503 while it
    drains; then the non-streamed request gets a 503 error body, the stream an error chunk and
    [DONE]; the server exits cleanly, with no error logged."""
    svc = start_service(shipped, [worker.address], grace_s=0.5)
    body = {"prompt": PROMPT, "max_tokens": 2000, "ignore_eos": True, "temperature": 0.8,
            "seed": 3}
    out: dict = {}
    with caplog.at_level(logging.WARNING):
        try:
            whole = threading.Thread(target=lambda: out.update(whole=httpx.post(
                f"{svc.url}/v1/completions", headers=HEADERS, json=body, timeout=60)))
            whole.start()
            lines: list[str] = []
            with httpx.stream("POST", f"{svc.url}/v1/completions", headers=HEADERS,
                              json={**body, "stream": True}, timeout=60) as r:
                it = r.iter_lines()
                lines.append(next(line for line in it if line.startswith("data: ")))
                deadline = time.monotonic() + 30
                while svc.on_loop(lambda: svc.server.drain.in_flight) < 2:  # both are in
                    assert time.monotonic() < deadline
                    time.sleep(0.02)
                svc.server.request_stop()
                time.sleep(0.2)
                health = httpx.get(f"{svc.url}/health")
                assert health.status_code == 503 and health.json()["status"] == "stopping"
                refused = httpx.post(f"{svc.url}/v1/completions", headers=HEADERS,
                                     json={"prompt": PROMPT, "max_tokens": 1})
                assert "stopping" in _error(refused, 503)["message"]
                lines.extend(line for line in it if line)
            whole.join(30)
            svc.done.result(30)  # (raises if the server failed)
        finally:
            if not svc.done.done():
                stop_service(svc)
            else:
                svc.thread.stop()
    assert lines[-1] == "data: [DONE]"
    err = json.loads(lines[-2][len("data: "):])["error"]
    assert err["code"] == 503 and "grace period" in err["message"]
    assert "grace period" in _error(out["whole"], 503)["message"]
    bad = [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
    assert bad == [], [rec.getMessage() for rec in bad]
