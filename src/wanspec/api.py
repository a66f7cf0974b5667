"""wanspec's public Python API, re-exported by ``wanspec`` itself::

    from wanspec import SamplingParams, TimingConfig, emulate_deployment, generate, load_pair

    pair = load_pair()                                   # the shipped pair (or two directories)
    ref = generate(pair, "ROMEO.\\n", mode="target", max_tokens=32)
    remote = emulate_deployment(pair, ["ROMEO.\\n"], rtt="40ms", max_tokens=32,
                                timing=TimingConfig.emulate(target_ms=30, draft_ms=4))
    assert remote[0].token_ids == ref.token_ids          # lossless

and, at the busy site, ``serve(pair, workers=["worker.example.org:7700"], listen="0.0.0.0:8000")``
(what ``wanspec controller --listen`` runs).  Durations and bandwidths take the units of the
command line (``"40ms"``, ``"100Mbit/s"``; :mod:`wanspec.units`), or plain milliseconds and bits/s.
Everything here is what the CLI itself calls; lower layers (``wanspec.runtime``, ``wanspec.core``)
are importable too but may change between versions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple, Sequence

from wanspec.core.controller import ControllerConfig
from wanspec.core.policy import PolicyConfig, PolicyName
from wanspec.errors import WanspecError
from wanspec.models.backend import CausalLM
from wanspec.models.defaults import draft_path, target_path
from wanspec.models.fingerprint import check_compatible
from wanspec.runtime.controller import RemoteEngine, WorkerLink
from wanspec.runtime.engine import GenerationResult, LocalEngine, TimingConfig
from wanspec.runtime.inproc import InprocDeployment
from wanspec.sampling import SamplingParams
from wanspec.timing import clock
from wanspec.transport import factory
from wanspec.transport.inproc import LinkParams
from wanspec.units import parse_bandwidth_bps, parse_duration_ms

__all__ = [
    "GenerationResult", "LocalEngine", "ModelPair", "SamplingParams", "TimingConfig",
    "WanspecError", "deployment", "emulate_deployment", "generate", "load_pair",
    "remote_engine", "serve",
]


class ModelPair(NamedTuple):
    """A target and a draft with the same tokenizer (``draft`` None: target-only)."""

    target: CausalLM
    draft: CausalLM | None


def load_pair(target: str | Path | None = None, draft: str | Path | None = None, *,
              with_draft: bool = True, dtype: str = "auto", device: str = "auto",
              exact: bool = False) -> ModelPair:
    """Load a target and a draft (default: the pair shipped in the package; any local Hugging
    Face causal-LM directories otherwise, never a hub download); a draft with another tokenizer
    is refused.  ``exact``: batch-invariant target kernels (docs/architecture.md)."""
    tgt = CausalLM(target_path(target), dtype=dtype, device=device, name="target", exact=exact)
    drf = None
    if with_draft or draft is not None:
        drf = CausalLM(draft_path(draft), dtype=dtype, device=device, name="draft")
        check_compatible(tgt.tokenizer, drf.tokenizer, target_name=str(tgt.path),
                         draft_name=str(drf.path))
    return ModelPair(tgt, drf)


def _ms(value: str | float, what: str) -> float:
    return parse_duration_ms(value, what) if isinstance(value, str) else float(value)


def _policy(policy: str, max_slowdown: float | None = None) -> PolicyConfig:
    try:
        name = PolicyName(policy)
    except ValueError:
        raise WanspecError(f"unknown policy {policy!r}; choose from "
                           f"{', '.join(p.value for p in PolicyName)}") from None
    return PolicyConfig(name) if max_slowdown is None else PolicyConfig(
        name, max_slowdown=max_slowdown)


def generate(pair: ModelPair, prompt: str | Sequence[int], *, mode: str = "sd",
             max_tokens: int = 64, gamma: int = 4, sampling: SamplingParams | None = None,
             stop: Sequence[str] = (), ignore_eos: bool = False,
             timing: TimingConfig | None = None) -> GenerationResult:
    """Decode one prompt at one site: ``mode="target"`` (target-only) or ``"sd"`` (standard
    speculative decoding); the tokens are the same either way.  ``timing``: emulated pass
    costs (:meth:`TimingConfig.emulate`) or, by default, this machine's."""
    engine = LocalEngine(pair.target, pair.draft if mode != "target" else None, timing)
    return engine.generate(prompt, mode=mode, gamma=gamma, max_tokens=max_tokens,
                           sampling=sampling, stop_strings=stop, ignore_eos=ignore_eos)


def deployment(pair: ModelPair, *, rtt: str | float = "40ms", jitter: str | float = 0.0,
               bandwidth: str | float = 0.0, loss: float = 0.0, policy: str = "adaptive",
               gamma: int = 4, max_slowdown: float | None = None,
               timing: TimingConfig | None = None, seed: int = 0,
               branches: int = ControllerConfig.branches) -> InprocDeployment:
    """Both sites in this process over an emulated WAN link, as an ``async with`` context
    (``await dep.generate(prompt, ...)``).  Run it with ``timing.run(main)`` (the virtual
    clock when emulated), or use :func:`emulate_deployment`."""
    if pair.draft is None:
        raise WanspecError("a deployment needs a draft: load_pair(with_draft=True)")
    rtt_ms = _ms(rtt, "rtt")
    bandwidth_bps = (parse_bandwidth_bps(bandwidth, "bandwidth") if isinstance(bandwidth, str)
                     else float(bandwidth))
    link = LinkParams(rtt_ms=rtt_ms, jitter_ms=_ms(jitter, "jitter"), bandwidth_bps=bandwidth_bps,
                      spike_prob=loss, spike_ms=rtt_ms if loss else 0.0, seed=seed)
    config = ControllerConfig(gamma=gamma, policy=_policy(policy, max_slowdown),
                              branches=branches)
    return InprocDeployment(pair.target, pair.draft, link=link, timing=timing, config=config,
                            local_draft=policy != PolicyName.REMOTE.value)


def emulate_deployment(pair: ModelPair, prompts: Sequence[str | Sequence[int]], *,
                       max_tokens: int = 64, sampling: SamplingParams | None = None,
                       stop: Sequence[str] = (), ignore_eos: bool = False,
                       timing: TimingConfig | None = None, **link: Any) -> list[GenerationResult]:
    """Decode ``prompts`` one after another through one :func:`deployment` (``link``: its
    ``rtt``, ``jitter``, ``bandwidth``, ``loss``, ``policy``, ``gamma``, ...), on a virtual clock
    when ``timing`` is emulated: what ``wanspec generate --mode remote`` does per prompt."""
    timing = timing or TimingConfig()

    async def main() -> list[GenerationResult]:
        async with deployment(pair, timing=timing, **link) as dep:
            return [await dep.generate(p, max_tokens=max_tokens, sampling=sampling,
                                       stop_strings=stop, ignore_eos=ignore_eos)
                    for p in prompts]

    return timing.run(main)


def remote_engine(pair: ModelPair, workers: Sequence[str], *, transport: str = "tcp",
                  tls: bool = False, ca: Path | None = None, insecure: bool = False,
                  cert: Path | None = None, key: Path | None = None,
                  auth_key: bytes | None = None, timeout_s: float = 5.0,
                  policy: str = "adaptive", gamma: int = 4, max_slowdown: float | None = None,
                  timing: TimingConfig | None = None,
                  branches: int = ControllerConfig.branches) -> RemoteEngine:
    """The busy site's engine, drafting on real workers at ``HOST:PORT`` (the best of several;
    ``pair.draft``, if any, is the local copy for redundancy and fallback).  Create it inside
    the event loop that uses it; ``await engine.agenerate(prompt, ...)`` decodes."""
    workers = list(workers)
    if not workers:
        raise WanspecError("give at least one worker HOST:PORT")
    for address in workers:
        factory.parse_address(address)

    def connector(address: str) -> Any:
        async def connect() -> Any:
            return await factory.connect(transport, address, tls=tls, ca=ca, insecure=insecure,
                                         cert=cert, key=key, timeout=timeout_s)
        return connect

    hello = RemoteEngine.hello_for(pair.target)
    links = [WorkerLink(connector(a), hello, hello_timeout=timeout_s, name=a, auth_key=auth_key)
             for a in workers]
    name = PolicyName.REMOTE.value if pair.draft is None else policy
    config = ControllerConfig(gamma=gamma, policy=_policy(name, max_slowdown), branches=branches)
    return RemoteEngine(pair.target, links, local_draft=pair.draft, timing=timing, config=config)


def serve(pair: ModelPair, *, workers: Sequence[str], listen: str = "127.0.0.1:8000",
          model_name: str | None = None, api_key: str | None = None, grace_s: float = 30.0,
          **engine: Any) -> None:
    """Serve the OpenAI-compatible API (completions, chat, streaming, /metrics; docs/serving.md)
    on ``listen`` until SIGINT/SIGTERM, drafting on ``workers`` (``engine``: the options of
    :func:`remote_engine`)."""
    from rich.console import Console

    from wanspec.cli.serving import serve_engine

    factory.parse_address(listen)

    async def main() -> None:
        await serve_engine(remote_engine(pair, workers, **engine), listen=listen,
                           model_name=model_name or pair.target.path.name, api_key=api_key,
                           grace_s=grace_s, console=Console(stderr=True, highlight=False))

    clock.run(main)
