"""How late asyncio's timers fire on real time: the default loop (epoll, whose timeout is whole
milliseconds rounded up) against :func:`wanspec.timing.clock.real_time_loop`, which every wanspec
process runs on.  Each sleep's lateness, over delays spread across a millisecond, and the same
for an emulated 4 ms draft pass whose compute takes 1.3 ms (what the device's floor sleeps)::

    .venv/bin/python benchmarks/timer_precision.py

Not a test: by hand (docs/results.md §10).
"""
import asyncio
import concurrent.futures
import statistics
import time

from wanspec.timing import clock
from wanspec.timing.device import Device, PassCost


async def lateness(n: int = 300) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    late = []
    for i in range(n):
        delay = 0.0005 + (i % 37) * 0.00013
        t0 = loop.time()
        await asyncio.sleep(delay)
        late.append(loop.time() - t0 - delay)
    device, pool = Device("draft"), concurrent.futures.ThreadPoolExecutor(1)
    passes = []
    for _ in range(100):
        t0 = loop.time()
        await device.run(lambda: time.sleep(0.0013), executor=pool, cost=PassCost(4.0),
                         n_tokens=1)
        passes.append(loop.time() - t0)
    pool.shutdown()
    return {"sleep late ms, mean": 1000 * statistics.mean(late),
            "p50": 1000 * statistics.median(late), "max": 1000 * max(late),
            "4 ms pass takes ms, mean": 1000 * statistics.mean(passes)}


def main() -> None:
    for name, factory in (("asyncio default loop", asyncio.new_event_loop),
                          ("wanspec real_time_loop", clock.real_time_loop)):
        with asyncio.Runner(loop_factory=factory) as runner:
            row = runner.run(lateness())
        print(f"{name:24s} " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()))


if __name__ == "__main__":
    main()
