"""Sans-I/O framing: 4-byte big-endian length + msgpack body ``[type_tag, field...]``.

msgpack carries only plain data (never pickle), and the frame length is checked against a
maximum *before* any buffer for the body is allocated, so a wrong-protocol or hostile peer cannot
make us allocate gigabytes.  :class:`FrameDecoder` takes bytes as they arrive and yields whole
messages, the same code under TCP, QUIC and the in-process link.
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Any, Callable, Iterator

import msgpack

from wanspec.errors import WanspecError
from wanspec.protocol.auth import MAC_BYTES, NONCE_BYTES
from wanspec.protocol.messages import (
    Auth,
    Cancel,
    Commit,
    Drafts,
    Error,
    Hello,
    Message,
    Ping,
    Pong,
    SessionStart,
    SessionStats,
)

PROTOCOL_VERSION = 3  # 2: Pong carries the worker's load (busy, demand); 3: pre-shared-key
# authentication (Hello.nonce, Auth), and a Hello must carry its tokenizer fingerprint
DEFAULT_MAX_FRAME = 1 << 20  # 1 MiB: a prompt of ~100k tokens fits; nothing legitimate is bigger
_HEADER = struct.Struct(">I")
HEADER_BYTES = _HEADER.size

_TAGS: dict[type, int] = {
    Hello: 1, SessionStart: 2, Drafts: 3, Commit: 4, Cancel: 5, Ping: 6, Pong: 7, Error: 8,
    SessionStats: 9, Auth: 10,
}
_TYPES = {tag: cls for cls, tag in _TAGS.items()}
_FIELDS = {cls: tuple(f.name for f in dataclasses.fields(cls)) for cls in _TAGS}  # wire order
_TUPLE_FIELDS = {
    Hello: ("capabilities",),
    SessionStart: ("prompt",),
    Drafts: ("tokens", "entropy", "top_prob"),
    Commit: ("tokens",),
}


MAX_DEMAND = 1e6  # Pong.demand above this is not a real worker's (sessions per pass slot)


class ProtocolError(WanspecError):
    """The peer sent something that is not valid wanspec protocol."""


def _number_in(msg: Message, name: str, low: float, high: float) -> None:
    """Field ``name`` must be an int or float in ``[low, high]`` (NaN and infinities are not);
    it is stored as a float."""
    value = getattr(msg, name)
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not low <= value <= high):
        raise ProtocolError(f"{type(msg).__name__}.{name} must be a number in "
                            f"[{low:g}, {high:g}], got {value!r}")
    setattr(msg, name, float(value))


def _check_pong(msg: Pong) -> None:
    _number_in(msg, "busy", 0.0, 1.0)
    _number_in(msg, "demand", 0.0, MAX_DEMAND)


def _bytes_of(msg: Message, name: str, sizes: tuple[int, ...]) -> None:
    """Field ``name`` must be msgpack bin (bytes) of one of the lengths ``sizes``."""
    value = getattr(msg, name)
    if not isinstance(value, bytes) or len(value) not in sizes:
        got = f"{len(value)} bytes" if isinstance(value, bytes) else type(value).__name__
        want = " or ".join(str(n) for n in sizes)
        raise ProtocolError(f"{type(msg).__name__}.{name} must be {want} bytes, got {got}")


def _check_hello(msg: Hello) -> None:
    _bytes_of(msg, "nonce", (0, NONCE_BYTES))  # empty: the sender has no pre-shared key


def _check_auth(msg: Auth) -> None:
    _bytes_of(msg, "mac", (MAC_BYTES,))


# checks of field values beyond what the dataclass constructor enforces, per message type
_CHECKS: dict[type, Callable[[Any], None]] = {
    Pong: _check_pong, Hello: _check_hello, Auth: _check_auth,
}


def encode_message(msg: Message) -> bytes:
    tag = _TAGS.get(type(msg))
    if tag is None:
        raise TypeError(f"not a protocol message: {msg!r}")
    return msgpack.packb([tag, *(getattr(msg, name) for name in _FIELDS[type(msg)])],
                         use_bin_type=True)


def decode_message(body: bytes) -> Message:
    try:
        obj = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(f"undecodable frame ({exc.__class__.__name__})") from exc
    if not isinstance(obj, list) or not obj or not isinstance(obj[0], int):
        raise ProtocolError("frame is not a wanspec message")
    cls = _TYPES.get(obj[0])
    if cls is None:
        raise ProtocolError(f"unknown message type {obj[0]}")
    fields = dataclasses.fields(cls)
    values: list[Any] = obj[1:]
    if len(values) > len(fields):
        raise ProtocolError(f"{cls.__name__}: too many fields")
    kwargs = {f.name: v for f, v in zip(fields, values)}
    for name in _TUPLE_FIELDS.get(cls, ()):
        if name in kwargs:
            if not isinstance(kwargs[name], (list, tuple)):
                raise ProtocolError(f"{cls.__name__}.{name} must be a list")
            kwargs[name] = tuple(kwargs[name])
    try:
        msg = cls(**kwargs)
    except TypeError as exc:
        raise ProtocolError(f"{cls.__name__}: {exc}") from exc
    check = _CHECKS.get(cls)
    if check is not None:
        check(msg)
    return msg


def encode_frame(msg: Message, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    body = encode_message(msg)
    if len(body) > max_frame:
        raise ProtocolError(f"message of {len(body)} bytes exceeds the {max_frame}-byte frame limit")
    return _HEADER.pack(len(body)) + body


class FrameDecoder:
    """Accumulates bytes; yields complete messages; refuses oversized frames before buffering."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()

    def feed(self, data: bytes) -> Iterator[Message]:
        """Buffer ``data`` at once (not lazily on first ``next()``); iterate completed messages."""
        self._buf += data
        return self._messages()

    def _messages(self) -> Iterator[Message]:
        while True:
            if len(self._buf) < _HEADER.size:
                return
            (length,) = _HEADER.unpack_from(self._buf)
            if length > self.max_frame:
                self._buf.clear()
                raise ProtocolError(
                    f"peer announced a {length}-byte frame, over the {self.max_frame}-byte limit "
                    "(is it speaking the wanspec protocol?)"
                )
            if len(self._buf) < _HEADER.size + length:
                return
            body = bytes(self._buf[_HEADER.size : _HEADER.size + length])
            del self._buf[: _HEADER.size + length]
            yield decode_message(body)

    @property
    def buffered(self) -> int:
        return len(self._buf)


def check_hello(mine: Hello, theirs: Hello) -> None:
    """Refuse a peer with another protocol version or tokenizer, with a message a person can act on.

    Both fingerprints must be present: a peer that leaves its own out would otherwise skip the
    one check that its drafts mean the same text as ours.
    """
    if theirs.version != mine.version:
        raise ProtocolError(
            f"protocol version mismatch: peer speaks v{theirs.version}, this side v{mine.version}"
        )
    if not isinstance(theirs.tokenizer, str) or not theirs.tokenizer:
        raise ProtocolError(f"the {theirs.role} sent no tokenizer fingerprint: cannot check "
                            "that its tokens mean the same text as this side's")
    if not mine.tokenizer:
        raise ProtocolError(f"this {mine.role} has no tokenizer fingerprint to check the "
                            f"{theirs.role}'s against")
    if mine.tokenizer != theirs.tokenizer:
        raise ProtocolError(
            f"tokenizer mismatch: the {theirs.role}'s model {theirs.model!r} has tokenizer "
            f"{theirs.tokenizer}, this {mine.role} has {mine.tokenizer}"
        )
