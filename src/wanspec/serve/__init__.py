"""The controller as a service: an OpenAI-compatible HTTP API (as vLLM serves it) over the
remote engine, with Prometheus metrics under vLLM's names plus the WAN's own.

- :mod:`~wanspec.serve.protocol`: request bodies and their validation (plain functions).
- :mod:`~wanspec.serve.service`: one request's choices decoding on the engine, as events.
- :mod:`~wanspec.serve.text`, :mod:`~wanspec.serve.logprobs`: output text and logprobs.
- :mod:`~wanspec.serve.responses`: the JSON and SSE chunks.
- :mod:`~wanspec.serve.app`: the ASGI app; :mod:`~wanspec.serve.server`: uvicorn until stopped.
- :mod:`~wanspec.serve.metrics`: the controller's metrics; :mod:`~wanspec.serve.worker_http`:
  the worker's ``/metrics`` and ``/health``.
"""
