"""--sweep parsing: ranges, lists, units, and one-line errors for bad values."""

from __future__ import annotations

import pytest

from wanspec.errors import WanspecError
from wanspec.simulate.config import SimConfig
from wanspec.simulate.sweep import grid, parse_sweep


@pytest.mark.parametrize("spec,values", [
    ("rtt=0:150:10", tuple(float(x) for x in range(0, 151, 10))),
    ("rtt=0:155:10", tuple(float(x) for x in range(0, 151, 10))),  # stop not landed on: excluded
    ("alpha=0.6,0.7,0.8,0.9", (0.6, 0.7, 0.8, 0.9)),
    ("alpha=0.1:0.3:0.1", (0.1, 0.2, 0.3)),  # no float drift, stop included
    ("alpha=0.5:0.9:0.1", (0.5, 0.6, 0.7, 0.8, 0.9)),
    ("gamma=1:8:1", tuple(range(1, 9))),
    ("gamma=2,4,4,8", (2, 4, 8)),  # duplicates dropped
    ("rtt=5", (5.0,)),
    ("rtt=10ms,20ms", (10.0, 20.0)),  # the parameter's own unit may be written
    ("0,10,20", (0.0, 10.0, 20.0)),  # no NAME=: RTTs, as for `wanspec emulate --sweep`
    ("target-ms=20:40:10", (20.0, 30.0, 40.0)),
    ("draft=2,4", (2.0, 4.0)),
    ("bandwidth=0,10", (0.0, 10.0)),  # a bare bandwidth is Mbit/s, as --bandwidth 10
    ("bandwidth=10Mbit/s,1MB/s,1Gbit,500kbps", (10.0, 8.0, 1000.0, 0.5)),  # bytes are x 8
    ("rtt=0.01s,20ms,30", (10.0, 20.0, 30.0)),
    ("jitter=0:1s:250ms", (0.0, 250.0, 500.0, 750.0, 1000.0)),
])
def test_valid_sweeps(spec, values):
    s = parse_sweep(spec)
    assert s.values == values
    assert all(isinstance(v, s.param.kind) for v in s.values)


@pytest.mark.parametrize("spec,message", [
    ("rttt=0:10:1", "unknown parameter 'rttt'"),
    ("rtt=", "use NAME=START:STOP:STEP"),
    ("rtt=0:10", "START:STOP:STEP"),
    ("rtt=0:10:0", "step must be > 0"),
    ("rtt=0:10:-1", "step must be > 0"),
    ("rtt=10:0:1", "stop is below start"),
    ("rtt=a,b", "invalid rtt 'a'"),
    ("alpha=a", "'a' is not a number"),
    ("bandwidth=100furlongs", "unknown unit 'furlongs'"),
    ("bandwidth=20Tbit/s", "bandwidth must be >= 0 and <= 1e"),
    ("bandwidth=100bit/s", "bandwidth must be 0 or >= 0.001 Mbit/s"),
    ("rtt=1,,2", "empty value"),
    ("rtt=-5,5", "rtt must be >= 0"),
    ("alpha=0.5,1.0", "alpha must be >= 0 and < 1"),
    ("alpha=nan", "not a finite number"),
    ("gamma=1.5", "gamma must be a whole number"),
    ("gamma=0:4:1", "gamma must be >= 1"),
    ("rtt=0:1e9:1", "at most"),
])
def test_bad_sweeps_are_one_line_errors(spec, message):
    with pytest.raises(WanspecError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        parse_sweep(spec)
    assert "\n" not in str(e.value)


def test_grid_is_the_product_with_the_first_sweep_slowest():
    pts = grid(SimConfig(), [parse_sweep("rtt=0,10"), parse_sweep("alpha=0.6,0.8,0.9")])
    assert [(p.rtt_ms, p.alpha) for p in pts] == [
        (0.0, 0.6), (0.0, 0.8), (0.0, 0.9), (10.0, 0.6), (10.0, 0.8), (10.0, 0.9)]
    assert grid(SimConfig(), []) == [SimConfig()]


def test_grid_refuses_a_parameter_twice_and_huge_grids():
    with pytest.raises(WanspecError, match="given twice"):
        grid(SimConfig(), [parse_sweep("rtt=0,1"), parse_sweep("rtt_ms=2")])
    with pytest.raises(WanspecError, match="points"):
        grid(SimConfig(), [parse_sweep("rtt=0:999:1"), parse_sweep("jitter=0:99:1")])


def test_config_validation_is_one_line():
    for kw, msg in [({"gamma": 0}, "gamma must be >= 1"), ({"alpha": 1.0}, "alpha"),
                    ({"match": "zipf"}, "unknown match model"), ({"rtt_ms": -1}, "rtt")]:
        with pytest.raises(WanspecError, match=msg):
            SimConfig(**kw)
