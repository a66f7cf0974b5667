"""Request validation (no model, no server): vLLM's ranges, every bad request an APIError (400)."""

from __future__ import annotations

import pytest

from wanspec.serve.errors import APIError
from wanspec.serve.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    ModelLimits,
    plan_chat,
    plan_completion,
)

LIMITS = ModelLimits(vocab_size=512, max_context=64)


def encode(text: str) -> list[int]:
    return [ord(c) % 512 for c in text]


def completion(**fields):
    return plan_completion(CompletionRequest.model_validate({"prompt": "hello", **fields}),
                           encode, LIMITS)


def chat(**fields):
    body = {"messages": [{"role": "user", "content": "hi"}], **fields}
    return plan_chat(ChatCompletionRequest.model_validate(body),
                     lambda msgs, gen, kw: "".join(m["content"] for m in msgs), encode, LIMITS)


@pytest.mark.parametrize("fields,needle", [
    ({"temperature": 2.5}, "temperature must be in [0, 2]"),
    ({"temperature": -0.1}, "temperature must be in [0, 2]"),
    ({"top_p": 0}, "top_p must be in (0, 1]"),
    ({"top_p": 1.5}, "top_p must be in (0, 1]"),
    ({"top_k": -2}, "top_k must be 0 or -1"),
    ({"max_tokens": 0}, "max_tokens must be at least 1"),
    ({"max_tokens": 60}, "maximum context length is 64 tokens"),
    ({"n": 0}, "n must be at least 1"),
    ({"n": 2, "temperature": 0}, "n must be 1 when using greedy sampling"),
    ({"n": 17, "temperature": 1}, "n must be at most 16"),
    ({"seed": -1, "temperature": 1}, "seed must be in [0, 2^63 - 1]"),
    ({"stop": ["a", ""]}, "stop cannot contain an empty string"),
    ({"stop_token_ids": [600]}, "outside the vocabulary"),
    ({"logprobs": 21}, "logprobs must be in [0, 20]"),
    ({"presence_penalty": 0.5}, "presence_penalty is not supported"),
    ({"min_p": 0.1}, "min_p is not supported"),
    ({"echo": True}, "echo is not supported"),
    ({"stream_options": {"include_usage": True}}, "can only be given when stream is true"),
    ({"prompt": []}, "prompt must not be empty"),
    ({"prompt": [1, 2, 9999]}, "token id 9999 is outside the vocabulary"),
    ({"prompt": ""}, "the prompt is empty"),
])
def test_bad_completion_requests_are_400s(fields, needle):
    with pytest.raises(APIError) as err:
        completion(**fields)
    assert err.value.status == 400 and needle in err.value.message
    body = err.value.body()["error"]
    assert body["code"] == 400 and body["type"] == "BadRequestError" and needle in body["message"]


@pytest.mark.parametrize("fields,needle", [
    ({"messages": []}, "messages must not be empty"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "role must be one of"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     "only text parts"),
    ({"top_logprobs": 2}, "top_logprobs requires logprobs"),
    ({"logprobs": True, "top_logprobs": 30}, "logprobs must be in [0, 20]"),
    ({"max_tokens": 4, "max_completion_tokens": 5}, "not both"),
    ({"max_completion_tokens": 0}, "max_completion_tokens must be at least 1"),
    ({"tools": [{"type": "function"}]}, "tools is not supported"),
    ({"response_format": {"type": "json_object"}}, "response_format is not supported"),
])
def test_bad_chat_requests_are_400s(fields, needle):
    with pytest.raises(APIError) as err:
        chat(**fields)
    assert err.value.status == 400 and needle in err.value.message


def test_defaults_follow_openai_and_vllm():
    p = completion()
    assert p.max_tokens == [16] and p.n == 1 and not p.stream and p.logprobs is None
    assert p.sampling.temperature == 1.0 and p.sampling.top_p == 1.0 and p.sampling.top_k == 0
    c = chat()
    assert c.max_tokens == [LIMITS.max_context - 2]  # chat: up to the context
    assert c.logprobs is None


def test_greedy_resets_the_filters_and_seeds_number_the_choices():
    g = completion(temperature=0, top_p=0.5, top_k=3)
    assert g.sampling.greedy and g.sampling.top_k == 0 and g.sampling.top_p == 1.0
    s = completion(temperature=0.8, seed=41, n=3, top_k=-1)
    assert s.seeds == [41, 42, 43] and s.sampling.top_k == 0
    assert s.sampling_for(2).seed == 43 and s.sampling_for(0).temperature == 0.8


def test_prompt_forms():
    assert completion(prompt="ab").prompts == [encode("ab")]
    assert completion(prompt=["ab", "c"]).prompts == [encode("ab"), encode("c")]
    assert completion(prompt=[5, 6]).prompts == [[5, 6]]
    assert completion(prompt=[[5], [6, 7]]).prompts == [[5], [6, 7]]


def test_chat_max_completion_tokens_and_stops():
    c = chat(max_completion_tokens=5, stop="x", stop_token_ids=[3], ignore_eos=True,
             logprobs=True, top_logprobs=2, stream=True,
             stream_options={"include_usage": True})
    assert c.max_tokens == [5] and c.stop == ("x",) and c.stop_token_ids == (3,)
    assert c.ignore_eos and c.logprobs == 2 and c.include_usage
