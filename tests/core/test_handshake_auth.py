"""Pre-shared-key authentication in the handshake: LinkCore and WorkerCore against each other
(every message through the codec), and each against a hostile peer driven by hand."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from wanspec.core.actions import Log, Send
from wanspec.core.link import LinkCore, LinkState, Lost, Up
from wanspec.core.worker import HELLO_TIMEOUT_S, Close, DraftFor, WorkerCore
from wanspec.protocol.auth import MAC_BYTES, NONCE_BYTES, proof
from wanspec.protocol.codec import PROTOCOL_VERSION, decode_message, encode_message
from wanspec.protocol.messages import Auth, Drafts, Error, Message, Ping, SessionStart
from wanspec.simulate.engine import CONTROLLER_HELLO, WORKER_HELLO

KEY = b"0123456789abcdef-the-shared-key"
OTHER_KEY = b"fedcba9876543210-another-key!!"


def counter_bytes(start: int):
    """A deterministic stand-in for secrets.token_bytes: each call gives new bytes."""
    counter = itertools.count(start)
    return lambda n: next(counter).to_bytes(n, "big")


def sends(actions) -> list[Message]:
    return [a.msg for a in actions if isinstance(a, Send)]


def wire(msg: Message) -> Message:
    """What the peer receives: the message encoded and decoded (with the codec's checks)."""
    return decode_message(encode_message(msg))


def run_handshake(link: LinkCore, worker: WorkerCore):
    """Connect ``link`` and deliver every message between the two until both are quiet; return
    each side's actions."""
    link_actions = link.connect(0.0)
    worker_actions: list = []
    to_worker, to_link = sends(link_actions), []
    while to_worker or to_link:
        if to_worker:
            out = worker.on_message(wire(to_worker.pop(0)), 0.05)
            worker_actions += out
            to_link += sends(out)
        else:
            out = link.on_message(wire(to_link.pop(0)), 0.1)
            link_actions += out
            to_worker += sends(out)
    return link_actions, worker_actions


def new_pair(link_key: bytes | None, worker_key: bytes | None):
    link = LinkCore(CONTROLLER_HELLO, auth_key=link_key, random_bytes=counter_bytes(1))
    worker = WorkerCore(WORKER_HELLO, auth_key=worker_key, random_bytes=counter_bytes(1000))
    return link, worker


def lost_reason(actions) -> str:
    (lost,) = [a for a in actions if isinstance(a, Lost)]
    return lost.reason


def test_the_same_key_authenticates_both_sides_in_one_round_trip():
    link, worker = new_pair(KEY, KEY)
    link_actions, worker_actions = run_handshake(link, worker)
    assert link.up and worker.authenticated and not worker.closed
    assert any(isinstance(a, Up) for a in link_actions)
    # controller: Hello, then (after the worker's proof) its own proof; worker: Hello + proof
    c_hello, c_auth = sends(link_actions)
    w_hello, w_auth = sends(worker_actions)
    assert len(c_hello.nonce) == len(w_hello.nonce) == NONCE_BYTES
    assert w_auth == Auth(proof(KEY, version=PROTOCOL_VERSION, prover="worker",
                                controller_nonce=c_hello.nonce, worker_nonce=w_hello.nonce))
    assert c_auth == Auth(proof(KEY, version=PROTOCOL_VERSION, prover="controller",
                                controller_nonce=c_hello.nonce, worker_nonce=w_hello.nonce))
    assert c_auth.mac != w_auth.mac and KEY not in encode_message(c_auth)
    # and the worker serves sessions now
    assert any(isinstance(a, DraftFor)
               for a in worker.on_message(SessionStart(rid=1, prompt=(1, 2)), 0.2))


def test_without_keys_the_handshake_is_as_before():
    link, worker = new_pair(None, None)
    link_actions, worker_actions = run_handshake(link, worker)
    assert link.up and worker.authenticated
    assert sends(link_actions) == [CONTROLLER_HELLO] and sends(worker_actions) == [WORKER_HELLO]


def test_a_wrong_key_is_refused_with_the_same_clear_reason_at_both_sites():
    link, worker = new_pair(KEY, OTHER_KEY)
    link_actions, worker_actions = run_handshake(link, worker)
    assert not link.up and link.state is LinkState.IDLE and not worker.authenticated
    reason = lost_reason(link_actions)
    assert reason.startswith("authentication failed: the worker's key does not match the "
                             "controller's")
    # the controller tells the worker why; the worker logs it and closes
    assert Error(reason, code="auth") in sends(link_actions)
    assert worker.closed and isinstance(worker_actions[-1], Close)
    logs = [a.message for a in worker_actions if isinstance(a, Log)]
    assert logs == [f"controller refused the connection: {reason}"]
    # the controller never proved anything with its wrong key
    assert not any(isinstance(m, Auth) for m in sends(link_actions))


@pytest.mark.parametrize("link_key, worker_key, who, fix", [
    (None, KEY, "the worker requires a pre-shared key and the controller has none",
     "start the controller with --auth-key-file"),
    (KEY, None, "the controller has a pre-shared key but the worker has none",
     "start the worker with --auth-key-file"),
])
def test_a_key_on_one_side_only_is_refused_naming_the_fix(link_key, worker_key, who, fix):
    link, worker = new_pair(link_key, worker_key)
    link_actions, worker_actions = run_handshake(link, worker)
    assert not link.up and worker.closed and not worker.authenticated
    reason = lost_reason(link_actions)
    assert who in reason and fix in reason and reason.startswith(
        ("authentication failed", "worker refused the connection: authentication failed"))
    worker_words = [a.message for a in worker_actions if isinstance(a, Log)]
    assert len(worker_words) == 1 and who in worker_words[0]


def test_each_connection_gets_fresh_nonces():
    link = LinkCore(CONTROLLER_HELLO, auth_key=KEY)  # real randomness
    (first,) = sends(link.connect(0.0))
    link.on_closed("gone", 0.1)
    (second,) = sends(link.connect(5.0))
    assert len(first.nonce) == NONCE_BYTES and first.nonce != second.nonce
    workers = [WorkerCore(WORKER_HELLO, auth_key=KEY) for _ in range(2)]
    assert workers[0].hello.nonce != workers[1].hello.nonce


# ---- the worker against a hostile controller ----------------------------------------------------


def worker_after_hello(key: bytes = KEY) -> tuple[WorkerCore, bytes]:
    """A worker with ``key`` that accepted a controller's Hello; returns it and that nonce."""
    worker = WorkerCore(WORKER_HELLO, auth_key=key, random_bytes=counter_bytes(7))
    c_nonce = bytes(range(NONCE_BYTES))
    out = worker.on_message(dataclasses.replace(CONTROLLER_HELLO, nonce=c_nonce), 0.0)
    assert [type(m).__name__ for m in sends(out)] == ["Hello", "Auth"]
    return worker, c_nonce


def refused(actions, words: str) -> bool:
    errors = [m for m in sends(actions) if isinstance(m, Error)]
    return (len(errors) == 1 and errors[0].code == "auth" and words in errors[0].message
            and isinstance(actions[-1], Close))


@pytest.mark.parametrize("msg", [SessionStart(rid=1, prompt=(1, 2)), Ping(1.0, 1)],
                         ids=["SessionStart", "Ping"])
def test_nothing_is_served_before_the_controller_proved_its_key(msg):
    worker, _ = worker_after_hello()
    out = worker.on_message(msg, 0.1)
    assert refused(out, f"authentication required: the controller sent {type(msg).__name__}")
    assert not any(isinstance(a, DraftFor) for a in out) and not worker.sessions
    assert worker.closed and worker.on_message(Ping(2.0, 2), 0.2) == []


def test_a_garbled_proof_is_refused():
    worker, c_nonce = worker_after_hello()
    good = proof(KEY, version=PROTOCOL_VERSION, prover="controller", controller_nonce=c_nonce,
                 worker_nonce=worker.hello.nonce)
    garbled = bytes([good[0] ^ 1]) + good[1:]
    out = worker.on_message(Auth(garbled), 0.1)
    assert refused(out, "the controller's key does not match the worker's")
    assert not worker.authenticated


def test_the_worker_s_own_proof_reflected_back_is_refused():
    worker, c_nonce = worker_after_hello()
    reflected = proof(KEY, version=PROTOCOL_VERSION, prover="worker", controller_nonce=c_nonce,
                      worker_nonce=worker.hello.nonce)
    assert refused(worker.on_message(Auth(reflected), 0.1), "does not match")


def test_a_proof_recorded_on_another_connection_is_refused():
    # an eavesdropper records a good handshake, then replays the controller's proof (and its
    # Hello, nonce and all) on a connection of its own: the worker's new nonce defeats it
    link, worker = new_pair(KEY, KEY)
    link_actions, _ = run_handshake(link, worker)
    recorded_hello, recorded_auth = sends(link_actions)
    assert worker.authenticated
    fresh = WorkerCore(WORKER_HELLO, auth_key=KEY)  # real randomness: a new nonce
    assert sends(fresh.on_message(wire(recorded_hello), 0.0))[0].nonce != worker.hello.nonce
    assert refused(fresh.on_message(wire(recorded_auth), 0.1), "does not match")
    assert not fresh.authenticated


def test_auth_before_hello_is_refused():
    worker = WorkerCore(WORKER_HELLO, auth_key=KEY)
    out = worker.on_message(Auth(bytes(MAC_BYTES)), 0.0)
    assert Error("expected Hello first", code="handshake") in sends(out)
    assert worker.closed and worker.peer is None


def test_a_second_auth_after_the_handshake_is_a_protocol_error():
    link, worker = new_pair(KEY, KEY)
    run_handshake(link, worker)
    out = worker.on_message(Auth(bytes(MAC_BYTES)), 1.0)
    assert [m.code for m in sends(out)] == ["protocol"] and worker.closed


def test_a_controller_that_never_proves_its_key_is_dropped_at_the_deadline():
    worker, _ = worker_after_hello()
    assert worker.next_timer() == HELLO_TIMEOUT_S  # the Hello deadline covers the proof too
    assert worker.on_timer(HELLO_TIMEOUT_S - 0.1) == []
    out = worker.on_timer(HELLO_TIMEOUT_S)
    assert out[-1] == Close("no proof of the pre-shared key (Auth) in time") and worker.closed


def test_a_worker_without_a_key_refuses_a_controller_that_offers_one():
    worker = WorkerCore(WORKER_HELLO)
    out = worker.on_message(dataclasses.replace(CONTROLLER_HELLO, nonce=bytes(NONCE_BYTES)), 0.0)
    assert refused(out, "the controller has a pre-shared key but the worker has none")


# ---- the controller against a hostile worker ----------------------------------------------------


def link_after_hello(key: bytes = KEY) -> tuple[LinkCore, bytes, bytes]:
    """A controller with ``key`` that accepted a worker's Hello; returns it and both nonces."""
    link = LinkCore(CONTROLLER_HELLO, auth_key=key, random_bytes=counter_bytes(3))
    (hello,) = sends(link.connect(0.0))
    w_nonce = bytes(reversed(range(NONCE_BYTES)))
    assert link.on_message(dataclasses.replace(WORKER_HELLO, nonce=w_nonce), 0.1) == []
    assert link.state is LinkState.AUTH and not link.up
    return link, hello.nonce, w_nonce


def test_a_worker_that_does_not_prove_its_key_is_refused():
    link, _, _ = link_after_hello()
    out = link.on_message(Drafts(1, 0, 0, (1,)), 0.2)
    assert "the worker sent Drafts instead of proving its key" in lost_reason(out)
    assert [m.code for m in sends(out)] == ["auth"] and not link.up


def test_a_worker_replaying_the_controllers_proof_or_a_garbled_one_is_refused():
    for prover in ("controller", "worker"):
        link, c_nonce, w_nonce = link_after_hello()
        mac = proof(KEY, version=PROTOCOL_VERSION, prover=prover, controller_nonce=c_nonce,
                    worker_nonce=w_nonce)
        if prover == "worker":
            mac = mac[:-1] + bytes([mac[-1] ^ 0x80])
        out = link.on_message(Auth(mac), 0.2)
        assert "key does not match" in lost_reason(out) and not link.up
        assert not any(isinstance(m, Auth) for m in sends(out))  # we prove nothing to it


def test_a_worker_that_never_proves_its_key_fails_the_handshake_in_time():
    link, _, _ = link_after_hello()
    assert link.next_timer() == 10.0
    (lost,) = link.on_timer(10.0)
    assert "handshake in time" in lost.reason


def test_a_controller_without_a_key_refuses_a_worker_that_demands_one():
    link = LinkCore(CONTROLLER_HELLO)
    link.connect(0.0)
    out = link.on_message(dataclasses.replace(WORKER_HELLO, nonce=bytes(NONCE_BYTES)), 0.1)
    assert "the worker requires a pre-shared key" in lost_reason(out) and not link.up
