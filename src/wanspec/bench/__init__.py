"""Client tools for OpenAI-compatible endpoints: ``wanspec bench`` and ``wanspec probe``.

Why a separate package: these tools measure *any* server that speaks the OpenAI streaming API
(wanspec's controller or vLLM alike) from the outside, over httpx, with the timing a streaming
client actually sees.  They share nothing with the decoding runtime but the statistics
(:func:`wanspec.core.metrics.percentile`, :func:`wanspec.emulate.load.meets_slo`), the load
shapes (:mod:`wanspec.emulate.load`) and, for the probe's recommendation, the simulator.

Modules: :mod:`.sse` (server-sent events, sans-I/O), :mod:`.openai` (endpoints, requests, one
streamed request measured), :mod:`.runner` (closed and open loops, the summary),
:mod:`.report` (tables), :mod:`.probe` (connect RTT, TTFT, the recommendation).
"""
