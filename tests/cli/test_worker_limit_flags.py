"""``wanspec worker``'s limit options: a bad value is one line of error, before any model loads."""

from __future__ import annotations

import pytest

from wanspec.cli.app import app


@pytest.mark.parametrize("flag, value, message", [
    ("--max-connections", "0", "--max-connections must be >= 1, got 0"),
    ("--max-sessions", "0", "--max-sessions must be >= 1, got 0"),
    ("--max-connection-sessions", "-1", "--max-connection-sessions must be >= 1, got -1"),
    ("--max-prompt", "0", "--max-prompt must be >= 1, got 0"),
    ("--max-lookahead", "0", "--max-lookahead must be >= 1, got 0"),
    ("--hello-timeout", "0", "--hello-timeout must be > 0 and at most 86400 s, got '0'"),
    ("--hello-timeout", "1e9", "--hello-timeout must be > 0 and at most 86400 s, got '1e9'"),
    ("--frame-timeout", "-1", "--frame-timeout must be > 0 and at most 86400 s, got '-1'"),
    ("--frame-timeout", "inf", "invalid --frame-timeout 'inf'"),
    ("--idle-timeout", "-0.5", "--idle-timeout must be >= 0 and at most 86400 s, got '-0.5'"),
    ("--idle-timeout", "5 min", "invalid --idle-timeout '5 min'"),
])
def test_bad_limits_are_one_line_errors_before_models_load(runner, flag, value, message):
    # the draft directory does not exist: the limit is refused before it is looked at
    r = runner.invoke(app, ["worker", "--draft", "/nonexistent/draft", flag, value])
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit), r.output
    assert r.stdout == "" and "Traceback" not in r.output
    err = r.stderr
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert message in err
