"""Sans-I/O framing: 4-byte big-endian length + msgpack body ``[type_tag, field...]``.

msgpack carries only plain data (never pickle, never extension types), and the frame length is
checked against a maximum *before* any buffer for the body is allocated, so a wrong-protocol or
hostile peer cannot make us allocate gigabytes.  :class:`FrameDecoder` takes bytes as they arrive
and yields whole messages, the same code under TCP, QUIC and the in-process link; it also says
until when the frame it holds half may stay incomplete (a peer trickling a frame is dropped).

Every field of every decoded message is type-checked here, at the boundary, from the message
dataclasses' annotations (``int`` is an int and not a bool, ``float`` a finite number,
``tuple[int, ...]`` a list of ints, strings and lists of bounded length, ``dict[str, str]`` a small
map of strings), and integers are kept within sane ranges (ids, positions and epochs
non-negative): a state machine never sees a wrongly typed value.
"""

from __future__ import annotations

import dataclasses
import math
import struct
import types
import typing
from typing import Any, Callable, Iterator

import msgpack

from wanspec.errors import WanspecError
from wanspec.protocol.auth import MAC_BYTES, NONCE_BYTES
from wanspec.protocol.messages import (
    Auth,
    Cancel,
    Commit,
    Drafts,
    DraftsBundle,
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
    SessionStats: 9, Auth: 10, DraftsBundle: 11,
}
_TYPES = {tag: cls for cls, tag in _TAGS.items()}
_FIELDS = {cls: tuple(f.name for f in dataclasses.fields(cls)) for cls in _TAGS}  # wire order


def _trailing_defaults(cls: type) -> tuple[Any, ...]:
    """The defaults of the fields at the end of ``cls`` that have a plain default value."""
    out: list[Any] = []
    for f in reversed(dataclasses.fields(cls)):
        if f.default is dataclasses.MISSING:
            break
        out.append(f.default)
    return tuple(reversed(out))


_DEFAULTS = {cls: _trailing_defaults(cls) for cls in _TAGS}


MAX_DEMAND = 1e6  # Pong.demand above this is not a real worker's (sessions per pass slot)
DEFAULT_FRAME_TIMEOUT_S = 20.0  # a frame must arrive whole within this time of its first byte

# bounds on decoded values (a frame is at most max_frame bytes anyway: these bound what each
# field may be, so nothing absurd reaches a state machine)
MAX_ID = 2**63 - 1  # request ids, counters
MAX_POSITION = 2**31 - 1  # positions, epochs, lookaheads, token ids: no context is longer
MAX_U64 = 2**64 - 1  # seeds and ping sequence numbers (any 64-bit value)
MAX_TOKENS = 1 << 20  # items of a token (or per-token statistic) list
MAX_TEXT = 4096  # characters of a string field (names, fingerprints, error messages)
MAX_NAMES = 64  # items of a list of strings (capabilities) and entries of a map (Error.details)
MAX_NAME = 256  # characters of each of those items, and of a map's keys
MAX_BYTES = 1 << 16  # a bytes field

# integer ranges, by field name, or (message, field) where one message differs
_INT_RANGES: dict[str | tuple[str, str], tuple[int, int]] = {
    "rid": (0, MAX_ID), ("Error", "rid"): (-1, MAX_ID),  # -1: a fatal error
    "epoch": (0, MAX_POSITION), "base": (0, MAX_POSITION), "lookahead": (0, MAX_POSITION),
    "max_position": (0, MAX_POSITION), "top_k": (0, MAX_POSITION),
    "vocab_size": (0, MAX_POSITION), "version": (0, MAX_POSITION),
    "seed": (0, MAX_U64), "seq": (0, MAX_U64), "tokens": (0, MAX_POSITION),
    "prompt": (0, MAX_POSITION), "lane": (0, MAX_POSITION), "parent": (0, MAX_POSITION),
    "fork": (0, MAX_POSITION), "branches": (0, MAX_POSITION),
    "lanes": (0, MAX_POSITION), "parents": (0, MAX_POSITION), "forks": (0, MAX_POSITION),
    "bases": (0, MAX_POSITION), "counts": (0, MAX_POSITION),
}
_DEFAULT_INT_RANGE = (0, MAX_ID)
# float ranges beyond "finite", by field name or (message, field)
_FLOAT_RANGES: dict[str | tuple[str, str], tuple[float, float]] = {
    ("Pong", "busy"): (0.0, 1.0), ("Pong", "demand"): (0.0, MAX_DEMAND),
}
# exact sizes of bytes fields, by (message, field)
_BYTES_SIZES: dict[tuple[str, str], tuple[int, ...]] = {
    ("Hello", "nonce"): (0, NONCE_BYTES),  # empty: the sender has no pre-shared key
    ("Auth", "mac"): (MAC_BYTES,),
}


class ProtocolError(WanspecError):
    """The peer sent something that is not valid wanspec protocol."""


def _short(value: Any) -> str:
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"{text} ({type(value).__name__})"


Check = Callable[[Any], Any]  # returns the value to keep (lists become tuples) or raises


def _int_check(where: str, low: int, high: int) -> Check:
    def check(v: Any) -> Any:
        if type(v) is not int or not low <= v <= high:  # (a bool is not an int here)
            raise ProtocolError(f"{where} must be an integer in [{low}, {high}], got {_short(v)}")
        return v
    return check


def _float_check(where: str, low: float, high: float) -> Check:
    def check(v: Any) -> Any:
        if type(v) not in (int, float) or not (math.isfinite(v) and low <= v <= high):
            span = "finite" if (low, high) == (-math.inf, math.inf) else f"in [{low:g}, {high:g}]"
            raise ProtocolError(f"{where} must be a number {span}, got {_short(v)}")
        return float(v)
    return check


def _str_check(where: str, longest: int) -> Check:
    def check(v: Any) -> Any:
        if type(v) is not str or len(v) > longest:
            raise ProtocolError(f"{where} must be a string of at most {longest} characters, "
                                f"got {_short(v)}")
        return v
    return check


def _bytes_check(where: str, sizes: tuple[int, ...] | None) -> Check:
    """Bytes of at most MAX_BYTES, or of exactly one of ``sizes`` when the field has them."""
    want = (f"at most {MAX_BYTES}" if sizes is None
            else " or ".join(str(n) for n in sizes))

    def check(v: Any) -> Any:
        if (type(v) is not bytes or len(v) > MAX_BYTES
                or (sizes is not None and len(v) not in sizes)):
            got = f"{len(v)} bytes" if type(v) is bytes else _short(v)
            raise ProtocolError(f"{where} must be {want} bytes, got {got}")
        return v
    return check


def _bool_check(where: str) -> Check:
    def check(v: Any) -> Any:
        if type(v) is not bool:
            raise ProtocolError(f"{where} must be a boolean, got {_short(v)}")
        return v
    return check


def _list_check(where: str, item: Check, longest: int) -> Check:
    def check(v: Any) -> Any:
        if type(v) is not list or len(v) > longest:  # (msgpack arrays decode as lists)
            raise ProtocolError(f"{where} must be a list of at most {longest} items, "
                                f"got {_short(v)}")
        return tuple(item(x) for x in v)
    return check


def _map_check(where: str) -> Check:
    key, value = _str_check(f"a key of {where}", MAX_NAME), _str_check(f"a value of {where}",
                                                                      MAX_TEXT)

    def check(v: Any) -> Any:
        if type(v) is not dict or len(v) > MAX_NAMES:
            raise ProtocolError(f"{where} must be a map of at most {MAX_NAMES} strings, "
                                f"got {_short(v)}")
        return {key(k): value(x) for k, x in v.items()}
    return check


def _optional(check: Check) -> Check:
    return lambda v: None if v is None else check(v)


def _field_check(cls: type, name: str, hint: Any) -> Check:
    """The check of field ``name`` of message ``cls``, from its annotation."""
    where = f"{cls.__name__}.{name}"
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType) and type(None) in args and len(args) == 2:
        return _optional(_field_check(cls, name, next(a for a in args if a is not type(None))))
    if hint is int:
        low, high = _INT_RANGES.get((cls.__name__, name), _INT_RANGES.get(name, _DEFAULT_INT_RANGE))
        return _int_check(where, low, high)
    if hint is float:
        low_f, high_f = _FLOAT_RANGES.get((cls.__name__, name),
                                          _FLOAT_RANGES.get(name, (-math.inf, math.inf)))
        return _float_check(where, low_f, high_f)
    if hint is str:
        return _str_check(where, MAX_TEXT)
    if hint is bytes:
        return _bytes_check(where, _BYTES_SIZES.get((cls.__name__, name)))
    if hint is bool:
        return _bool_check(where)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        item_hint = args[0]
        if item_hint is str:
            return _list_check(where, _str_check(f"an item of {where}", MAX_NAME), MAX_NAMES)
        if item_hint in (int, float):
            return _list_check(where, _field_check(cls, name, item_hint), MAX_TOKENS)
    if origin is dict and args == (str, str):
        return _map_check(where)
    raise TypeError(f"no wire check for {where}: {hint!r} (add one to wanspec.protocol.codec)")


def _message_checks(cls: type) -> tuple[tuple[str, Check], ...]:
    hints = typing.get_type_hints(cls)
    return tuple((f.name, _field_check(cls, f.name, hints[f.name]))
                 for f in dataclasses.fields(cls))


# per message type, in wire order: (field name, check); built once, at import (an unsupported
# annotation in a new message fails here, not on the first frame)
_CHECKS: dict[type, tuple[tuple[str, Check], ...]] = {cls: _message_checks(cls) for cls in _TAGS}


def _refuse_ext(code: int, data: bytes) -> Any:
    raise ProtocolError(f"msgpack extension type {code} (only plain data is accepted)")


def encode_message(msg: Message) -> bytes:
    """The frame body of ``msg``.  Trailing fields still at their defaults are left out (the
    decoder fills them in), so a field added at the end of a message reaches a peer that does
    not know it only when it is used: how optional features (draft-tree lanes, a session's
    ``branches``) stay compatible with peers of the same version that lack them."""
    cls = type(msg)
    tag = _TAGS.get(cls)
    if tag is None:
        raise TypeError(f"not a protocol message: {msg!r}")
    values = [getattr(msg, name) for name in _FIELDS[cls]]
    defaults = _DEFAULTS[cls]
    while values and len(values) > len(_FIELDS[cls]) - len(defaults):
        default = defaults[len(values) - 1 - (len(_FIELDS[cls]) - len(defaults))]
        if values[-1] != default or type(values[-1]) is not type(default):
            break
        values.pop()
    return msgpack.packb([tag, *values], use_bin_type=True)


def decode_message(body: bytes) -> Message:
    """The message in a frame's ``body``; :class:`ProtocolError` unless every field is of its
    declared type and range (see the module docstring)."""
    try:
        obj = msgpack.unpackb(body, raw=False, strict_map_key=True, ext_hook=_refuse_ext,
                              max_ext_len=0, max_str_len=4 * MAX_TEXT, max_bin_len=MAX_BYTES,
                              max_array_len=MAX_TOKENS, max_map_len=MAX_NAMES)
    except ProtocolError:
        raise
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(f"undecodable frame ({exc.__class__.__name__}: {exc})") from exc
    if type(obj) is not list or not obj or type(obj[0]) is not int:
        raise ProtocolError("frame is not a wanspec message")
    cls = _TYPES.get(obj[0])
    if cls is None:
        raise ProtocolError(f"unknown message type {obj[0]}")
    checks = _CHECKS[cls]
    values: list[Any] = obj[1:]
    if len(values) > len(checks):
        raise ProtocolError(f"{cls.__name__}: too many fields")
    kwargs = {name: check(v) for (name, check), v in zip(checks, values)}
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field missing
        raise ProtocolError(f"{cls.__name__}: {exc}") from exc


def encode_frame(msg: Message, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    body = encode_message(msg)
    if len(body) > max_frame:
        raise ProtocolError(f"message of {len(body)} bytes exceeds the {max_frame}-byte frame limit")
    return _HEADER.pack(len(body)) + body


class FrameDecoder:
    """Accumulates bytes; yields complete messages; refuses oversized frames before buffering.

    With a ``frame_timeout``, a frame must arrive whole within that many seconds of its first
    byte: :attr:`deadline` says until when the frame held half may stay incomplete and
    :meth:`check_deadline` refuses it after that.  So what a peer makes us buffer is bounded in
    size (one frame, ``max_frame``) and in time (a peer trickling a frame byte by byte is dropped).
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME,
                 frame_timeout: float | None = None) -> None:
        self.max_frame = max_frame
        self.frame_timeout = frame_timeout
        self._buf = bytearray()
        self._since: float | None = None  # when the first byte of the frame held half arrived
        self._now: float | None = None  # when the latest bytes arrived
        self.last_frame_bytes = 0  # wire size (header included) of the message yielded last

    def feed(self, data: bytes, now: float | None = None) -> Iterator[Message]:
        """Buffer ``data`` (arrived at ``now``) at once (not lazily on first ``next()``); iterate
        completed messages."""
        self._now = now
        if data and not self._buf:
            self._since = now
        self._buf += data
        return self._messages()

    def _messages(self) -> Iterator[Message]:
        while True:
            if len(self._buf) < _HEADER.size:
                if not self._buf:
                    self._since = None
                return
            (length,) = _HEADER.unpack_from(self._buf)
            if length > self.max_frame:
                self._buf.clear()
                self._since = None
                raise ProtocolError(
                    f"peer announced a {length}-byte frame, over the {self.max_frame}-byte limit "
                    "(is it speaking the wanspec protocol?)"
                )
            if len(self._buf) < _HEADER.size + length:
                return
            body = bytes(self._buf[_HEADER.size : _HEADER.size + length])
            del self._buf[: _HEADER.size + length]
            self._since = self._now if self._buf else None  # the rest came with the last bytes
            self.last_frame_bytes = _HEADER.size + length
            yield decode_message(body)

    @property
    def buffered(self) -> int:
        return len(self._buf)

    @property
    def deadline(self) -> float | None:
        """When the frame held half must be complete (None: no frame held, or no time limit)."""
        if self.frame_timeout is None or self._since is None or not self._buf:
            return None
        return self._since + self.frame_timeout

    def check_deadline(self, now: float) -> None:
        """Raise :class:`ProtocolError` (and drop the bytes) if the frame held half is late."""
        deadline = self.deadline
        if deadline is not None and now >= deadline:
            held = len(self._buf)
            self._buf = bytearray()  # (a new buffer: the memory goes back at once)
            self._since = None
            raise ProtocolError(f"peer sent {held} bytes of a frame and not the rest within "
                                f"{self.frame_timeout:g} s")


def check_hello(mine: Hello, theirs: Hello) -> None:
    """Refuse a peer with another protocol version or tokenizer, with a message a person can act on.

    Both fingerprints must be present: a peer that leaves its own out would otherwise skip the
    one check that its drafts mean the same text as ours.
    """
    if type(theirs.version) is not int:  # (decoded Hellos are checked; others may not be)
        raise ProtocolError(f"the peer's protocol version {_short(theirs.version)} is not an "
                            f"integer; this side speaks v{mine.version}")
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
