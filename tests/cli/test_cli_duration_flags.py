"""Every duration flag reads the one grammar of wanspec.units: ``5s``, ``500ms``, and a bare
number in the unit its name or help gives (seconds for timeouts and --grace, ms for --*-ms);
absurd durations and counts are one-line errors."""

from __future__ import annotations

import pytest

from wanspec.cli.app import app
from wanspec.errors import WanspecError
from wanspec.models.backend import CausalLM
from wanspec.units import parse_duration_s

W = ["controller", "--worker", "127.0.0.1:1", "-p", "x"]


@pytest.mark.parametrize("text, seconds", [("5", 5.0), ("5s", 5.0), ("500ms", 0.5),
                                           ("0.25", 0.25), ("250000us", 0.25)])
def test_a_bare_timeout_is_seconds_and_units_are_read(text, seconds):
    assert parse_duration_s(text, "--timeout") == pytest.approx(seconds)


@pytest.mark.parametrize("text, zero", [("0", False), ("-1s", True), ("1e12", False),
                                        ("2d", False), ("nan", False)])
def test_bad_timeouts_are_refused(text, zero):
    with pytest.raises(WanspecError, match="--timeout"):
        parse_duration_s(text, "--timeout", zero=zero)


def test_zero_is_a_timeout_where_it_means_never():
    assert parse_duration_s("0", "--idle-timeout", zero=True) == 0.0


@pytest.fixture
def loads(monkeypatch):
    """The flags got past every check: the model load is where the command stops."""
    class Loaded(Exception):
        pass

    def stop(self, *args, **kwargs):
        raise Loaded

    monkeypatch.setattr(CausalLM, "__init__", stop)
    return Loaded


@pytest.mark.parametrize("args", [
    [*W, "--timeout", "5s"],
    [*W, "--timeout", "2500ms", "--target-ms", "0.03s", "--draft-ms", "4"],
    ["worker", "--hello-timeout", "5s", "--idle-timeout", "120",
     "--frame-timeout", "1500ms", "--draft-ms", "4ms"],
    ["generate", "-p", "x", "--target-ms", "30ms", "--draft-ms", "0.004s"],
])
def test_durations_with_units_are_accepted(runner, loads, args):
    r = runner.invoke(app, args)
    assert isinstance(r.exception, loads), r.output


@pytest.mark.parametrize("args, needle", [
    ([*W, "--timeout", "1e12"], "--timeout must be > 0 and at most 86400 s"),
    ([*W, "--timeout", "soon"], "invalid --timeout 'soon'"),
    ([*W, "--gamma", "65"], "--gamma must be at most 64, got 65"),
    ([*W, "--max-tokens", "10000000"], "--max-tokens must be at most 1,000,000"),
    (["controller", "--worker", "127.0.0.1:1", "--listen", "127.0.0.1:0", "--grace", "-1"],
     "--grace must be >= 0"),
    ([*W, "--target-ms", "1e9", "--draft-ms", "4"], "--target-ms must be between 0 and 100 s"),
    (["worker", "--hello-timeout", "1e9"], "--hello-timeout must be > 0 and at most 86400 s"),
    (["worker", "--max-batch", "100000"], "--max-batch must be at most 4,096"),
    (["generate", "-p", "x", "--gamma", "1000"], "--gamma must be at most 64"),
    (["emulate", "--gamma", "65"], "--gamma must be at most 64"),
    (["simulate", "--gamma", "65"], "--gamma must be at most 64"),
    (["bench", "--url", "http://127.0.0.1:1", "--timeout", "1e12"], "--timeout must be > 0"),
    (["probe", "127.0.0.1:1", "--timeout", "1e12"], "--timeout must be > 0"),
    (["probe", "127.0.0.1:1", "--count", "1000000"], "--count must be at most 100,000"),
])
def test_absurd_values_are_one_line_errors(runner, loads, narrow_stderr, args, needle):
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert needle in r.stderr, r.stderr
