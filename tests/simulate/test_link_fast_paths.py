"""The link's shortcuts (plain-link arrivals, arithmetic frame sizes) equal the general code."""

from __future__ import annotations

import random

import msgpack
import pytest

from wanspec.protocol.codec import encode_frame
from wanspec.protocol.messages import Commit, Drafts
from wanspec.simulate.link import _isz, frame_size
from wanspec.transport.latency import FifoLink, LinkParams

EDGES = [0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1,
         -1, -32, -33, -128, -129, -32768, -32769, -2**31, -2**31 - 1, -2**63]


@pytest.mark.parametrize("rtt_ms", [0.0, 0.3, 40.0, 150.0])
def test_plain_link_arrivals_equal_the_general_formula(rtt_ms):
    params = LinkParams(rtt_ms=rtt_ms)
    fast = FifoLink(params, params.up_ms, "up")
    general = FifoLink(params, params.up_ms, "up")
    general._plain = False  # force the full computation
    assert fast._plain
    rng = random.Random(7)
    now = 0.0
    for _ in range(2000):
        now += rng.choice([0.0, 0.0, 1e-9, rng.random() * 0.01])
        size = rng.randint(5, 500)
        assert fast.push(now, size) == general.push(now, size)
    assert (fast.messages, fast.bytes) == (general.messages, general.bytes)


def test_links_with_jitter_loss_or_bandwidth_take_the_general_path():
    for kw in ({"jitter_ms": 1.0}, {"spike_prob": 0.1, "spike_ms": 5.0}, {"bandwidth_bps": 1e6}):
        params = LinkParams(rtt_ms=10, **kw)
        assert not FifoLink(params, params.up_ms, "up")._plain


def test_integer_sizes_are_msgpack_sizes():
    rng = random.Random(1)
    for v in EDGES + [rng.randint(-2**40, 2**40) for _ in range(2000)]:
        assert _isz(v) == len(msgpack.packb(v)), v


def test_drafts_and_commit_sizes_equal_the_encoded_frames():
    rng = random.Random(2)

    def pick() -> int:
        return rng.choice(EDGES + [rng.randint(0, 70000), rng.randint(0, 200)])

    for _ in range(5000):
        n = rng.choice([0, 1, 2, 5, 15, 16, 17, 40])
        commit = Commit(pick(), pick(), pick(), tuple(pick() for _ in range(n)))
        assert frame_size(commit) == len(encode_frame(commit)), commit
        drafts = Drafts(pick(), pick(), pick(), (pick(),), (rng.random(),), (rng.random(),))
        assert frame_size(drafts) == len(encode_frame(drafts)), drafts
    # fields that are not plain ints or floats fall back to the encoder
    for msg in (Commit(1, 0, 3, (True, 2)), Drafts(1, 0, 3, (4,), (1,), (0.5,))):
        assert frame_size(msg) == len(encode_frame(msg))


def test_non_integer_fields_are_sized_by_the_encoder():
    for msg in (Drafts(1.0, 0, 3, (4,), (0.5,), (0.5,)), Drafts(1, 0, 3, (4.5,), (0.5,), (0.5,)),
                Commit(1, 0, 3.0, (2,))):
        assert frame_size(msg) == len(encode_frame(msg))
