"""The single-site engine behind ``wanspec generate --mode {target,sd}``: models, devices, timing."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Sequence, TypeVar

from wanspec.core.actions import Site
from wanspec.core.admission import Admission
from wanspec.core.batcher import BatchLimits, PassKind
from wanspec.core.local import GammaSchedule, LocalDecoder, LocalMode
from wanspec.core.stopping import StopCriteria
from wanspec.errors import WanspecError
from wanspec.models.backend import CausalLM
from wanspec.models.fingerprint import check_compatible
from wanspec.runtime.busy import SharedAccelerator
from wanspec.runtime.local import OnTokens, drive_local
from wanspec.runtime.placed import PlacedModel
from wanspec.sampling import SamplingParams
from wanspec.timing import clock
from wanspec.timing.device import DEFAULT_DRAFT_COST, DEFAULT_TARGET_COST, Device, PassCost

T = TypeVar("T")


@dataclass(frozen=True)
class TimingConfig:
    """Measured timing (both costs None) or emulated device costs for target and draft passes."""

    target: PassCost | None = None
    draft: PassCost | None = None
    # emulated only: the virtual clock also charges the host work measured as the run goes
    # (the loop's own Python; passes slower than their cost), as a real site pays it
    # (wanspec emulate --host-overhead measured; timing/clock.py)
    host_overhead: bool = False

    def __post_init__(self) -> None:
        if (self.target is None) != (self.draft is None):
            raise WanspecError("emulated timing needs both a target and a draft cost "
                               "(--target-ms and --draft-ms go together)")
        if self.host_overhead and self.target is None:
            raise WanspecError("measured timing already pays the host's work: --host-overhead "
                               "applies to emulated costs only")

    def run(self, main: Callable[[], Awaitable[T]]) -> T:
        """Run ``main()`` on this timing's clock: virtual when emulated (fast, deterministic,
        unless the host's work is charged), real otherwise."""
        return clock.run(main, virtual=self.emulated, charge_host=self.host_overhead)

    @property
    def emulated(self) -> bool:
        return self.target is not None

    @classmethod
    def emulate(cls, target_ms: float, draft_ms: float, verify_per_token_ms: float = 0.0,
                draft_per_token_ms: float = 0.0, *, compute_ms_per_token: float = 0.0,
                kv_ms_per_ktoken: float = 0.0, per_sequence_ms: float = 0.0,
                draft_compute_ms_per_token: float = 0.0, draft_kv_ms_per_ktoken: float = 0.0,
                draft_per_sequence_ms: float = 0.0) -> "TimingConfig":
        """Emulated costs; the roofline terms (compute, KV reads) matter only when passes carry
        many tokens, i.e. under load (:class:`~wanspec.timing.device.PassCost`)."""
        return cls(PassCost(target_ms, verify_per_token_ms, kv_ms_per_ktoken, compute_ms_per_token,
                            per_sequence_ms),
                   PassCost(draft_ms, draft_per_token_ms, draft_kv_ms_per_ktoken,
                            draft_compute_ms_per_token, draft_per_sequence_ms))

    @classmethod
    def deployment(cls) -> "TimingConfig":
        """The documented default: a 70B-class target on 4 A100s and a 1B-class draft on one
        (docs/results.md gives the calibration)."""
        return cls(DEFAULT_TARGET_COST, DEFAULT_DRAFT_COST)

    def describe(self) -> str:
        if not self.emulated:
            return "measured"
        assert self.target and self.draft
        roofline = ""
        if self.target.compute_ms_per_token or self.target.kv_ms_per_ktoken:
            roofline = (f", compute {self.target.compute_ms_per_token:g} ms/token, "
                        f"KV {self.target.kv_ms_per_ktoken:g} ms/1k, "
                        f"{self.target.per_sequence_ms:g} ms/request")
        host = ", host overhead measured" if self.host_overhead else ""
        return (f"emulated (target {self.target.base_ms:g} ms + {self.target.per_token_ms:g} ms/token"
                f"{roofline}, draft {self.draft.base_ms:g} ms{host})")


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: str
    mode: str
    metrics: dict[str, Any]
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)
    timing: str = "measured"
    token_gaps: list[float] = field(default_factory=list, repr=False)  # per-token latencies (s)

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "token_ids": self.token_ids,
            "prompt_tokens": self.prompt_tokens,
            "finish_reason": self.finish_reason,
            "mode": self.mode,
            "timing": self.timing,
            "metrics": {**self.metrics, "devices": self.devices},
        }


class LocalEngine:
    """Target (and optionally a draft) at one site, sharing one device as on a single GPU."""

    def __init__(self, target: CausalLM, draft: CausalLM | None = None,
                 timing: TimingConfig | None = None) -> None:
        if draft is not None:
            check_compatible(target.tokenizer, draft.tokenizer, target_name=str(target.path),
                             draft_name=str(draft.path))
        self.target = target
        self.draft = draft
        self.timing = timing or TimingConfig()

    def stop_criteria(self, max_tokens: int, stop_strings: Sequence[str] = (),
                      ignore_eos: bool = False) -> StopCriteria:
        return StopCriteria(
            max_tokens=max_tokens,
            eos_ids=frozenset() if ignore_eos else self.target.eos_ids,
            stop_strings=tuple(stop_strings),
            detokenize=self.target.decode if stop_strings else None,
        )

    def encode_prompt(self, prompt: str | Sequence[int]) -> list[int]:
        ids = self.target.encode(prompt) if isinstance(prompt, str) else list(prompt)
        if not ids:
            raise WanspecError("the prompt is empty after tokenization")
        return ids

    async def agenerate(
        self,
        prompt: str | Sequence[int],
        *,
        mode: LocalMode | str = LocalMode.SD,
        gamma: int = 4,
        schedule: GammaSchedule | str = GammaSchedule.CONSTANT,
        max_tokens: int = 64,
        sampling: SamplingParams | None = None,
        stop_strings: Sequence[str] = (),
        ignore_eos: bool = False,
        on_tokens: OnTokens | None = None,
        accelerator: SharedAccelerator | None = None,
    ) -> GenerationResult:
        """Decode one prompt.  With ``accelerator`` its passes share that device's batched passes
        with other requests (see :meth:`agenerate_many`); without, it has a device to itself."""
        mode = LocalMode(mode)
        sampling = sampling or SamplingParams()
        if mode is LocalMode.SD and self.draft is None:
            raise WanspecError("mode 'sd' needs a draft model")
        prompt_ids = self.encode_prompt(prompt)
        fits = getattr(self.target, "check_fits", None)  # duck-typed models may lack it
        if fits is not None:
            fits(len(prompt_ids), max_tokens)
        stop = self.stop_criteria(max_tokens, stop_strings, ignore_eos)
        decoder = LocalDecoder(prompt_ids, stop, mode=mode, gamma=gamma,
                               draft_site=Site.CONTROLLER, schedule=GammaSchedule(schedule))
        queued_s = 0.0
        if accelerator is None:
            device = Device(Site.CONTROLLER.value)  # one busy-site accelerator for both models
            target: Any = PlacedModel(self.target, device, self.timing.target, "target")
            draft: Any = (PlacedModel(self.draft, device, self.timing.draft, "draft")
                          if self.draft is not None and mode is LocalMode.SD else None)
            reason = await drive_local(decoder, target, draft, sampling, on_tokens)
        else:
            device = accelerator.device
            target = accelerator.model(PassKind.TARGET)
            draft = accelerator.model(PassKind.DRAFT) if mode is LocalMode.SD else None
            loop = asyncio.get_running_loop()
            arrived = loop.time()
            async with accelerator.admitted() as key:
                queued_s = loop.time() - arrived
                reason = await drive_local(decoder, target, draft, sampling,
                                           accelerator.reporting(key, on_tokens))
        out = decoder.transcript.output
        return GenerationResult(
            text=self.target.decode(out),
            token_ids=out,
            prompt_tokens=len(prompt_ids),
            finish_reason=reason,
            mode=mode.value,
            metrics={**decoder.metrics.to_dict(), "queued_s": queued_s},
            devices={device.name: device.stats.report()},
            timing=self.timing.describe(),
            token_gaps=list(decoder.metrics.token_gaps),
        )

    def accelerator(self, limits: BatchLimits | None = None,
                    admission: Admission | None = None) -> SharedAccelerator:
        """The busy site's one device, its passes batched across the requests that share it
        (and, with ``admission``, requests admitted under a TPOT target)."""
        device = Device(Site.CONTROLLER.value)
        target = PlacedModel(self.target, device, self.timing.target, "target")
        draft = (PlacedModel(self.draft, device, self.timing.draft, "draft")
                 if self.draft is not None else None)
        return SharedAccelerator(target, draft, limits, admission)

    async def agenerate_many(self, prompts: Sequence[str | Sequence[int]], *, concurrency: int,
                             limits: BatchLimits | None = None, **kwargs: Any
                             ) -> tuple[list[GenerationResult], SharedAccelerator]:
        """Decode every prompt with up to ``concurrency`` in flight (a closed loop: the next
        prompt starts when one finishes), all sharing one batched accelerator.  Results are in
        prompt order."""
        if concurrency < 1:
            raise WanspecError(f"concurrency must be >= 1, got {concurrency}")
        acc = self.accelerator(limits)
        results: list[GenerationResult | None] = [None] * len(prompts)
        queue = list(enumerate(prompts))

        async def client() -> None:
            while queue:
                i, p = queue.pop(0)
                results[i] = await self.agenerate(p, accelerator=acc, **kwargs)

        await asyncio.gather(*(client() for _ in range(min(concurrency, len(prompts)))))
        return [r for r in results if r is not None], acc

    def generate_many(self, prompts: Sequence[str | Sequence[int]], **kwargs: Any
                      ) -> tuple[list[GenerationResult], SharedAccelerator]:
        """Synchronous wrapper of :meth:`agenerate_many` (virtual clock when emulated)."""
        return self.timing.run(lambda: self.agenerate_many(prompts, **kwargs))

    def generate(self, prompt: str | Sequence[int], **kwargs: Any) -> GenerationResult:
        """Synchronous wrapper; emulated timing runs on a virtual clock (fast, deterministic)."""
        return self.timing.run(lambda: self.agenerate(prompt, **kwargs))
