"""The authentication fields on the wire (Hello.nonce, Auth), the proof, and key loading."""

from __future__ import annotations

import msgpack
import pytest

from wanspec.errors import WanspecError
from wanspec.protocol.auth import (
    KEY_ENV,
    MAC_BYTES,
    MAX_KEY_BYTES,
    NONCE_BYTES,
    load_key,
    proof,
    read_key_file,
)
from wanspec.protocol.codec import PROTOCOL_VERSION, ProtocolError, decode_message, encode_message
from wanspec.protocol.messages import Auth, Hello

KEY = b"k" * 32
NC, NW = bytes(range(NONCE_BYTES)), bytes(range(100, 100 + NONCE_BYTES))


@pytest.mark.parametrize("msg", [
    Hello(PROTOCOL_VERSION, "controller", "m", "tok", 7, ("drafts",), nonce=NC),
    Hello(PROTOCOL_VERSION, "worker", "m", "tok", 7),
    Auth(bytes(range(MAC_BYTES))),
], ids=["hello-with-nonce", "hello-without", "auth"])
def test_authentication_fields_round_trip(msg):
    assert decode_message(encode_message(msg)) == msg


def test_a_v2_hello_without_a_nonce_still_decodes_so_the_version_check_can_explain():
    msg = decode_message(msgpack.packb([1, 2, "worker", "m", "tok", 7, ["drafts"]]))
    assert msg == Hello(2, "worker", "m", "tok", 7, ("drafts",)) and msg.nonce == b""


@pytest.mark.parametrize("nonce", [
    b"\x01" * (NONCE_BYTES - 1), b"\x01" * (NONCE_BYTES + 1), b"\x01" * 10_000,
    "a" * NONCE_BYTES, NONCE_BYTES, None, [1] * NONCE_BYTES,
])
def test_a_hello_nonce_of_another_size_or_type_is_a_protocol_error(nonce):
    body = msgpack.packb([1, PROTOCOL_VERSION, "worker", "m", "tok", 7, [], nonce],
                         use_bin_type=True)
    with pytest.raises(ProtocolError, match="Hello.nonce must be 0 or 32 bytes"):
        decode_message(body)


@pytest.mark.parametrize("mac", [b"", b"\x00" * (MAC_BYTES - 1), b"\x00" * (MAC_BYTES + 1),
                                 "x" * MAC_BYTES, 0, None])
def test_an_auth_mac_of_another_size_or_type_is_a_protocol_error(mac):
    with pytest.raises(ProtocolError, match="Auth.mac must be 32 bytes"):
        decode_message(msgpack.packb([10, mac], use_bin_type=True))
    with pytest.raises(ProtocolError):
        decode_message(msgpack.packb([10], use_bin_type=True))  # no mac at all


def test_the_proof_depends_on_every_part_of_the_transcript():
    base = dict(version=PROTOCOL_VERSION, prover="worker", controller_nonce=NC, worker_nonce=NW)
    mac = proof(KEY, **base)
    assert len(mac) == MAC_BYTES and mac == proof(KEY, **base)  # deterministic
    variants = [
        proof(b"K" * 32, **base),
        proof(KEY, **{**base, "prover": "controller"}),
        proof(KEY, **{**base, "version": PROTOCOL_VERSION + 1}),
        proof(KEY, **{**base, "controller_nonce": NW, "worker_nonce": NC}),  # swapped
        proof(KEY, **{**base, "controller_nonce": NC[:-1] + b"\xff"}),
    ]
    assert mac not in variants and len(set(variants)) == len(variants)


# ---- key files and the environment --------------------------------------------------------------


def test_a_key_file_is_read_without_surrounding_whitespace(tmp_path):
    f = tmp_path / "k"
    f.write_bytes(b"  " + KEY + b"\n")
    assert read_key_file(f) == KEY
    assert load_key(f, env={KEY_ENV: "ignored: the file wins"}) == KEY


@pytest.mark.parametrize("content, words", [
    (b"", "is empty"),
    (b" \n\t\n", "is empty"),
    (b"short-key\n", "holds only 9 bytes; a pre-shared key needs at least 16"),
    (b"x" * (MAX_KEY_BYTES + 1), "larger than 4096 bytes"),
])
def test_bad_key_files_are_one_line_errors(tmp_path, content, words):
    f = tmp_path / "k"
    f.write_bytes(content)
    with pytest.raises(WanspecError, match=words) as info:
        read_key_file(f)
    assert "\n" not in str(info.value)


def test_a_missing_key_file_or_a_directory_is_a_clear_error(tmp_path):
    with pytest.raises(WanspecError, match=r"auth key file .*nope not found \(create one"):
        read_key_file(tmp_path / "nope")
    with pytest.raises(WanspecError, match="is not a file"):
        read_key_file(tmp_path)


def test_the_key_may_come_from_the_environment_and_is_checked_the_same_way():
    assert load_key(None, env={}) is None
    assert load_key(None, env={KEY_ENV: KEY.decode() + "\n"}) == KEY
    with pytest.raises(WanspecError, match=f"{KEY_ENV} holds only 3 bytes"):
        load_key(None, env={KEY_ENV: "abc"})
    with pytest.raises(WanspecError, match=f"{KEY_ENV} is empty"):
        load_key(None, env={KEY_ENV: ""})
