"""The codec type-checks every field of every message at the boundary.

Whatever the peer puts in a frame -- a bool or a string where an int belongs, NaN, a huge list,
an extension type, a map with non-string keys -- either decodes to a message whose fields all
have their declared types and ranges, or is a ProtocolError.  Never anything else.
"""

from __future__ import annotations

import dataclasses
import math
import struct
import typing

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wanspec.protocol.codec import (
    MAX_BYTES,
    MAX_NAMES,
    MAX_POSITION,
    MAX_TEXT,
    MAX_TOKENS,
    PROTOCOL_VERSION,
    FrameDecoder,
    ProtocolError,
    check_hello,
    decode_message,
    encode_message,
)
from wanspec.protocol.messages import (
    Auth,
    Cancel,
    Commit,
    Drafts,
    DraftsBundle,
    Error,
    Hello,
    Ping,
    Pong,
    SessionStart,
    SessionStats,
)

TAGS = {Hello: 1, SessionStart: 2, Drafts: 3, Commit: 4, Cancel: 5, Ping: 6, Pong: 7, Error: 8,
        SessionStats: 9, Auth: 10, DraftsBundle: 11}
VALID = {
    Hello: Hello(PROTOCOL_VERSION, "controller", "m", "tok", 100, ("drafts",), b"n" * 32),
    Auth: Auth(b"m" * 32),
    SessionStart: SessionStart(1, (1, 2, 3), 0.5, 4, 0.9, 7, 8, 100),
    Drafts: Drafts(1, 0, 3, (4, 5), (0.5, 0.25), (0.9, 0.8)),
    DraftsBundle: DraftsBundle(1, 0, (0, 1), (0, 0), (0, 3), (3, 3), (1, 2), (4, 6, 7),
                               (0.5, 0.1, 0.2), (0.9, 0.3, 0.6)),
    Commit: Commit(1, 0, 3, (4,)),
    Cancel: Cancel(1, "done"),
    Ping: Ping(1.5, 2),
    Pong: Pong(1.5, 2, 0.5, 1.0),
    Error: Error("boom", 3, "session", {"a": "b"}),
    SessionStats: SessionStats(1, 2, 3, 4, 5),
}


def body(cls: type, values: list) -> bytes:
    return msgpack.packb([TAGS[cls], *values], use_bin_type=True)


def fields(cls: type) -> list:
    msg = VALID[cls]
    return [getattr(msg, f.name) for f in dataclasses.fields(cls)]


def assert_well_typed(msg) -> None:
    """Every field of ``msg`` has its declared type: what a state machine may rely on."""
    hints = typing.get_type_hints(type(msg))
    for f in dataclasses.fields(msg):
        v, hint = getattr(msg, f.name), hints[f.name]
        if hint is int:
            assert type(v) is int, (f.name, v)
        elif hint is float:
            assert type(v) is float and math.isfinite(v), (f.name, v)
        elif hint is str:
            assert type(v) is str and len(v) <= MAX_TEXT
        elif hint is bytes:
            assert type(v) is bytes and len(v) <= MAX_BYTES
        elif typing.get_origin(hint) is tuple:
            item = typing.get_args(hint)[0]
            assert type(v) is tuple
            for x in v:
                assert type(x) is (float if item is float else item), (f.name, x)
        elif typing.get_origin(hint) is dict:
            assert type(v) is dict and len(v) <= MAX_NAMES
            assert all(type(k) is str and type(x) is str for k, x in v.items())
        else:  # pragma: no cover - a new annotation: extend this test
            raise AssertionError(f"unknown annotation {hint}")


def test_every_message_type_has_a_valid_sample_that_round_trips():
    assert set(VALID) == set(TAGS)
    for cls, msg in VALID.items():
        assert decode_message(encode_message(msg)) == msg
        assert decode_message(body(cls, fields(cls))) == msg


# one wrong value per field kind: bools as ints, strings, floats, None, containers, NaN
WRONG_INT = [True, False, "1", 1.0, None, [1], {"a": 1}, b"\x01", -1, 2**64 - 1]
WRONG_FLOAT = [True, "1.5", None, [1.0], math.nan, math.inf, -math.inf, b"\x00"]
WRONG_STR = [1, True, None, b"bytes", ["a"], {"a": "b"}, 1.5]
WRONG_LIST = [1, "abc", None, {"a": 1}, b"\x01\x02", True]


def _cases():
    for cls in TAGS:
        hints = typing.get_type_hints(cls)
        for i, f in enumerate(dataclasses.fields(cls)):
            hint = hints[f.name]
            if hint is int:
                wrong = [w for w in WRONG_INT if not (cls is Error and f.name == "rid" and w == -1)]
                if f.name in ("seed", "seq"):  # any 64-bit value is a valid seed / sequence number
                    wrong = [w for w in wrong if w != 2**64 - 1]
            elif hint is float:
                wrong = WRONG_FLOAT
            elif hint is str:
                wrong = WRONG_STR
            else:
                wrong = WRONG_LIST
            for w in wrong:
                yield pytest.param(cls, i, w, id=f"{cls.__name__}.{f.name}={w!r}")


@pytest.mark.parametrize("cls, index, wrong", list(_cases()))
def test_a_wrongly_typed_field_is_a_protocol_error(cls, index, wrong):
    values = fields(cls)
    values[index] = wrong
    with pytest.raises(ProtocolError, match=cls.__name__):
        decode_message(body(cls, values))


@pytest.mark.parametrize("cls, name, item", [
    (SessionStart, "prompt", 1.5), (SessionStart, "prompt", True), (SessionStart, "prompt", "7"),
    (SessionStart, "prompt", -3), (SessionStart, "prompt", MAX_POSITION + 1),
    (SessionStart, "prompt", None), (SessionStart, "prompt", [1]),
    (Drafts, "tokens", True), (Drafts, "tokens", 2.0), (Commit, "tokens", -1),
    (Drafts, "entropy", math.nan), (Drafts, "top_prob", math.inf), (Drafts, "entropy", "0.5"),
    (Hello, "capabilities", 1), (Hello, "capabilities", None), (Hello, "capabilities", "x" * 300),
])
def test_a_wrongly_typed_list_item_is_a_protocol_error(cls, name, item):
    values = fields(cls)
    index = [f.name for f in dataclasses.fields(cls)].index(name)
    values[index] = [*values[index], item]
    with pytest.raises(ProtocolError, match=f"{cls.__name__}.{name}"):
        decode_message(body(cls, values))


@pytest.mark.parametrize("details", [
    {1: "a"}, {"a": 1}, {"a": None}, {"a": ["b"]}, {b"a": "b"}, {"a": b"b"},
    {str(i): "x" for i in range(MAX_NAMES + 1)}, {"k" * 300: "v"}, {"k": "v" * (MAX_TEXT + 1)},
    ["a", "b"], "a=b",
], ids=repr)
def test_error_details_must_be_a_small_map_of_strings(details):
    with pytest.raises(ProtocolError):
        decode_message(body(Error, ["boom", 1, "session", details]))


def test_error_rid_minus_one_is_fatal_and_allowed_but_nothing_below():
    assert decode_message(body(Error, ["x", -1])).rid == -1
    with pytest.raises(ProtocolError, match="Error.rid"):
        decode_message(body(Error, ["x", -2]))


@pytest.mark.parametrize("cls, index", [(SessionStart, 1), (Drafts, 3), (Commit, 3)])
def test_huge_lists_are_refused(cls, index):
    values = fields(cls)
    values[index] = [1] * (MAX_TOKENS + 1)
    with pytest.raises(ProtocolError):
        decode_message(body(cls, values))


def test_long_strings_are_refused():
    with pytest.raises(ProtocolError, match="Error.message"):
        decode_message(body(Error, ["x" * (MAX_TEXT + 1)]))
    assert decode_message(body(Error, ["x" * MAX_TEXT])).message == "x" * MAX_TEXT
    with pytest.raises(ProtocolError, match="Hello.capabilities"):
        decode_message(body(Hello, [PROTOCOL_VERSION, "worker", "", "", 0,
                                    ["c"] * (MAX_NAMES + 1)]))


def test_extension_types_are_refused_even_in_a_ping():
    for ext in (msgpack.ExtType(5, b"xx"), msgpack.Timestamp(1, 0)):
        raw = msgpack.packb([6, ext, 1])
        with pytest.raises(ProtocolError):
            decode_message(raw)
        with pytest.raises(ProtocolError):  # through the framing too: the connection is dropped
            list(FrameDecoder().feed(struct.pack(">I", len(raw)) + raw))


def test_non_string_map_keys_are_refused():
    with pytest.raises(ProtocolError):
        decode_message(body(Error, ["boom", 1, "c", {1: "a"}]))


def test_ints_where_floats_belong_become_floats():
    msg = decode_message(body(SessionStart, [1, [1, 2], 1, 0, 1]))
    assert type(msg.temperature) is float and type(msg.top_p) is float
    assert type(decode_message(body(Ping, [3, 1])).t) is float


def test_a_string_version_gets_a_clear_message_not_v1_against_v1():
    with pytest.raises(ProtocolError, match="Hello.version must be an integer") as info:
        decode_message(body(Hello, ["2", "controller"]))
    assert "'2' (str)" in str(info.value)
    mine = Hello(PROTOCOL_VERSION, "worker")
    with pytest.raises(ProtocolError, match="not an integer") as info:
        check_hello(mine, Hello("2", "controller"))  # type: ignore[arg-type]
    assert f"v{PROTOCOL_VERSION}" in str(info.value) and "(str)" in str(info.value)


# ---- property: anything decodes to a well-typed message or is a ProtocolError -----------------

_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2**63, max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8), st.binary(max_size=8),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.one_of(st.text(max_size=4), st.integers(-2**63, 2**64 - 1)),
                                            inner, max_size=3)),
    max_leaves=10,
)


@settings(max_examples=400, deadline=None)
@given(tag=st.sampled_from(sorted(TAGS.values())), values=st.lists(_values, max_size=9))
def test_random_bodies_decode_well_typed_or_are_protocol_errors(tag, values):
    try:
        raw = msgpack.packb([tag, *values], use_bin_type=True, strict_types=False)
    except (ValueError, OverflowError, TypeError):  # (a value msgpack cannot pack)
        return
    try:
        msg = decode_message(raw)
    except ProtocolError:
        return
    assert_well_typed(msg)


@settings(max_examples=200, deadline=None)
@given(cls=st.sampled_from(list(TAGS)), data=st.data())
def test_one_field_replaced_by_anything_is_well_typed_or_refused(cls, data):
    values = fields(cls)
    i = data.draw(st.integers(0, len(values) - 1))
    values[i] = data.draw(_values)
    try:
        raw = body(cls, values)
    except (ValueError, OverflowError, TypeError):  # (a value msgpack cannot pack)
        return
    try:
        msg = decode_message(raw)
    except ProtocolError:
        return
    assert_well_typed(msg)
