"""The service under load and faults: 16 concurrent streams, a client leaving mid-stream, the
metrics against the requests made, a worker killed mid-stream, a graceful stop."""

from __future__ import annotations

import asyncio
import gc
import time

import httpx
import openai
import pytest
from serve_support import API_KEY, MODEL, start_service, start_worker, stop_service
from prometheus_client.parser import text_string_to_metric_families

from wanspec.sampling import SamplingParams

PROMPTS = ["ROMEO.\n", "JULIET.\n", "HAMLET.\nTo be", "KING LEAR.\n", "MACBETH.\nIs this",
           "PORTIA.\nThe quality", "OTHELLO.\n", "PROSPERO.\nOur revels", "BRUTUS.\n",
           "CAESAR.\n", "LADY MACBETH.\n", "FALSTAFF.\n", "VIOLA.\n", "PUCK.\n",
           "IAGO.\n", "CORDELIA.\n"]
HEADERS = {"Authorization": f"Bearer {API_KEY}"}


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics``, parsed with prometheus_client's own parser."""
    text = httpx.get(f"{url}/metrics").text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(samples, name: str, **labels: str) -> float:
    return sum(v for (n, lab), v in samples.items()
               if n == name and all(dict(lab).get(k) == x for k, x in labels.items()))


def wait_until(cond, timeout: float = 10.0) -> bool:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def slots_in_use(service, target) -> int:
    """The target's KV slots in use, after the garbage collector has returned those of caches
    dropped unclosed (the target is shared by the session's services)."""
    gc.collect()
    return service.on_loop(lambda: target.pool.in_use)


def slots_come_back(service, target, before: int) -> bool:
    """The target's KV slots in use are back to ``before`` (counted before the request).  A
    cancelled request's slot goes back at once, or when a pass still writing into it ends -- on
    a loaded CI machine that pass may be slow, so this waits for the pass, not a fixed instant
    (a leaked slot never comes back)."""
    return wait_until(lambda: service.on_loop(lambda: target.pool.in_use) <= before, 30) and \
        slots_in_use(service, target) <= before


async def stream_tokens(client: openai.AsyncOpenAI, prompt: str, max_tokens: int,
                        **sampling) -> list[int]:
    stream = await client.completions.create(model=MODEL, prompt=prompt, max_tokens=max_tokens,
                                             stream=True,
                                             extra_body={"return_token_ids": True,
                                                         "ignore_eos": True}, **sampling)
    return [t async for ch in stream for t in ch.choices[0].token_ids]


def test_sixteen_concurrent_streams_equal_decoding_alone(service, reference):
    async def main():
        async with openai.AsyncOpenAI(base_url=f"{service.url}/v1", api_key=API_KEY,
                                      max_retries=0, timeout=120) as client:
            return await asyncio.gather(*(stream_tokens(client, p, 10, temperature=0)
                                          for p in PROMPTS))

    before = scrape(service.url)
    outs = asyncio.run(main())
    after = scrape(service.url)
    for p, out in zip(PROMPTS, outs):
        assert out == reference(p, 10, SamplingParams(), (), True).token_ids, p
    # they were served together: more than one request per target pass on average
    stats = service.on_loop(lambda: service.engine.accelerator.stats)
    assert stats.mean_batch > 1.0
    assert total(after, "vllm:request_success_total", finished_reason="length") - \
        total(before, "vllm:request_success_total", finished_reason="length") == 16


def test_metrics_count_the_requests_made(service, client):
    before = scrape(service.url)
    usages = []
    for p in PROMPTS[:3]:
        r = client.completions.create(model=MODEL, prompt=p, max_tokens=12, temperature=0,
                                      extra_body={"ignore_eos": True})
        usages.append(r.usage)
    stream = client.chat.completions.create(model=MODEL, max_tokens=6, stream=True,
                                            messages=[{"role": "user", "content": "Speak."}],
                                            stream_options={"include_usage": True},
                                            extra_body={"ignore_eos": True}, temperature=0)
    usages.append([ch for ch in stream][-1].usage)
    after = scrape(service.url)

    def delta(name, **labels):
        return total(after, name, **labels) - total(before, name, **labels)

    assert delta("vllm:prompt_tokens_total") == sum(u.prompt_tokens for u in usages)
    assert delta("vllm:generation_tokens_total") == sum(u.completion_tokens for u in usages)
    assert delta("vllm:request_success_total", finished_reason="length") == 4
    for hist in ("vllm:time_to_first_token_seconds", "vllm:e2e_request_latency_seconds",
                 "vllm:request_queue_time_seconds"):
        assert delta(f"{hist}_count") == 4, hist
    # one inter-token observation per commit after the first: at most one per token after each
    # request's first (exactly that when every commit is one token, as on a busy machine)
    itl = delta("vllm:inter_token_latency_seconds_count")
    assert 4 <= itl <= sum(u.completion_tokens for u in usages) - 4
    drafts, tokens = delta("vllm:spec_decode_num_drafts_total"), \
        delta("vllm:spec_decode_num_draft_tokens_total")
    accepted = delta("vllm:spec_decode_num_accepted_tokens_total")
    assert 0 < accepted <= tokens and drafts > 0
    assert delta("vllm:spec_decode_num_accepted_tokens_per_pos_total") == accepted
    assert delta("wanspec:spec_decode_accepted_tokens_total") == accepted
    worker = service.engine.workers.links[0].name
    assert delta("wanspec:remote_drafts_received_total", worker=worker) >= \
        delta("wanspec:remote_drafts_used_total", worker=worker) > 0
    assert total(after, "wanspec:worker_rtt_seconds_count", worker=worker) > 0
    assert total(after, "wanspec:worker_up", worker=worker) == 1
    assert total(after, "vllm:num_requests_running") == 0
    assert total(after, "vllm:num_requests_waiting") == 0
    # the worker's account of its passes comes after each request: counted once it came
    assert wait_until(lambda: total(scrape(service.url), "wanspec:draft_passes_total",
                                    site="worker") > total(before, "wanspec:draft_passes_total",
                                                           site="worker"))


def test_a_client_leaving_mid_stream_cancels_its_request(service, worker, shipped):
    target = shipped[0]
    before = scrape(service.url)
    slots = slots_in_use(service, target)
    body = {"prompt": PROMPTS[0], "max_tokens": 1500, "temperature": 0, "stream": True,
            "ignore_eos": True}
    with httpx.stream("POST", f"{service.url}/v1/completions", json=body, headers=HEADERS,
                      timeout=60) as r:
        lines = r.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        assert '"text"' in first
        assert wait_until(lambda: service.on_loop(
            lambda: len(service.engine.accelerator.admission.running)) == 1)
        sessions = sum(len(c.sessions) for c in worker.service.active)
        assert sessions == 1  # (the worker drafts for it)
    # the connection is closed: the request is withdrawn at once, long before its 1500 tokens
    # (the waits are generous for a loaded CI machine; the token count below is the check)
    assert wait_until(lambda: service.on_loop(
        lambda: len(service.engine.accelerator.admission.running)) == 0, 15)
    assert wait_until(lambda: sum(len(c.sessions) for c in worker.service.active) == 0, 15)
    assert slots_come_back(service, target, slots), (slots, slots_in_use(service, target))
    after = scrape(service.url)
    assert total(after, "vllm:request_success_total", finished_reason="abort") - \
        total(before, "vllm:request_success_total", finished_reason="abort") == 1
    generated = total(after, "vllm:generation_tokens_total") - \
        total(before, "vllm:generation_tokens_total")
    assert generated < 1500
    assert service.on_loop(lambda: service.engine.workers.counts[0].live) == 0


def test_a_client_leaving_a_non_streamed_request_cancels_it(service, worker, shipped):
    slots = slots_in_use(service, shipped[0])
    before = scrape(service.url)

    async def leave():
        async with httpx.AsyncClient(timeout=60) as http:
            task = asyncio.create_task(http.post(
                f"{service.url}/v1/completions", headers=HEADERS,
                json={"prompt": PROMPTS[1], "max_tokens": 1500, "temperature": 0,
                      "ignore_eos": True}))
            for _ in range(500):
                await asyncio.sleep(0.02)
                if sum(len(c.sessions) for c in worker.service.active):
                    break
            task.cancel()  # the client gives up: its connection closes
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(leave())
    assert wait_until(lambda: service.on_loop(
        lambda: len(service.engine.accelerator.admission.running)) == 0, 15)
    assert wait_until(lambda: sum(len(c.sessions) for c in worker.service.active) == 0, 15)
    assert slots_come_back(service, shipped[0], slots), (slots, slots_in_use(service, shipped[0]))
    after = scrape(service.url)  # withdrawn, not finished: an abort, well short of 1500 tokens
    assert total(after, "vllm:request_success_total", finished_reason="abort") - \
        total(before, "vllm:request_success_total", finished_reason="abort") == 1
    assert total(after, "vllm:generation_tokens_total") - \
        total(before, "vllm:generation_tokens_total") < 1500


def test_worker_killed_mid_stream_and_a_graceful_stop(shipped, reference):
    """Streams survive their worker dying (identical output, at the busy site alone); the
    service reports itself degraded, not failed; a stop lets a running stream finish."""
    w = start_worker(shipped[1])
    svc = start_service(shipped, [w.address])
    sampled = dict(temperature=0.8, top_p=0.9, seed=5)
    try:
        async def main():
            async with openai.AsyncOpenAI(base_url=f"{svc.url}/v1", api_key=API_KEY,
                                          max_retries=0, timeout=120) as client:
                streams = [await client.completions.create(
                    model=MODEL, prompt=p, max_tokens=40, stream=True,
                    extra_body={"return_token_ids": True, "ignore_eos": True}, **sampled)
                    for p in PROMPTS[:4]]
                firsts = [await s.__anext__() for s in streams]
                w.kill()  # every stream has started; the worker dies under them
                outs = []
                for first, s in zip(firsts, streams):
                    outs.append(first.choices[0].token_ids +
                                [t async for ch in s for t in ch.choices[0].token_ids])
                return outs

        outs = asyncio.run(main())
        for p, out in zip(PROMPTS[:4], outs):
            assert out == reference(p, 40, SamplingParams(0.8, 0, 0.9, 5), (), True).token_ids
        health = httpx.get(f"{svc.url}/health")
        assert health.status_code == 200
        assert health.json()["status"] == "degraded" and health.json()["workers_up"] == 0
        metrics = scrape(svc.url)
        assert total(metrics, "wanspec:local_fallbacks_total") >= 1
        assert total(metrics, "wanspec:worker_up") == 0
        # with the worker gone, requests are still served (at the busy site alone)
        r = httpx.post(f"{svc.url}/v1/completions", headers=HEADERS,
                       json={"prompt": PROMPTS[5], "max_tokens": 8, "temperature": 0,
                             "return_token_ids": True})
        assert r.status_code == 200
        assert r.json()["choices"][0]["token_ids"] == reference(PROMPTS[5], 8).token_ids

        # a graceful stop: the stream in flight completes, then the server exits
        chunks: list[str] = []
        with httpx.stream("POST", f"{svc.url}/v1/completions", headers=HEADERS, timeout=60,
                          json={"prompt": PROMPTS[6], "max_tokens": 30, "temperature": 0,
                                "stream": True, "ignore_eos": True}) as r:
            lines = r.iter_lines()
            chunks.append(next(line for line in lines if line.startswith("data: ")))
            svc.server.request_stop()
            chunks.extend(line for line in lines if line.startswith("data: "))
        assert chunks[-1] == "data: [DONE]"
        assert '"finish_reason": "length"' in chunks[-2]
        svc.done.result(30)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{svc.url}/health")
    finally:
        if not svc.done.done():
            stop_service(svc)
        else:
            svc.thread.stop()
        w.thread.stop()
