"""The real server on loopback, driven by the official ``openai`` client (and plain HTTP where
the client hides the wire): outputs equal target-only decoding, vLLM's shapes, 400s, auth."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from serve_support import API_KEY, MODEL

from wanspec.sampling import SamplingParams

PROMPT = "ROMEO.\n"
SAMPLED = dict(temperature=0.8, top_p=0.9, seed=21)
SAMPLING = SamplingParams(temperature=0.8, top_p=0.9, seed=21)
IDS = {"return_token_ids": True}


def chat_text(shipped, messages) -> str:
    return shipped[0].tokenizer.apply_chat_template(messages, tokenize=False,
                                                    add_generation_prompt=True)


def test_completion_greedy_equals_target_only(client, reference):
    ref = reference(PROMPT, 16)
    r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=16, temperature=0,
                                  extra_body=IDS)
    c = r.choices[0]
    assert c.token_ids == ref.token_ids and c.text == ref.text
    assert c.finish_reason == ("length" if ref.finish_reason == "max_tokens" else "stop")
    assert r.object == "text_completion" and r.model == MODEL and r.id.startswith("cmpl-")
    assert r.usage.prompt_tokens == ref.prompt_tokens
    assert r.usage.completion_tokens == len(ref.token_ids)
    assert r.usage.total_tokens == ref.prompt_tokens + len(ref.token_ids)


def test_seeded_completion_streamed_equals_target_only(client, reference):
    ref = reference(PROMPT, 24, SAMPLING, (), True)
    stream = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=24, stream=True,
                                       extra_body={**IDS, "ignore_eos": True},
                                       stream_options={"include_usage": True}, **SAMPLED)
    chunks = list(stream)
    tokens = [t for ch in chunks if ch.choices for t in ch.choices[0].token_ids]
    text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
    assert tokens == ref.token_ids and text == ref.text
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 24
    # tokens arrive as they are committed: some commits carry several (accepted drafts)
    sizes = [len(ch.choices[0].token_ids) for ch in chunks if ch.choices and ch.choices[0].token_ids]
    assert len(sizes) > 1 and max(sizes) > 1


def test_chat_equals_target_only_streamed_and_not(client, reference, shipped):
    messages = [{"role": "system", "content": "A scene in Verona."},
                {"role": "user", "content": "Who art thou?"}]
    ref = reference(chat_text(shipped, messages), 20, SAMPLING, (), True)
    r = client.chat.completions.create(model=MODEL, messages=messages, max_completion_tokens=20,
                                       extra_body={**IDS, "ignore_eos": True}, **SAMPLED)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == ref.text
    assert r.choices[0].token_ids == ref.token_ids
    stream = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=20,
                                            stream=True, extra_body={"ignore_eos": True},
                                            **SAMPLED)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == ref.text
    assert chunks[-1].choices[0].finish_reason == "length"
    assert all(ch.object == "chat.completion.chunk" for ch in chunks)


def test_stop_strings_end_the_text_before_them(client, reference):
    full = reference(PROMPT, 24, SamplingParams(), (), True)
    stop = full.text[6:9]
    assert stop.strip() and full.text.find(stop) >= 1
    ref = reference(PROMPT, 24, SamplingParams(), (stop,), True)
    assert ref.finish_reason == "stop_string"
    r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=24, temperature=0,
                                  stop=[stop], extra_body={**IDS, "ignore_eos": True})
    c = r.choices[0]
    assert c.token_ids == ref.token_ids  # the engine stops at the token completing it
    assert c.text == full.text[: full.text.find(stop)]
    assert c.finish_reason == "stop" and c.stop_reason == stop
    stream = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=24, temperature=0,
                                       stop=stop, stream=True, extra_body={"ignore_eos": True})
    assert "".join(ch.choices[0].text for ch in stream) == c.text


def test_stop_token_ids(client, reference):
    full = reference(PROMPT, 24, SamplingParams(), (), True)
    token = full.token_ids[5]
    r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=24, temperature=0,
                                  extra_body={**IDS, "ignore_eos": True,
                                              "stop_token_ids": [token]})
    c = r.choices[0]
    assert c.token_ids == full.token_ids[: full.token_ids.index(token) + 1]
    assert c.finish_reason == "stop" and c.stop_reason == token


def test_token_id_prompts_and_several_prompts_and_choices(client, reference, shipped):
    ids = shipped[0].encode(PROMPT)
    r = client.completions.create(model=MODEL, prompt=ids, max_tokens=8, temperature=0,
                                  extra_body=IDS)
    assert r.choices[0].token_ids == reference(PROMPT, 8).token_ids
    prompts = [PROMPT, "JULIET.\n"]
    r = client.completions.create(model=MODEL, prompt=prompts, max_tokens=8, n=2,
                                  extra_body={**IDS, "ignore_eos": True}, **SAMPLED)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    for c in r.choices:  # choice i*n + j: prompt i, seed + j
        sampling = SamplingParams(0.8, 0, 0.9, 21 + c.index % 2)
        assert c.token_ids == reference(prompts[c.index // 2], 8, sampling, (), True).token_ids
    assert r.usage.completion_tokens == 32
    assert r.usage.prompt_tokens == sum(len(shipped[0].encode(p)) for p in prompts)


def test_logprobs_are_the_targets(client, reference):
    r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0,
                                  logprobs=3, extra_body=IDS)
    lp = r.choices[0].logprobs
    assert len(lp.token_logprobs) == len(lp.tokens) == len(lp.top_logprobs) == 6
    for chosen, top in zip(lp.token_logprobs, lp.top_logprobs):
        assert len(top) == 3 and chosen <= 0
        assert chosen == pytest.approx(max(top.values()))  # greedy: the target's best token
    assert "".join(lp.tokens) == r.choices[0].text
    c = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                       max_tokens=4, temperature=0, logprobs=True,
                                       top_logprobs=2)
    content = c.choices[0].logprobs.content
    assert len(content) == 4 and all(len(t.top_logprobs) == 2 for t in content)


def test_spec_decode_metrics_are_opt_in(client):
    plain = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, temperature=0)
    assert getattr(plain, "metrics", None) is None
    r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0,
                                  extra_body={"spec_decode_metrics": True, "ignore_eos": True})
    m = r.metrics
    sd, ws = m["speculative_decoding"], m["wanspec"]
    assert sd["num_accepted_tokens"] <= sd["num_draft_tokens"]
    assert sum(sd["num_accepted_tokens_per_pos"]) == sd["num_accepted_tokens"]
    assert sd["mean_acceptance_length"] == pytest.approx(
        1 + sd["num_accepted_tokens"] / max(sd["num_drafts"], 1))
    assert ws["accepted_tokens"]["worker"] + ws["accepted_tokens"]["local"] == \
        sd["num_accepted_tokens"]
    assert ws["worker_drafts"]["received"] >= ws["worker_drafts"]["used"] > 0
    assert ws["worker"] is not None and ws["rtt_s"] > 0 and ws["worker_lost"] is None
    assert ws["draft_passes"]["worker"] is None or ws["draft_passes"]["worker"] > 0


@pytest.mark.parametrize("kwargs,needle", [
    ({"temperature": 2.5}, "temperature must be in [0, 2]"),
    ({"top_p": 0.0}, "top_p must be in (0, 1]"),
    ({"max_tokens": 0}, "max_tokens must be at least 1"),
    ({"max_tokens": 5000}, "maximum context length"),
    ({"n": 2, "temperature": 0}, "n must be 1 when using greedy sampling"),
    ({"stop": [""]}, "stop cannot contain an empty string"),
    ({"logprobs": 50}, "logprobs must be in [0, 20]"),
    ({"extra_body": {"top_k": -5}}, "top_k must be"),
    ({"extra_body": {"max_tokens": "many"}}, "max_tokens"),
    ({"frequency_penalty": 1.0}, "frequency_penalty is not supported"),
])
def test_bad_parameters_are_400s_with_an_openai_error_body(client, kwargs, needle):
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=MODEL, prompt=PROMPT, **{"max_tokens": 4, **kwargs})
    assert err.value.status_code == 400
    body = err.value.body
    assert needle in body["message"] and body["code"] == 400 and body["type"] == "BadRequestError"


def test_malformed_bodies_and_unknown_models(service):
    headers = {"Authorization": f"Bearer {API_KEY}"}
    url = f"{service.url}/v1/completions"
    for content in (b"{not json", b"[1, 2]", json.dumps({"max_tokens": 3}).encode(),
                    json.dumps({"prompt": {"a": 1}}).encode()):
        r = httpx.post(url, content=content, headers=headers)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == 400 and r.json()["error"]["message"]
    r = httpx.post(url, json={"model": "gpt-9", "prompt": "x"}, headers=headers)
    assert r.status_code == 404 and "does not exist" in r.json()["error"]["message"]
    r = httpx.get(f"{service.url}/v1/nothing", headers=headers)
    assert r.status_code == 404 and r.json()["error"]["code"] == 404


def test_chat_without_a_template_is_a_clear_400(client, shipped):
    tok = shipped[0].tokenizer
    saved, tok.chat_template = tok.chat_template, None
    try:
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model=MODEL, max_tokens=4,
                                           messages=[{"role": "user", "content": "Hi"}])
    finally:
        tok.chat_template = saved
    assert "no chat template" in err.value.body["message"]


def test_api_key_guards_v1_only(service):
    import openai as oa

    anon = oa.OpenAI(base_url=f"{service.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(oa.AuthenticationError) as err:
        anon.models.list()
    assert err.value.status_code == 401
    r = httpx.post(f"{service.url}/v1/completions", json={"prompt": "x", "max_tokens": 2})
    assert r.status_code == 401 and r.json()["error"]["code"] == 401
    for path in ("/health", "/version", "/metrics"):
        assert httpx.get(f"{service.url}{path}").status_code == 200


def test_request_ids_are_echoed_or_made(service, client):
    headers = {"Authorization": f"Bearer {API_KEY}", "X-Request-Id": "abc-123"}
    r = httpx.post(f"{service.url}/v1/completions", headers=headers,
                   json={"prompt": PROMPT, "max_tokens": 2, "temperature": 0})
    assert r.headers["x-request-id"] == "abc-123" and r.json()["id"] == "cmpl-abc-123"
    r = httpx.get(f"{service.url}/health")
    assert len(r.headers["x-request-id"]) == 32


def test_models_health_version(client, service, shipped):
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL]
    assert models[0].max_model_len == shipped[0].max_context
    health = httpx.get(f"{service.url}/health").json()
    assert health["status"] == "ok" and health["target"] == "ready"
    assert health["workers_up"] == 1 and health["workers"][0]["up"] is True
    from wanspec import __version__

    assert httpx.get(f"{service.url}/version").json() == {"version": __version__}


def test_sse_framing_is_vllms(service):
    headers = {"Authorization": f"Bearer {API_KEY}"}
    body = {"prompt": PROMPT, "max_tokens": 6, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{service.url}/v1/completions", json=body, headers=headers) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    payloads = [json.loads(e[len("data: "):]) for e in events[:-2]]
    assert all(e.startswith("data: ") for e in events[:-1])
    assert payloads[-1]["choices"] == [] and payloads[-1]["usage"]["completion_tokens"] == 6
    assert payloads[-2]["choices"][0]["finish_reason"] == "length"
