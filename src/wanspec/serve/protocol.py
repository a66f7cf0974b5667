"""The OpenAI-compatible request bodies (as vLLM accepts them) and what they ask the engine for.

The pydantic models only check types; every range and every combination is checked by
:func:`plan_completion` / :func:`plan_chat`, plain functions that turn a request into a
:class:`Plan` or raise :class:`~wanspec.serve.errors.APIError` (a 400 with vLLM's wording where
vLLM has one).  Field names, defaults and ranges follow vLLM's ``completion/protocol.py``,
``chat_completion/protocol.py`` and ``sampling_params.py``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Sequence, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, StrictBool, StrictStr
from pydantic import StrictInt as _StrictInt

from wanspec.sampling import SamplingParams
from wanspec.serve.errors import APIError

MAX_LOGPROBS = 20  # vLLM's default --max-logprobs
MAX_N = 16  # choices per request (each is a full decode at the busy site)
MAX_SEED = (1 << 63) - 1
MAX_CHARS_PER_TOKEN = 32  # generous: no tokenizer's tokens average more characters than this
DEFAULT_MAX_CHOICES = 64  # prompts x n in one request


def _integral(value: Any) -> Any:
    """An integral float (``5.0``) as its int, as vLLM's pydantic models accept it; ``5.5``,
    strings and bools stay refused."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


StrictInt = Annotated[_StrictInt, BeforeValidator(_integral)]


class _Body(BaseModel):
    # unknown fields are ignored, as vLLM does (it only logs them)
    model_config = ConfigDict(extra="allow")


class StreamOptions(_Body):
    include_usage: StrictBool | None = True
    continuous_usage_stats: StrictBool | None = False


class _Common(_Body):
    model: StrictStr | None = None
    n: StrictInt = 1
    temperature: float | None = None
    top_p: float | None = None
    top_k: StrictInt | None = None
    seed: StrictInt | None = None
    stop: StrictStr | list[StrictStr] | None = None
    stop_token_ids: list[StrictInt] | None = None
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    ignore_eos: StrictBool = False
    include_stop_str_in_output: StrictBool = False
    return_token_ids: StrictBool = False  # vLLM extra: the token ids of prompt and output
    spec_decode_metrics: StrictBool = False  # opt-in per-response speculative statistics
    # accepted only at their neutral values: wanspec's sampling is lossless by construction,
    # and these would change the target's distribution
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    min_p: float | None = None
    min_tokens: StrictInt | None = None
    logit_bias: dict[str, float] | None = None
    best_of: StrictInt | None = None
    user: StrictStr | None = None


class CompletionRequest(_Common):
    prompt: Union[StrictStr, list[StrictInt], list[StrictStr], list[list[StrictInt]]]
    max_tokens: StrictInt | None = 16
    logprobs: StrictInt | None = None
    echo: StrictBool | None = False
    suffix: StrictStr | None = None


class ChatMessage(_Body):
    role: StrictStr
    content: StrictStr | list[dict[str, Any]] | None = None
    name: StrictStr | None = None


class ChatCompletionRequest(_Common):
    messages: list[ChatMessage]
    max_tokens: StrictInt | None = None
    max_completion_tokens: StrictInt | None = None
    logprobs: StrictBool | None = False
    top_logprobs: StrictInt | None = None
    add_generation_prompt: StrictBool = True
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    response_format: dict[str, Any] | None = None
    chat_template_kwargs: dict[str, Any] | None = None  # passed to the template, as in vLLM


CHAT_ROLES = ("system", "developer", "user", "assistant")


@dataclass(frozen=True)
class Plan:
    """What one API request asks the engine for: ``len(prompts) * n`` decodes.

    Choice ``i * n + j`` decodes prompt ``i`` with ``seeds[j]``; a seeded request's first choice
    is exactly ``wanspec generate --mode target --seed SEED`` for the same prompt and flags.
    """

    prompts: list[list[int]]
    n: int
    max_tokens: list[int]  # per prompt
    sampling: SamplingParams  # of choice j = 0 (the others differ only in their seed)
    seeds: list[int]
    stop: tuple[str, ...]
    stop_token_ids: tuple[int, ...]
    ignore_eos: bool
    include_stop_str: bool
    logprobs: int | None  # alternatives per position when logprobs are asked for, else None
    stream: bool
    include_usage: bool
    continuous_usage: bool
    return_token_ids: bool
    spec_metrics: bool

    def sampling_for(self, j: int) -> SamplingParams:
        s = self.sampling
        return SamplingParams(s.temperature, s.top_k, s.top_p, self.seeds[j])


@dataclass(frozen=True)
class ModelLimits:
    """What validation needs to know of the target."""

    vocab_size: int
    max_context: int
    max_choices: int = DEFAULT_MAX_CHOICES  # prompts x n per request (--max-prompts-per-request)

    @property
    def max_prompt_chars(self) -> int:
        """A prompt longer than this cannot fit the context whatever the tokenizer: refused
        before tokenizing it (tokenizing megabytes blocks for seconds)."""
        return self.max_context * MAX_CHARS_PER_TOKEN


# ---- the checks -----------------------------------------------------------------------------


def sampling_from(req: _Common) -> SamplingParams:
    """vLLM's ranges: temperature in [0, 2] (0 = greedy), top_p in (0, 1], top_k -1/0 (off) or
    >= 1; the OpenAI defaults (temperature 1, top_p 1) when absent."""
    temperature = 1.0 if req.temperature is None else float(req.temperature)
    top_p = 1.0 if req.top_p is None else float(req.top_p)
    top_k = 0 if req.top_k is None else req.top_k
    if not 0.0 <= temperature <= 2.0:
        raise APIError(f"temperature must be in [0, 2], got {temperature}.", param="temperature")
    if not 0.0 < top_p <= 1.0:
        raise APIError(f"top_p must be in (0, 1], got {top_p}.", param="top_p")
    if top_k < -1:
        raise APIError(f"top_k must be 0 or -1 (disable), or at least 1, got {top_k}.",
                       param="top_k")
    if temperature == 0.0:  # greedy: vLLM resets the filters
        return SamplingParams(0.0, 0, 1.0, 0)
    return SamplingParams(temperature, max(top_k, 0), top_p, 0)


_CHANGES_DISTRIBUTION = ("wanspec's output is the target's own distribution, token for token, "
                         "and this would change it")
NO_ECHO = "returning the prompt with the completion is not implemented"
NO_SUFFIX = ("fill-in-the-middle needs a model trained for insertion; wanspec serves "
             "left-to-right completion only")
NO_TOOLS = "tool calling is not implemented (wanspec has no tool-call parser)"
NO_GUIDED = "structured (guided) output is not implemented: wanspec does not constrain sampling"

Neutral = tuple[str, Callable[[Any], bool], str]  # field, "is it at its neutral value", why


def check_neutral(req: _Common, extra: Sequence[Neutral] = ()) -> None:
    """Refuse the parameters wanspec cannot honour unless they are at their neutral values,
    each with its own reason."""
    neutral: list[Neutral] = [
        ("presence_penalty", lambda v: v in (None, 0, 0.0), _CHANGES_DISTRIBUTION),
        ("frequency_penalty", lambda v: v in (None, 0, 0.0), _CHANGES_DISTRIBUTION),
        ("repetition_penalty", lambda v: v in (None, 1, 1.0), _CHANGES_DISTRIBUTION),
        ("min_p", lambda v: v in (None, 0, 0.0), _CHANGES_DISTRIBUTION),
        ("min_tokens", lambda v: v in (None, 0), _CHANGES_DISTRIBUTION),
        ("logit_bias", lambda v: not v, _CHANGES_DISTRIBUTION),
        ("best_of", lambda v: v is None or v == req.n,
         "choosing the best of several completions is not implemented; use n"),
        *extra,
    ]
    for name, ok, why in neutral:
        if not ok(getattr(req, name)):
            raise APIError(f"{name} is not supported by wanspec ({why}); leave it unset.",
                           param=name)


def _seeds(req: _Common, sampling: SamplingParams) -> list[int]:
    if req.n < 1:
        raise APIError(f"n must be at least 1, got {req.n}.", param="n")
    if req.n > MAX_N:
        raise APIError(f"n must be at most {MAX_N}, got {req.n}.", param="n")
    if sampling.greedy:
        if req.n > 1:
            raise APIError(f"n must be 1 when using greedy sampling, got {req.n}.", param="n")
        return [0]
    if req.seed is not None and not 0 <= req.seed <= MAX_SEED:
        raise APIError(f"seed must be in [0, 2^63 - 1], got {req.seed}.", param="seed")
    base = req.seed if req.seed is not None else secrets.randbits(62)
    # choice j samples with seed + j: choice 0 is what the same seed gives alone
    return [(base + j) % (MAX_SEED + 1) for j in range(req.n)]


def _stops(req: _Common, limits: ModelLimits) -> tuple[tuple[str, ...], tuple[int, ...]]:
    stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    if any(s == "" for s in stop):
        raise APIError("stop cannot contain an empty string.", param="stop")
    ids = tuple(req.stop_token_ids or ())
    for t in ids:
        if not 0 <= t < limits.vocab_size:
            raise APIError(f"stop_token_ids: token id {t} is outside the vocabulary "
                           f"[0, {limits.vocab_size}).", param="stop_token_ids")
    return stop, ids


def _max_tokens(requested: int | None, prompt_len: int, limits: ModelLimits, param: str) -> int:
    if requested is not None and requested < 1:
        raise APIError(f"{param} must be at least 1, got {requested}.", param=param)
    room = limits.max_context - prompt_len
    if room < 1 or (requested is not None and requested > room):
        want = prompt_len + (requested if requested is not None else 1)
        raise APIError(f"This model's maximum context length is {limits.max_context} tokens. "
                       f"However, you requested {want} tokens ({prompt_len} in the prompt, "
                       f"{want - prompt_len} in the completion). Please reduce the length of "
                       f"the prompt or completion.", param=param)
    return requested if requested is not None else room


def _check_ids(ids: Sequence[int], limits: ModelLimits) -> None:
    if not ids:
        raise APIError("the prompt is empty.", param="prompt")
    bad = next((t for t in ids if not 0 <= t < limits.vocab_size), None)
    if bad is not None:
        raise APIError(f"prompt: token id {bad} is outside the vocabulary "
                       f"[0, {limits.vocab_size}).", param="prompt")


def check_prompt_chars(text: str, limits: ModelLimits, param: str = "prompt") -> None:
    """Refuse a text too long for the context by its length alone, without tokenizing it."""
    if len(text) > limits.max_prompt_chars:
        raise APIError(f"This model's maximum context length is {limits.max_context} tokens, "
                       f"and the {param} has {len(text)} characters: more than "
                       f"{limits.max_prompt_chars} ({MAX_CHARS_PER_TOKEN} per token) cannot "
                       f"fit. Please reduce the length of the {param}.", param=param)


def check_choices(prompts: int, req: _Common, limits: ModelLimits) -> None:
    """Each prompt x n is a full decode: a request may ask for at most ``max_choices``."""
    if prompts * max(req.n, 1) > limits.max_choices:
        raise APIError(f"this request asks for {prompts} prompt(s) x n={req.n} = "
                       f"{prompts * req.n} completions; this server allows at most "
                       f"{limits.max_choices} per request (--max-prompts-per-request).",
                       param="prompt" if prompts > 1 else "n")


def _plan(req: _Common, prompts: list[list[int]], max_tokens: int | None, max_param: str,
          logprobs: int | None, limits: ModelLimits) -> Plan:
    sampling = sampling_from(req)
    seeds = _seeds(req, sampling)
    stop, stop_ids = _stops(req, limits)
    for ids in prompts:
        _check_ids(ids, limits)
    budgets = [_max_tokens(max_tokens, len(ids), limits, max_param) for ids in prompts]
    if logprobs is not None and not 0 <= logprobs <= MAX_LOGPROBS:
        raise APIError(f"logprobs must be in [0, {MAX_LOGPROBS}], got {logprobs}.",
                       param="logprobs")
    opts = req.stream_options
    if opts is not None and not req.stream:
        raise APIError("stream_options can only be given when stream is true.",
                       param="stream_options")
    return Plan(prompts=prompts, n=req.n, max_tokens=budgets, sampling=sampling, seeds=seeds,
                stop=stop, stop_token_ids=stop_ids, ignore_eos=req.ignore_eos,
                include_stop_str=req.include_stop_str_in_output, logprobs=logprobs,
                stream=bool(req.stream),
                include_usage=bool(opts is not None and opts.include_usage),
                continuous_usage=bool(opts is not None and opts.continuous_usage_stats),
                return_token_ids=req.return_token_ids, spec_metrics=req.spec_decode_metrics)


def plan_completion(req: CompletionRequest, encode: Callable[[str], list[int]],
                    limits: ModelLimits) -> Plan:
    check_neutral(req, [("echo", lambda v: not v, NO_ECHO),
                        ("suffix", lambda v: v is None, NO_SUFFIX)])
    p = req.prompt
    if not isinstance(p, str) and not p:
        raise APIError("prompt must not be empty.", param="prompt")
    check_choices(1 if isinstance(p, str) or isinstance(p[0], int) else len(p), req, limits)
    if isinstance(p, str):
        check_prompt_chars(p, limits)
        prompts = [encode(p)]
    elif isinstance(p[0], int):
        prompts = [list(p)]  # type: ignore[arg-type]
    elif isinstance(p[0], str):
        for text in p:
            check_prompt_chars(text, limits)  # type: ignore[arg-type]
        prompts = [encode(s) for s in p]  # type: ignore[arg-type]
    else:
        prompts = [list(ids) for ids in p]  # type: ignore[union-attr]
    return _plan(req, prompts, req.max_tokens, "max_tokens", req.logprobs, limits)


def chat_messages(req: ChatCompletionRequest) -> list[dict[str, str]]:
    """The messages as a chat template takes them: text only, roles checked."""
    if not req.messages:
        raise APIError("messages must not be empty.", param="messages")
    out = []
    for i, m in enumerate(req.messages):
        if m.role not in CHAT_ROLES:
            raise APIError(f"messages[{i}].role must be one of {', '.join(CHAT_ROLES)}, "
                           f"got {m.role!r}.", param="messages")
        if m.content is None or isinstance(m.content, str):
            text = m.content or ""
        else:
            parts = []
            for part in m.content:
                if part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise APIError(f"messages[{i}].content: only text parts are supported "
                                   f"(this is a text model).", param="messages")
                parts.append(part["text"])
            text = "\n".join(parts)
        msg = {"role": m.role, "content": text}
        if m.name is not None:
            msg["name"] = m.name
        out.append(msg)
    return out


Render = Callable[[list[dict[str, str]], bool, dict[str, Any]], str]


def plan_chat(req: ChatCompletionRequest, render: Render,
              encode: Callable[[str], list[int]], limits: ModelLimits) -> Plan:
    check_neutral(req, [
        ("tools", lambda v: not v, NO_TOOLS), ("functions", lambda v: not v, NO_TOOLS),
        ("tool_choice", lambda v: v in (None, "none"), NO_TOOLS),
        ("response_format", lambda v: v is None or v.get("type") == "text", NO_GUIDED),
    ])
    if req.top_logprobs is not None:
        if not req.logprobs:
            raise APIError("top_logprobs requires logprobs to be true.", param="top_logprobs")
    logprobs = (req.top_logprobs or 0) if req.logprobs else None
    if req.max_tokens is not None and req.max_completion_tokens is not None \
            and req.max_tokens != req.max_completion_tokens:
        raise APIError("give max_completion_tokens or max_tokens, not both.",
                       param="max_completion_tokens")
    max_tokens, param = ((req.max_completion_tokens, "max_completion_tokens")
                         if req.max_completion_tokens is not None
                         else (req.max_tokens, "max_tokens"))
    check_choices(1, req, limits)
    messages = chat_messages(req)
    check_prompt_chars("".join(m["content"] for m in messages), limits, "messages")
    text = render(messages, req.add_generation_prompt, req.chat_template_kwargs or {})
    check_prompt_chars(text, limits, "messages")
    return _plan(req, [encode(text)], max_tokens, param, logprobs, limits)
