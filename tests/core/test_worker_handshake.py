"""The worker's handshake on its own (pure): what it answers each step of a controller's
handshake, and why it refuses.  End to end against the controller's link: test_handshake_auth.py."""

from __future__ import annotations

import dataclasses

import pytest

from wanspec.core.actions import Send
from wanspec.core.worker_handshake import KEY_MISMATCH, Refusal, RefusedByPeer, WorkerHandshake
from wanspec.protocol.auth import NONCE_BYTES, proof
from wanspec.protocol.messages import Auth, Error, Ping
from wanspec.simulate.engine import CONTROLLER_HELLO, WORKER_HELLO

KEY = b"0123456789abcdef-the-shared-key"
CONTROLLER_NONCE = b"c" * NONCE_BYTES


def keyed() -> WorkerHandshake:
    return WorkerHandshake(WORKER_HELLO, auth_key=KEY, random_bytes=lambda n: b"w" * n)


def test_without_a_key_the_controllers_hello_completes_it():
    hs = WorkerHandshake(WORKER_HELLO)
    assert hs.on_message(CONTROLLER_HELLO) == [Send(hs.hello)]
    assert hs.authenticated and hs.peer == CONTROLLER_HELLO and hs.hello.nonce == b""


def test_with_a_key_it_answers_with_its_proof_and_completes_on_the_controllers():
    hs = keyed()
    hello = dataclasses.replace(CONTROLLER_HELLO, nonce=CONTROLLER_NONCE)
    ours = proof(KEY, version=hs.hello.version, prover="worker",
                 controller_nonce=CONTROLLER_NONCE, worker_nonce=b"w" * NONCE_BYTES)
    assert hs.on_message(hello) == [Send(hs.hello), Send(Auth(ours))]
    assert not hs.authenticated and hs.missing == "proof of the pre-shared key (Auth)"
    theirs = proof(KEY, version=hs.hello.version, prover="controller",
                   controller_nonce=CONTROLLER_NONCE, worker_nonce=b"w" * NONCE_BYTES)
    assert hs.on_message(Auth(ours)) == Refusal(KEY_MISMATCH, "auth")  # our own proof, replayed
    hs = keyed()
    hs.on_message(hello)
    assert hs.on_message(Auth(theirs)) == [] and hs.authenticated


def test_what_it_refuses_and_why():
    assert WorkerHandshake(WORKER_HELLO).on_message(Ping(0.0, 1)) == \
        Refusal("expected Hello first", "handshake")
    assert WorkerHandshake(WORKER_HELLO).missing == "Hello"
    other_tokenizer = dataclasses.replace(CONTROLLER_HELLO, tokenizer="another")
    refusal = WorkerHandshake(WORKER_HELLO).on_message(other_tokenizer)
    assert isinstance(refusal, Refusal) and refusal.code == "handshake"
    keyed_hello = dataclasses.replace(CONTROLLER_HELLO, nonce=CONTROLLER_NONCE)
    refusal = WorkerHandshake(WORKER_HELLO).on_message(keyed_hello)  # it has a key, we none
    assert isinstance(refusal, Refusal) and refusal.code == "auth"
    refusal = keyed().on_message(CONTROLLER_HELLO)  # we have a key, it none
    assert isinstance(refusal, Refusal) and refusal.code == "auth"
    hs = keyed()
    hs.on_message(keyed_hello)
    assert hs.on_message(Ping(0.0, 1)).code == "auth"  # anything but its proof
    hs = keyed()
    hs.on_message(keyed_hello)
    assert hs.on_message(Error("your proof is wrong")) == RefusedByPeer("your proof is wrong")
    assert not hs.authenticated


def test_a_failed_handshake_stays_failed():
    hs = keyed()
    hello = dataclasses.replace(CONTROLLER_HELLO, nonce=CONTROLLER_NONCE)
    hs.on_message(hello)
    wrong = Auth(b"x" * len(proof(KEY, version=hs.hello.version, prover="controller",
                                    controller_nonce=CONTROLLER_NONCE,
                                    worker_nonce=b"w" * NONCE_BYTES)))
    refusal = hs.on_message(wrong)
    assert refusal == Refusal(KEY_MISMATCH, "auth")
    right = Auth(proof(KEY, version=hs.hello.version, prover="controller",
                       controller_nonce=CONTROLLER_NONCE, worker_nonce=b"w" * NONCE_BYTES))
    assert hs.on_message(right) == refusal and not hs.authenticated  # no second try
    hs = WorkerHandshake(WORKER_HELLO)
    first = hs.on_message(Ping(0.0, 1))
    assert hs.on_message(CONTROLLER_HELLO) == first and not hs.authenticated


def test_a_nonce_source_giving_the_wrong_length_is_a_programming_error():
    with pytest.raises(ValueError, match="bytes, not"):
        WorkerHandshake(WORKER_HELLO, auth_key=KEY, random_bytes=lambda n: b"short")
