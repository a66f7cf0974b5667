"""One unit grammar (wanspec.units): every duration and bandwidth flag and sweep value."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wanspec.errors import WanspecError
from wanspec.units import (
    format_bandwidth,
    parse_bandwidth_bps,
    parse_duration_ms,
    read_bandwidth_bps,
)


@pytest.mark.parametrize("text,ms", [
    ("40ms", 40.0), ("0.04s", 40.0), ("40", 40.0), ("250us", 0.25), ("250µs", 0.25),
    (" 1.5 s ", 1500.0), ("0", 0.0), ("1e2ms", 100.0), ("100S", 100_000.0),
])
def test_durations(text, ms):
    assert parse_duration_ms(text, "--rtt") == pytest.approx(ms)


@pytest.mark.parametrize("text,needle", [
    ("abc", "invalid --rtt 'abc'"), ("40 furlongs", "invalid --rtt"), ("", "invalid --rtt"),
    ("-5ms", "between 0 and 100 s"), ("101s", "between 0 and 100 s"), ("nan", "invalid --rtt"),
])
def test_bad_durations_are_one_line_errors(text, needle):
    with pytest.raises(WanspecError, match=needle.replace("(", r"\(")) as e:
        parse_duration_ms(text, "--rtt")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("text,bps", [
    ("100Mbit/s", 100e6), ("100Mbps", 100e6), ("100mbit", 100e6), ("100 Mb/s", 100e6),
    ("12.5MB/s", 100e6), ("12.5MBps", 100e6), ("12.5Mbyte/s", 100e6), ("12.5 MBytes/sec", 100e6),
    ("1Gbit", 1e9), ("1gbit/s", 1e9), ("500kbit/s", 500e3), ("500kB/s", 4e6), ("2T", 2e12),
    ("100", 100e6),  # a bare number is Mbit/s, for flags and sweeps alike
    ("0", 0.0), ("unlimited", 0.0), ("inf", 0.0), ("8000bit/s", 8000.0), ("1kB", 8000.0),
])
def test_bandwidths(text, bps):
    assert parse_bandwidth_bps(text, "--bandwidth") == pytest.approx(bps)


@pytest.mark.parametrize("text,needle", [
    ("lots", "invalid --bandwidth 'lots'"), ("100 MiB/s", "unknown unit 'iB/s'"),
    ("100ms", "unknown unit 's'"), ("-100Mbit", "between 1 kbit/s and 10 Tbit/s"),
    ("20Tbit/s", "between 1 kbit/s and 10 Tbit/s"), ("100bit/s", "between 1 kbit/s"),
    ("1e400", "not a finite bandwidth"),
])
def test_bad_bandwidths_are_one_line_errors(text, needle):
    with pytest.raises(WanspecError, match=needle.replace("(", r"\(")) as e:
        parse_bandwidth_bps(text, "--bandwidth")
    assert "\n" not in str(e.value)


_PREFIXES = {"": 1.0, "k": 1e3, "M": 1e6, "G": 1e9}


@given(st.integers(1, 10_000), st.sampled_from(sorted(_PREFIXES)),
       st.sampled_from(["bit/s", "bps", "bit", "b/s"]), st.sampled_from(["B/s", "Bps", "byte/s"]))
def test_bytes_are_eight_bits_whatever_the_spelling(n, prefix, bit_unit, byte_unit):
    bits = read_bandwidth_bps(f"{n}{prefix}{bit_unit}")
    assert bits == pytest.approx(n * _PREFIXES[prefix])
    assert read_bandwidth_bps(f"{n}{prefix}{byte_unit}") == pytest.approx(8 * bits)


@given(st.floats(1e3, 1e13))
def test_formatted_bandwidth_reads_back(bps):
    text = format_bandwidth(bps).replace(" ", "")
    assert parse_bandwidth_bps(text) == pytest.approx(bps, rel=1e-3)


@given(st.floats(0, 100_000))
def test_durations_in_seconds_and_ms_agree(ms):
    assert parse_duration_ms(f"{ms / 1000!r}s") == pytest.approx(ms)
    assert parse_duration_ms(repr(ms)) == pytest.approx(ms)
