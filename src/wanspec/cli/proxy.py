"""``wanspec delay-proxy``: a WAN's round trip between two processes on one machine."""

from __future__ import annotations

from rich.console import Console

from wanspec.cli.common import check, check_can_listen
from wanspec.timing import clock
from wanspec.transport.delay_proxy import Delay, run_proxy
from wanspec.transport.factory import parse_address
from wanspec.units import parse_duration_ms


def run_delay_proxy(*, listen: str, to: str, rtt: str, jitter: str, udp: bool, seed: int,
                    console: Console) -> None:
    """Check every flag, then forward until interrupted."""
    host, port = parse_address(listen)
    upstream = parse_address(to)
    rtt_ms = parse_duration_ms(rtt, "--rtt")
    jitter_ms = parse_duration_ms(jitter, "--jitter")
    check(jitter_ms <= 60_000, f"--jitter must be at most 60 s, got {jitter_ms:g} ms")
    check((host, port) != upstream, "--listen and --to are the same address")
    check_can_listen(host, port, "--listen", udp=udp)
    delay = Delay.from_rtt_ms(rtt_ms, jitter_ms)

    def ready(bound: int) -> None:  # the bound port (--listen HOST:0 picks one)
        console.print(f"delay proxy listening on {'udp' if udp else 'tcp'}://{host}:{bound} -> "
                      f"{upstream[0]}:{upstream[1]}, RTT {rtt_ms:g} ms"
                      f"{f' + up to {jitter_ms:g} ms jitter each way' if jitter_ms else ''}; "
                      "Ctrl-C stops")

    try:
        clock.run(lambda: run_proxy(upstream, (host, port), delay, udp=udp, seed=seed,
                                    on_ready=ready))  # its delays on time
    except KeyboardInterrupt:
        pass
