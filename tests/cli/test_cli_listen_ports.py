"""A listen port already taken is a one-line error naming the flag before any model loads (it
was found only after the 5-6 s model load, after "listening" was printed)."""

from __future__ import annotations

import socket

import pytest

from wanspec.cli.app import app
from wanspec.models.backend import CausalLM


@pytest.fixture(autouse=True)
def no_model_loads(monkeypatch):
    def refuse(self, *args, **kwargs):
        raise AssertionError("a model was loaded before every flag was checked")

    monkeypatch.setattr(CausalLM, "__init__", refuse)


@pytest.fixture
def taken_tcp():
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.fixture
def taken_udp():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def _one_line_error(r, needle: str) -> None:
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert needle in r.stderr, r.stderr
    assert "listening" not in r.output


def test_worker_metrics_port_taken(runner, narrow_stderr, taken_tcp):
    r = runner.invoke(app, ["worker", "--listen", "127.0.0.1:0", "--metrics-port",
                            str(taken_tcp)])
    _one_line_error(r, f"cannot listen on --metrics-port 127.0.0.1:{taken_tcp} (TCP)")


def test_worker_listen_port_taken(runner, narrow_stderr, taken_tcp):
    r = runner.invoke(app, ["worker", "--listen", f"127.0.0.1:{taken_tcp}"])
    _one_line_error(r, f"cannot listen on --listen 127.0.0.1:{taken_tcp} (TCP)")


def test_quic_worker_listen_port_is_checked_over_udp(runner, narrow_stderr, taken_udp, tmp_path):
    r = runner.invoke(app, ["worker", "--transport", "quic", "--listen",
                            f"127.0.0.1:{taken_udp}"])
    _one_line_error(r, f"cannot listen on --listen 127.0.0.1:{taken_udp} (UDP)")


def test_worker_metrics_port_equal_to_listen_port(runner, narrow_stderr):
    r = runner.invoke(app, ["worker", "--listen", "127.0.0.1:7740", "--metrics-port", "7740"])
    _one_line_error(r, "--metrics-port 7740 is the --listen port")


def test_controller_listen_port_taken(runner, narrow_stderr, taken_tcp):
    r = runner.invoke(app, ["controller", "--worker", "127.0.0.1:1", "--listen",
                            f"127.0.0.1:{taken_tcp}"])
    _one_line_error(r, f"cannot listen on --listen 127.0.0.1:{taken_tcp} (TCP)")
