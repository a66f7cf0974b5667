"""The load generator against a fake OpenAI server on a real socket: what it measures, how it
counts tokens and errors, and how its loops send requests.

Timings are checked against the server's known delays by their lower bounds (a sleep never ends
early) and by orderings and ratios, never by tight upper bounds: the machine may be busy.
"""

from __future__ import annotations

import asyncio
import statistics

import httpx
import pytest

from bench_fake_server import FakeOpenAI, Reply
from wanspec.bench.openai import (
    Endpoint,
    RequestOptions,
    resolve_endpoint,
    stream_request,
)
from wanspec.bench.runner import BenchConfig, request_prompts, run_bench, summarize
from wanspec.bench.sse import Event, SSEParser
from wanspec.emulate.load import Closed, Poisson
from wanspec.errors import WanspecError

EARLY = 0.005  # asyncio may wake a timer up to its clock resolution early


def one(server: FakeOpenAI, chat: bool = False, timeout: float = 10.0, max_tokens: int = 64):
    """One streamed request to ``server``, measured."""
    async def main():
        async with httpx.AsyncClient(timeout=timeout) as client:
            return await stream_request(client, Endpoint(server.url + "/v1", chat),
                                        RequestOptions("fake-model", max_tokens), "Hi")
    return asyncio.run(main())


def bench(server: FakeOpenAI, n: int, load=Closed(1), **kw):
    cfg = BenchConfig(endpoint=Endpoint(server.url + "/v1", kw.pop("chat", False)),
                      prompts=request_prompts(["a", "b", "c"], n), load=load, max_tokens=16,
                      **kw)
    run = asyncio.run(run_bench(cfg))
    return run, summarize(run)


# ---- server-sent events -------------------------------------------------------------------------

def feed(lines):
    p = SSEParser()
    events = [e for line in lines if (e := p.feed(line)) is not None]
    if (last := p.close()) is not None:
        events.append(last)
    return events


def test_sse_events_are_parsed_as_the_format_defines_them():
    lines = [": keep-alive", "", "data: {\"a\": 1}", "", "data:{\"b\": 2}", "",
             "event: error", "data: first", "data: second", "", "id: 7", "retry: 10",
             "data: [DONE]", ""]
    assert feed(lines) == [Event('{"a": 1}'), Event('{"b": 2}'),
                           Event("first\nsecond", "error"), Event("[DONE]")]


def test_an_event_without_its_closing_empty_line_is_still_delivered_at_the_end():
    assert feed(["data: [DONE]"]) == [Event("[DONE]")]
    assert feed(["event: x", ""]) == []  # no data: no event


# ---- endpoints ----------------------------------------------------------------------------------

@pytest.mark.parametrize("url, chat, api, is_chat", [
    ("http://h:8000", False, "http://h:8000/v1", False),
    ("http://h:8000/", True, "http://h:8000/v1", True),
    ("https://h/v1/", False, "https://h/v1", False),
    ("http://h:1/v1/completions", False, "http://h:1/v1", False),
    ("http://h:1/v1/chat/completions", False, "http://h:1/v1", True),
    ("http://h:1/openai", False, "http://h:1/openai/v1", False),
])
def test_endpoints_are_resolved_from_a_root_an_api_base_or_a_full_url(url, chat, api, is_chat):
    e = resolve_endpoint(url, chat)
    assert (e.api_base, e.chat) == (api, is_chat)
    assert e.url == api + ("/chat/completions" if is_chat else "/completions")


@pytest.mark.parametrize("url, needle", [
    ("h:8000", "http(s)://"), ("ftp://h/v1", "http(s)://"), ("http://:80", "http(s)://"),
    ("http://h:99999", "bad port"), ("http://h/v1?x=1", "no query"),
])
def test_bad_urls_are_refused_with_the_fix(url, needle):
    with pytest.raises(WanspecError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        resolve_endpoint(url)


def test_the_completions_url_with_chat_is_a_contradiction():
    with pytest.raises(WanspecError, match="--chat"):
        resolve_endpoint("http://h/v1/completions", chat=True)


# ---- what one request measures ------------------------------------------------------------------

def test_ttft_itl_and_tpot_follow_the_servers_delays():
    with FakeOpenAI(reply=lambda i, b: Reply(first_delay_s=0.3, gap_s=0.05, tokens=6)) as srv:
        rec = one(srv)
    assert rec.ok and rec.error is None
    assert rec.output_tokens == 6 and rec.tokens_from == "usage" and rec.chunks == 6
    assert rec.prompt_tokens == 3
    assert rec.ttft_s >= 0.3 - EARLY
    assert len(rec.itl_s) == 5 and min(rec.itl_s) >= 0.05 - EARLY
    itl = statistics.median(rec.itl_s)
    assert rec.ttft_s > 3 * itl  # the first token waits for the prefill, the rest do not
    assert rec.tpot_s == pytest.approx((rec.e2e_s - rec.ttft_s) / 5)
    assert rec.tpot_s >= 0.05 - EARLY and rec.e2e_s >= rec.ttft_s + 5 * (0.05 - EARLY)


def test_a_chunk_of_several_tokens_is_one_gap_and_tpot_shares_it_among_them():
    reply = Reply(first_delay_s=0.05, gap_s=0.12, tokens=12, tokens_per_chunk=4)
    with FakeOpenAI(reply=lambda i, b: reply) as srv:
        rec = one(srv)
    assert rec.ok and rec.chunks == 3 and rec.output_tokens == 12 and len(rec.itl_s) == 2
    assert min(rec.itl_s) >= 0.12 - EARLY
    # two gaps of >= 0.12 s carry 11 tokens after the first: TPOT is a fraction of the ITL
    assert rec.tpot_s >= 2 * (0.12 - EARLY) / 11
    assert rec.tpot_s < statistics.median(rec.itl_s) / 2


@pytest.mark.parametrize("token_ids, expected", [(True, 12), (False, 3)])
def test_without_usage_tokens_are_counted_from_the_chunks(token_ids, expected):
    reply = Reply(tokens=12, tokens_per_chunk=4, usage=False, token_ids=token_ids)
    with FakeOpenAI(reply=lambda i, b: reply) as srv:
        rec = one(srv)
    assert rec.ok and rec.tokens_from == "chunks" and rec.output_tokens == expected


def test_chat_streams_are_timed_from_content_not_from_the_role_announcement():
    with FakeOpenAI(reply=lambda i, b: Reply(first_delay_s=0.25, tokens=3)) as srv:
        rec = one(srv, chat=True)
        body = srv.completions()[0].body
    assert srv.completions()[0].path == "/v1/chat/completions"
    assert body["messages"] == [{"role": "user", "content": "Hi"}]
    assert body["max_completion_tokens"] == 64 and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert rec.ok and rec.chunks == 3 and rec.ttft_s >= 0.25 - EARLY


# ---- errors ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("reply, kind, needle", [
    (Reply(status=500), "http 500", "injected 500"),
    (Reply(status=429), "http 429", "injected 429"),
    (Reply(malformed_at=1), "malformed", "not JSON"),
    (Reply(drop_at=2), "dropped", "connection dropped"),
    (Reply(done=False), "malformed", "without data: [DONE]"),
    (Reply(stream_error_at=1), "stream error", "injected stream error"),
    (Reply(content_type="application/json"), "malformed", "text/event-stream"),
])
def test_each_failure_has_its_kind_and_message(reply, kind, needle):
    with FakeOpenAI(reply=lambda i, b: reply) as srv:
        rec = one(srv)
    assert not rec.ok and rec.error_kind == kind and needle in rec.error
    assert rec.e2e_s is None


def test_a_server_slower_than_the_timeout_is_a_timeout():
    with FakeOpenAI(reply=lambda i, b: Reply(first_delay_s=1.0)) as srv:
        rec = one(srv, timeout=0.2)
    assert not rec.ok and rec.error_kind == "timeout"


def test_a_closed_port_is_a_connect_error():
    with FakeOpenAI() as srv:
        url = srv.url
    rec = asyncio.run(_one_at(url))
    assert not rec.ok and rec.error_kind == "connect" and url in rec.error


async def _one_at(url: str):
    async with httpx.AsyncClient(timeout=5) as client:
        return await stream_request(client, Endpoint(url + "/v1"), RequestOptions("m", 4), "x")


def test_a_run_counts_errors_by_kind_and_keeps_going():
    def reply(i: int, body: dict) -> Reply:
        return [Reply(tokens=4), Reply(status=500), Reply(malformed_at=0), Reply(drop_at=1)][i % 4]

    with FakeOpenAI(reply=reply) as srv:
        run, s = bench(srv, 8, Closed(2))
    assert (s["requests"], s["completed"], s["failed"]) == (8, 2, 6)
    assert s["errors"] == {"dropped": 2, "http 500": 2, "malformed": 2}
    assert set(s["error_examples"]) == set(s["errors"])
    assert s["output_tokens"] == 8  # failed requests' tokens are not throughput
    assert [r.index for r in run.records] == list(range(8))
    assert [r.ok for r in run.records] == [True, False, False, False] * 2


# ---- loops and the summary ------------------------------------------------------------------------

def test_a_closed_loop_keeps_exactly_its_clients_in_flight():
    with FakeOpenAI(reply=lambda i, b: Reply(first_delay_s=0.1, tokens=2)) as srv:
        run, s = bench(srv, 9, Closed(3))
        assert len(srv.completions()) == 9 and srv.peak == 3
    assert s["completed"] == 9 and s["concurrency"] == 3 and s["request_rate"] is None
    starts = sorted(r.start_s for r in run.records)
    assert starts[2] < 0.05 and starts[3] >= 0.1 - EARLY  # the 4th waits for a free client


def test_an_open_loop_sends_at_its_arrivals_whatever_is_in_flight():
    load = Poisson(100.0, seed=5)
    with FakeOpenAI(reply=lambda i, b: Reply(first_delay_s=0.6, tokens=2)) as srv:
        run, s = bench(srv, 8, load)
        assert len(srv.completions()) == 8
        assert srv.peak >= 6  # they arrive within ~0.1 s and each takes 0.6 s
    arrivals = load.arrivals(8)
    assert arrivals[-1] < 0.3
    for rec, at in zip(run.records, arrivals):
        assert rec.start_s >= at - EARLY and rec.start_s < at + 0.3
    assert s["request_rate"] == 100.0 and s["concurrency"] is None and s["completed"] == 8


def test_goodput_counts_the_requests_that_meet_the_slo():
    def reply(i: int, body: dict) -> Reply:
        return Reply(tokens=4, gap_s=0.15 if i % 2 else 0.0)  # odd requests: TPOT >= 150 ms

    with FakeOpenAI(reply=reply) as srv:
        run, s = bench(srv, 4, Closed(2), slo_tpot_ms=100.0)
    assert s["slo_attained"] == 0.5
    assert s["goodput_tok_s"] == pytest.approx(8 / s["duration_s"])
    assert s["output_throughput_tok_s"] == pytest.approx(16 / s["duration_s"])
    assert s["goodput_req_s"] == pytest.approx(2 / s["duration_s"])
    assert s["tpot_ms_p99"] >= 150 - 1000 * EARLY > s["tpot_ms_p50"] / 2
    # a TTFT target as well: the fast half misses it too now
    with FakeOpenAI(reply=lambda i, b: Reply(tokens=2, first_delay_s=0.2 if i < 2 else 0)) as srv:
        _, s = bench(srv, 4, Closed(1), slo_tpot_ms=None, slo_ttft_ms=100.0)
    assert s["slo_attained"] == 0.5


def test_the_model_defaults_to_the_first_listed_and_the_key_is_sent():
    with FakeOpenAI(model="served-model", reply=lambda i, b: Reply(tokens=1)) as srv:
        run, s = bench(srv, 2, api_key="sk-test")
        seen = srv.seen
    assert run.model == s["model"] == "served-model"
    assert seen[0].method == "GET" and seen[0].path == "/v1/models"
    assert all(x.headers["authorization"] == "Bearer sk-test" for x in seen)
    assert [x.body["model"] for x in seen[1:]] == ["served-model"] * 2
    assert s["tpot_ms_p50"] is None  # one token each: no TPOT, and no made-up zero


def test_no_model_listed_is_a_one_line_error_before_any_request():
    with FakeOpenAI(models_status=404) as srv:
        with pytest.raises(WanspecError, match="cannot list models.*404.*give --model"):
            bench(srv, 2)
        assert srv.completions() == []


def test_prompts_are_cycled_to_the_number_of_requests():
    assert request_prompts(["a", "b"], 5) == ("a", "b", "a", "b", "a")
    assert request_prompts(["a", "b"], None) == ("a", "b")
