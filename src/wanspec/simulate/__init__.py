"""``wanspec simulate``: the real sans-I/O cores on virtual time with synthetic models.

Why: the emulator (:mod:`wanspec.emulate`) runs real neural networks, so one sweep point costs
seconds to minutes.  The decisions that matter for latency (which drafts to verify, when to
draft locally, when to wait) live in the sans-I/O state machines of :mod:`wanspec.core`; driving
those *same* objects with synthetic models whose acceptance behaviour is a parameter makes a
sweep over RTT, acceptance, costs and policies take seconds, and makes the regimes where each
policy wins explicit.

Modules: :mod:`.config` (parameters), :mod:`.models` (synthetic target/draft), :mod:`.trace`
(acceptance traces), :mod:`.worlds` (sequences shared by all modes of a point),
:mod:`.link` (the in-process transport's latency model, pure),
:mod:`.engine` (discrete-event loop, remote policies), :mod:`.baselines` (target-only and
standard SD via :class:`~wanspec.core.local.LocalDecoder`), :mod:`.records` (metrics),
:mod:`.sweep` (grids, parallel runs), :mod:`.report` (tables, CSV/JSON, plots).
"""
