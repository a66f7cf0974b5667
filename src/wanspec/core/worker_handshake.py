"""The worker's side of a connection's handshake: nothing is served before it completes.

The controller's :class:`Hello` is checked against ours (protocol version and tokenizer).  A
worker with a pre-shared key then requires the controller to prove it: the worker answers with
its Hello (a fresh nonce) and its own :class:`Auth` -- one round trip in all -- and serves
nothing until the controller's Auth has checked out (see :mod:`wanspec.protocol.auth`).

Pure: it takes the controller's messages and says what to send, or why to refuse.  The
connection's core (:class:`~wanspec.core.worker.WorkerCore`) owns the deadline and the closing.
"""

from __future__ import annotations

import dataclasses
import secrets
from dataclasses import dataclass
from typing import Callable

from wanspec.core.actions import Send
from wanspec.protocol.auth import NONCE_BYTES, proof, proof_matches
from wanspec.protocol.codec import ProtocolError, check_hello
from wanspec.protocol.messages import Auth, Error, Hello, Message

KEY_MISMATCH = ("authentication failed: the controller's key does not match the worker's "
                "(--auth-key-file must hold the same key at both sites)")


@dataclass(frozen=True, slots=True)
class Refusal:
    """Refuse the controller: answer ``Error(message, code=code)`` and close."""

    message: str
    code: str


@dataclass(frozen=True, slots=True)
class RefusedByPeer:
    """The controller refused us (our proof did not check out there): close, sending nothing."""

    message: str


class WorkerHandshake:
    """One connection's handshake, from the controller's Hello to its proof of the key."""

    def __init__(self, hello: Hello, *, auth_key: bytes | None = None,
                 random_bytes: Callable[[int], bytes] = secrets.token_bytes) -> None:
        """``auth_key``: the pre-shared key the controller must prove (None: no such check);
        ``random_bytes``: the source of this connection's nonce (injectable for tests)."""
        self.auth_key = auth_key
        # ours: what the controller's Hello is checked against; with a key, our fresh challenge
        nonce = random_bytes(NONCE_BYTES) if auth_key is not None else b""
        if auth_key is not None and len(nonce) != NONCE_BYTES:
            raise ValueError(f"random_bytes gave {len(nonce)} bytes, not {NONCE_BYTES}")
        self.hello = dataclasses.replace(hello, nonce=nonce)
        self.peer: Hello | None = None  # the controller's Hello, once accepted
        self.authenticated = False  # the controller proved the key (or none is required)
        self.refused: Refusal | RefusedByPeer | None = None  # how it ended, if it failed

    @property
    def missing(self) -> str:
        """What the controller has yet to send, in words (for a timeout's message)."""
        return "Hello" if self.peer is None else "proof of the pre-shared key (Auth)"

    def on_message(self, msg: Message) -> list[Send] | Refusal | RefusedByPeer:
        """A message before the handshake completed.  A failed handshake stays failed: whatever
        comes after a refusal gets the same answer, never a second chance at the key."""
        assert not self.authenticated
        if self.refused is not None:
            return self.refused
        step = self._on_hello(msg) if self.peer is None else self._on_auth(msg)
        if isinstance(step, (Refusal, RefusedByPeer)):
            self.refused = step
        return step

    def _on_hello(self, msg: Message) -> list[Send] | Refusal:
        if not isinstance(msg, Hello):
            return Refusal("expected Hello first", "handshake")
        try:
            check_hello(self.hello, msg)
        except ProtocolError as exc:
            return Refusal(str(exc), "handshake")
        if self.auth_key is None:
            if msg.nonce:
                return Refusal(
                    "authentication failed: the controller has a pre-shared key but the worker "
                    "has none (start the worker with --auth-key-file, the controller's key)",
                    "auth")
            self.peer, self.authenticated = msg, True
            return [Send(self.hello)]
        if not msg.nonce:
            return Refusal(
                "authentication failed: the worker requires a pre-shared key and the controller "
                "has none (start the controller with --auth-key-file, the worker's key)", "auth")
        # our proof goes with our Hello (one round trip in all); the role in the transcript
        # keeps it from ever passing for the controller's proof
        self.peer = msg
        mine = proof(self.auth_key, version=self.hello.version, prover="worker",
                     controller_nonce=msg.nonce, worker_nonce=self.hello.nonce)
        return [Send(self.hello), Send(Auth(mine))]

    def _on_auth(self, msg: Message) -> list[Send] | Refusal | RefusedByPeer:
        """The controller's proof of the key."""
        assert self.peer is not None and self.auth_key is not None
        if isinstance(msg, Error):
            return RefusedByPeer(msg.message)
        if not isinstance(msg, Auth):
            return Refusal(f"authentication required: the controller sent "
                           f"{type(msg).__name__} before proving its key", "auth")
        expected = proof(self.auth_key, version=self.hello.version, prover="controller",
                         controller_nonce=self.peer.nonce, worker_nonce=self.hello.nonce)
        if not proof_matches(msg.mac, expected):
            return Refusal(KEY_MISMATCH, "auth")
        self.authenticated = True
        return []
