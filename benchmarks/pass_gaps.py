"""Each site's passes and the gaps between them, in real processes: how long a draft pass takes
against its emulated floor, and how long each device idles between passes while its host works.

Runs a real ``wanspec worker --draft-ms D`` and a real ``wanspec controller --target-ms T
--draft-ms D --policy remote`` on loopback (no proxy: RTT ~0), decoding the held-out prompts of
``realtime_fidelity.py`` (a warm-up, then 8 x 48 tokens), each with a tracing hook on its
devices (a ``sitecustomize`` put on ``PYTHONPATH``: it wraps ``Device.run`` and, at the busy
site, ``ControllerCore.on_event``, ``SharedAccelerator.enqueue`` and ``Batcher.next_pass``).
Prints per site: passes, their duration and compute, sequences a pass, and the gaps between
passes (a local draft round, ``RunDraft.count``, is one call to the device and counts as one
pass here); for the busy site, the passes that followed a verification at once, split into the
hops from the pass's end to the next pass's start, and the verifications started as the local
round before them ended (``RunDraft.then_verify``).  Profiles other code the same way with
``PYTHONPATH=<its checkout>/src`` (the hook goes in front)::

    .venv/bin/python benchmarks/pass_gaps.py
    PYTHONPATH=/tmp/before/src .venv/bin/python benchmarks/pass_gaps.py

Not a test: by hand, on a quiet machine (docs/results.md §10).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_server import WANSPEC, listening, start, stop
from realtime_fidelity import held_out

HOOK = '''
import atexit, json, os, time
_out = os.environ["WANSPEC_PASS_TRACE"]
_events = []
_now = time.perf_counter
import wanspec.timing.device as _device
_run = _device.Device.run
async def _traced_run(self, fn, **kw):
    box = {}
    def timed():
        t = _now(); r = fn(); box["compute"] = _now() - t; return r
    t0 = _now()
    _events.append(("start", t0))
    r = await _run(self, timed, **kw)
    _events.append(("end", _now(), self.name, _now() - t0, box.get("compute", 0.0),
                    kw.get("sequences", 1)))
    return r
_device.Device.run = _traced_run
if os.environ.get("WANSPEC_PASS_TRACE_BUSY"):
    import wanspec.core.controller as _cc, wanspec.runtime.busy as _busy, wanspec.core.batcher as _b
    _on_event = _cc.ControllerCore.on_event
    def _traced_on_event(self, e, now):
        _events.append(("core_in:" + type(e).__name__, _now()))
        r = _on_event(self, e, now)
        _events.append(("core_out", _now()))
        return r
    _cc.ControllerCore.on_event = _traced_on_event
    _enqueue = _busy.SharedAccelerator.enqueue
    def _traced_enqueue(self, *a, **k):
        _events.append(("enqueue", _now()))
        return _enqueue(self, *a, **k)
    _busy.SharedAccelerator.enqueue = _traced_enqueue
    _early = _busy.SharedAccelerator._early_verifications
    def _traced_early(self, *a, **k):
        e = _early(self, *a, **k)
        if e is not None:
            _events.append(("early", _now()))
        return e
    _busy.SharedAccelerator._early_verifications = _traced_early
    _next_pass = _b.Batcher.next_pass
    def _traced_next_pass(self, *a, **k):
        p = _next_pass(self, *a, **k)
        if p is not None:
            _events.append(("formed", _now()))
        return p
    _b.Batcher.next_pass = _traced_next_pass
atexit.register(lambda: json.dump(_events, open(_out, "w")))
'''


def ms(values: list[float], q: float) -> float:
    s = sorted(values)
    return 1000 * s[int(q * (len(s) - 1))] if s else float("nan")


def site_summary(events: list) -> None:
    ends = [e for e in events if e[0] == "end"]
    starts = [e[1] for e in events if e[0] == "start"]
    if not ends:
        return
    name = ends[0][2]
    durations = [e[3] for e in ends]
    computes = [e[4] for e in ends]
    gaps = [s - e[1] for e, s in zip(ends, starts[1:])]
    print(f"{name}: {len(ends)} passes, {statistics.mean(e[5] for e in ends):.1f} sequences a "
          f"pass; duration mean {1000 * statistics.mean(durations):.2f} ms (p50 "
          f"{ms(durations, .5):.2f}, p90 {ms(durations, .9):.2f}); compute mean "
          f"{1000 * statistics.mean(computes):.2f} ms (p90 {ms(computes, .9):.2f})")
    print(f"{name}: gap between passes p10 {ms(gaps, .1):.3f}, p25 {ms(gaps, .25):.3f}, "
          f"p50 {ms(gaps, .5):.3f}, p75 {ms(gaps, .75):.3f} ms")


def turnaround_summary(events: list, after: str = "TargetDone") -> None:
    """The busy site's passes that followed a pass of kind ``after`` (a verification:
    ``TargetDone``; a local draft: ``DraftDone``) at once: from the pass's end to the next
    pass's start, hop by hop."""
    hops: dict[str, list[float]] = {k: [] for k in (
        "end -> core", "core (verify, commit, decide)", "core -> queued", "queued -> formed",
        "formed -> device", "total")}
    i = 0
    while i < len(events):
        if events[i][0] != "end":
            i += 1
            continue
        j, seen = i + 1, {}
        while j < len(events) and events[j][0] != "start":
            seen.setdefault(events[j][0], events[j][1])
            j += 1
        if (j < len(events) and f"core_in:{after}" in seen and "enqueue" in seen
                and "formed" in seen and seen["enqueue"] - seen["core_out"] < 2e-4):
            t_end, t_next = events[i][1], events[j][1]
            hops["end -> core"].append(seen[f"core_in:{after}"] - t_end)
            hops["core (verify, commit, decide)"].append(seen["core_out"]
                                                         - seen[f"core_in:{after}"])
            hops["core -> queued"].append(seen["enqueue"] - seen["core_out"])
            hops["queued -> formed"].append(seen["formed"] - seen["enqueue"])
            hops["formed -> device"].append(t_next - seen["formed"])
            hops["total"].append(t_next - t_end)
        i = j
    n = len(hops["total"])
    what = "a verification" if after == "TargetDone" else "a local draft pass"
    print(f"controller: {n} passes followed {what} at once; ms p50 / mean / p90:")
    if not n:
        return
    for k, v in hops.items():
        print(f"  {k:32s} {ms(v, .5):.3f} / {1000 * statistics.mean(v):.3f} / {ms(v, .9):.3f}")


def early_summary(events: list) -> None:
    """The busy site's verifications started as the local draft round before them ended
    (``RunDraft.then_verify``): from the round's end to the verification's start."""
    gaps = []
    for i, e in enumerate(events):
        if e[0] != "end":
            continue
        j = i + 1
        while j < len(events) and events[j][0] not in ("start", "end"):
            j += 1
        if (j < len(events) and events[j][0] == "start"
                and any(x[0] == "early" for x in events[i + 1:j])):
            gaps.append(events[j][1] - e[1])
    print(f"controller: {len(gaps)} verifications started as their round ended; ms p50 / mean "
          f"/ p90:")
    if gaps:
        print(f"  {'round end -> verification':32s} {ms(gaps, .5):.3f} / "
              f"{1000 * statistics.mean(gaps):.3f} / {ms(gaps, .9):.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target-ms", type=float, default=30.0)
    ap.add_argument("--draft-ms", type=float, default=4.0)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--policy", default="remote",
                    help="the controller's policy (always / entropy: it drafts at the busy site)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="pass_gaps."))
    (tmp / "hook").mkdir()
    (tmp / "hook" / "sitecustomize.py").write_text(HOOK)
    _, prompts_file = held_out(args.prompts, tmp / "prompts.jsonl")
    path = os.pathsep.join(p for p in (str(tmp / "hook"), os.environ.get("PYTHONPATH")) if p)
    base = {**os.environ, "PYTHONPATH": path}
    worker_trace, busy_trace = tmp / "worker.json", tmp / "controller.json"
    os.environ.update(base, WANSPEC_PASS_TRACE=str(worker_trace))
    worker = start([*WANSPEC, "worker", "--listen", "127.0.0.1:0", "--draft-ms",
                    str(args.draft_ms)], tmp / "worker.log", read_stdout=True)
    try:
        address = listening(worker, tmp / "worker.log", "worker")
        env = {**base, "WANSPEC_PASS_TRACE": str(busy_trace), "WANSPEC_PASS_TRACE_BUSY": "1"}
        t0 = time.time()
        out = subprocess.run([*WANSPEC, "controller", "--worker", address, "--prompts",
                              str(prompts_file), "--json", "-n", "48", "--policy", args.policy,
                              "--target-ms", str(args.target_ms), "--draft-ms",
                              str(args.draft_ms), "--require-worker"],
                             env=env, capture_output=True, text=True, timeout=1800)
        if out.returncode != 0:
            sys.exit(f"controller failed: {out.stderr[-2000:]}")
        results = [json.loads(line) for line in out.stdout.splitlines()][1:]
    finally:
        stop(worker)  # (its trace is written as it exits)
    tokens = sum(len(r["token_ids"]) for r in results)
    tpot = statistics.mean(r["metrics"]["tpot_s_mean"] for r in results)
    passes = sum(r["metrics"]["target_passes"] for r in results)
    print(f"{tokens} tokens in {time.time() - t0:.0f} s; TPOT mean {1000 * tpot:.2f} ms, "
          f"{passes / tokens:.3f} target passes a token")
    for trace in (worker_trace, busy_trace):
        site_summary(json.loads(trace.read_text()))
    busy = json.loads(busy_trace.read_text())
    turnaround_summary(busy)
    turnaround_summary(busy, "DraftDone")
    early_summary(busy)


if __name__ == "__main__":
    main()
