"""Soak runs of issue 12 ("trust nothing from the network"): fault schedules and frame fuzzing.

``faults``: randomized fault schedules on the virtual clock.  Each schedule draws a link (RTT,
jitter, delay spikes), a policy, greedy or seeded sampling, a few requests (one after another
or at once) and faults at random virtual times: the worker process killed and restarted, its
connection reset (the worker lives on), the worker stalled (it neither reads nor sends), and
RTT spikes (its messages held back).  A quarter of the schedules give the controller two workers
and a quarter three (each with its own RTT, each fault hitting one of them): requests are placed
on one and move to another when theirs fails.  Every request's output must equal target-only
decoding, and every schedule must end within a virtual-time and a wall-time bound.

``fuzz``: mutated frames (bit flips, truncation, extension, field-type swaps, arity changes,
length lies, random msgpack, random bytes, splices) fed (1) to a live worker over loopback TCP,
in many connections, and (2) to the controller's sans-I/O side -- ``FrameDecoder``, ``LinkCore``
and a ``ControllerCore`` verifying against a synthetic target.  No crash (an exception out of a
handler, a core or an asyncio task), bounded memory (tracemalloc peak and growth, decoder
buffers, chain lengths), every core-side request lossless; afterwards a real controller gets
the target's own output from the fuzzed worker.

    python scripts/soak.py faults --schedules 1000 --seed 1 --json faults.json
    python scripts/soak.py fuzz --frames 100000 --seed 1 --json fuzz.json

Both are seed-reproducible (``--only N`` reruns schedule N of a seed).  The exit status is 0
only if nothing was found.  The CI-sized runs are tests/scripts/test_soak_*.py.  This file is
the command line; the runs are ``soak_faults.py`` and ``soak_fuzz.py`` beside it, and what both
use (the shipped pair, its references) ``soak_common.py``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from wanspec.protocol.codec import DEFAULT_MAX_FRAME

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its parts, beside it
from soak_common import Pair, one_thread  # noqa: E402
from soak_faults import soak_faults  # noqa: E402
from soak_fuzz import soak_fuzz  # noqa: E402


MEMORY_LIMIT_MB = 256.0  # traced peak allowed in either fuzz run (the frame limit is 1 MiB)


def fuzz_verdict(report: dict[str, Any]) -> bool:
    w = report["worker"]
    return (report["crashes"] == 0 and report["hangs"] == 0 and report["divergences"] == 0
            and report["worker_serves_identically_afterwards"]
            and w["open_connections_after"] == 0 and w["sessions_after"] == 0
            and max(report["traced_peak_mb"].values()) < MEMORY_LIMIT_MB
            and report["controller"]["max_decoder_buffered"] <= DEFAULT_MAX_FRAME + 4)


def faults_verdict(report: dict[str, Any]) -> bool:
    return report["divergences"] == report["hangs"] == report["errors"] == 0


def _print_faults(r: dict[str, Any]) -> None:
    print(f"fault schedules: {r['schedules']} (seed {r['seed']}), requests {r['requests']}, "
          f"faults {r['faults']}")
    print(f"  divergences {r['divergences']}, hangs {r['hangs']}, errors {r['errors']}")
    print(f"  requests that used the worker {r['requests_using_the_worker']}, lost it "
          f"{r['requests_losing_the_worker']}; connections {r['connections']}")
    print(f"  schedules with several workers {r['schedules_with_several_workers']}, requests "
          f"moved to another worker {r['requests_moved_to_another_worker']}")
    print(f"  longest schedule: {r['virtual_s_max']:.2f} virtual s, "
          f"{r['wall_s_max_schedule']:.2f} wall s; total {r['wall_s']:.0f} wall s")


def _print_fuzz(r: dict[str, Any]) -> None:
    w, c = r["worker"], r["controller"]
    print(f"fuzz (seed {r['seed']}): worker {w['frames']} frames in {w['connections']} "
          f"connections ({w['wall_s']:.0f} s); controller side {c['frames']} frames in "
          f"{c['requests']} requests ({c['wall_s']:.0f} s)")
    print(f"  crashes {r['crashes']}, hangs {r['hangs']}, divergences {r['divergences']}")
    print(f"  worker afterwards: open connections {w['open_connections_after']}, sessions "
          f"{w['sessions_after']}; a real controller: {w['afterwards']}")
    print(f"  traced memory peak (MB): {r['traced_peak_mb']}; controller decoder buffered at "
          f"most {c['max_decoder_buffered']} B, chain at most {c['max_chain']} drafts")
    print(f"  worker mutators {w['by_mutator']}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("faults", help="randomized fault schedules on the virtual clock")
    f.add_argument("--schedules", type=int, default=1000)
    f.add_argument("--only", type=int, default=None, help="run schedule N of the seed only")
    z = sub.add_parser("fuzz", help="mutated frames into a live worker and the controller")
    z.add_argument("--frames", type=int, default=100_000)
    z.add_argument("--controller-frames", type=int, default=None,
                   help="frames for the controller's side (default: as many as --frames)")
    for sp in (f, z):
        sp.add_argument("--seed", type=int, default=1)
        sp.add_argument("--json", type=Path, default=None, help="write the report here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.CRITICAL)  # the faults are expected: keep the log quiet
    with one_thread():
        return _run(args)


def _commit() -> str:
    """The checkout's commit (with '+dirty' if it has changes): what a report measured."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, text=True,
                              capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, text=True, capture_output=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def _run(args: argparse.Namespace) -> int:
    pair = Pair()
    try:
        if args.command == "faults":
            report = soak_faults(pair, args.schedules, args.seed, args.only,
                                 progress=lambda s: print(s, file=sys.stderr, flush=True))
            _print_faults(report)
            ok = faults_verdict(report)
        else:
            report = soak_fuzz(pair, args.frames, args.seed, args.controller_frames)
            _print_fuzz(report)
            ok = fuzz_verdict(report)
    finally:
        pair.close()
    report["verdict"] = "pass" if ok else "FAIL"
    report["command"] = "python scripts/soak.py " + " ".join(sys.argv[1:])
    report["commit"] = _commit()
    print(f"verdict: {report['verdict']} (commit {report['commit']})")
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1, default=str) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
