"""Pre-shared-key authentication: the HMAC challenge-response of the handshake, and key files.

Each side that has a key puts a fresh random nonce in its :class:`~wanspec.protocol.messages.Hello`
and proves the key with an :class:`~wanspec.protocol.messages.Auth` carrying
``HMAC-SHA256(key, transcript)``, where the transcript names the protocol, its version, the
prover's role and both nonces.  So the key never crosses the wire; a proof is good for one
connection only (the verifier's nonce is fresh); and the worker's proof can never pass for the
controller's (the role is in the transcript), however an attacker reflects or relays them.
The handshake itself (who proves first, what is refused) is the cores' (``core.link``,
``core.worker``); docs/protocol.md and docs/security.md describe both.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path
from typing import Mapping

import msgpack

from wanspec.errors import WanspecError

NONCE_BYTES = 32
MAC_BYTES = 32  # HMAC-SHA256
MIN_KEY_BYTES = 16  # 128 bits if the key is random (what `openssl rand -hex 32` gives is plenty)
MAX_KEY_BYTES = 4096  # a key file bigger than this is not a key file
KEY_ENV = "WANSPEC_AUTH_KEY"  # the key itself, for when a file is awkward (containers' secrets)
_LABEL = "wanspec pre-shared key proof"  # domain separation: this MAC means nothing elsewhere
HOW_TO_CREATE = "create one with: openssl rand -hex 32 > wanspec.key"


def proof(key: bytes, *, version: int, prover: str, controller_nonce: bytes,
          worker_nonce: bytes) -> bytes:
    """What ``prover`` ("controller" or "worker") sends in its Auth on this connection.

    The transcript is a msgpack array, so its parts are length-delimited: no two different
    transcripts encode to the same bytes.
    """
    transcript = msgpack.packb([_LABEL, version, prover, controller_nonce, worker_nonce],
                               use_bin_type=True)
    return hmac.new(key, transcript, hashlib.sha256).digest()


def proof_matches(received: bytes, expected: bytes) -> bool:
    """Constant-time comparison: how many leading bytes matched must not leak through timing."""
    return hmac.compare_digest(received, expected)


def _check_key(key: bytes, source: str) -> bytes:
    key = key.strip()  # a trailing newline (echo, editors) must not make two copies differ
    if not key:
        raise WanspecError(f"{source} is empty ({HOW_TO_CREATE})")
    if len(key) < MIN_KEY_BYTES:
        raise WanspecError(f"{source} holds only {len(key)} bytes; a pre-shared key needs at "
                           f"least {MIN_KEY_BYTES} ({HOW_TO_CREATE})")
    return key


def read_key_file(path: Path) -> bytes:
    """The pre-shared key in ``path``: its bytes, surrounding whitespace removed.

    One-line errors for a missing, unreadable, empty, short or oversized file.
    """
    path = Path(path).expanduser()
    source = f"auth key file {path}"
    if not path.is_file():
        what = "is not a file" if path.exists() else "not found"
        raise WanspecError(f"{source} {what} ({HOW_TO_CREATE})")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_KEY_BYTES + 1)
    except OSError as exc:
        raise WanspecError(f"cannot read {source}: {exc.strerror or exc}") from exc
    if len(data) > MAX_KEY_BYTES:
        raise WanspecError(f"{source} is larger than {MAX_KEY_BYTES} bytes: not a key file")
    return _check_key(data, source)


def load_key(path: Path | None, env: Mapping[str, str] | None = None) -> bytes | None:
    """The key from ``path`` if given, else from the ``WANSPEC_AUTH_KEY`` environment variable,
    else None (no pre-shared key).  Never from a command-line value: that would show in ``ps``."""
    if path is not None:
        return read_key_file(path)
    value = (os.environ if env is None else env).get(KEY_ENV)
    if value is None:
        return None
    data = value.encode()
    if len(data) > MAX_KEY_BYTES:
        raise WanspecError(f"{KEY_ENV} is longer than {MAX_KEY_BYTES} bytes: not a key")
    return _check_key(data, KEY_ENV)
