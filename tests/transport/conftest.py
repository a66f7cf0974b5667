"""Shared fixtures for the socket transports: certificates and a bounded async runner."""

from __future__ import annotations

import asyncio
import socket
from typing import Any, Awaitable, Callable

import pytest

from wanspec.protocol.messages import Cancel, Commit, Drafts, Error, Hello, Ping, Pong, SessionStart
from wanspec.transport.base import Connection, ConnectionClosed
from wanspec.transport.certs import CertPaths, create_certs

ALL_MESSAGES = [
    Hello(version=1, role="controller", model="m", tokenizer="t", vocab_size=5,
          capabilities=("x",)),
    SessionStart(rid=1, prompt=(1, 2, 3), temperature=0.5, lookahead=4),
    Drafts(rid=1, epoch=2, base=3, tokens=(4, 5), entropy=(0.5, 0.25), top_prob=(0.9, 0.8)),
    Commit(rid=1, epoch=2, base=3, tokens=(4,)),
    Cancel(rid=1),
    Ping(t=1.5, seq=3),
    Pong(t=1.5, seq=3),
    Error(message="boom", details={"a": "b"}),
]


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertPaths:
    return create_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="session")
def other_certs(tmp_path_factory: pytest.TempPathFactory) -> CertPaths:
    """A second, unrelated CA: the worker's certificate must not verify against it."""
    return create_certs(tmp_path_factory.mktemp("other-certs"))


@pytest.fixture
def arun() -> Callable[..., Any]:
    """``arun(coro, timeout=10)``: run on a fresh loop, never longer than ``timeout`` seconds."""

    def run(coro: Awaitable[Any], timeout: float = 10.0) -> Any:
        return asyncio.run(asyncio.wait_for(coro, timeout))

    return run


async def _echo(conn: Connection) -> None:
    while True:
        try:
            msg = await conn.recv()
        except ConnectionClosed:
            return
        await conn.send(msg)


@pytest.fixture
def echo() -> Callable[[Connection], Awaitable[None]]:
    """Server handler: send every message back until the peer closes."""
    return _echo


@pytest.fixture
def all_messages() -> list[Any]:
    """One instance of every protocol message type."""
    return list(ALL_MESSAGES)


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def closed_tcp_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (bound, then released)."""
    return _free_port(socket.SOCK_STREAM)


@pytest.fixture
def closed_udp_port() -> int:
    """A UDP port on 127.0.0.1 that nothing listens on."""
    return _free_port(socket.SOCK_DGRAM)
