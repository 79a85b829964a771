"""The sans-IO TCP stream parser (notes section 7)."""

from __future__ import annotations

import msgpack
import pytest

from meshnet.errors import PeerError
from meshnet.gossip import codec, lzw
from meshnet.gossip.messages import (
    Ack,
    ErrResp,
    Ping,
    PushNodeState,
    PushPullHeader,
)
from meshnet.gossip.security import Keyring
from meshnet.gossip.stream import (
    Limits,
    PushPull,
    StreamParser,
    StreamUser,
    encode_push_pull,
    encode_user_stream,
    frame_stream,
)

VSN = bytes([1, 5, 2, 2, 5, 5])
NODES = [PushNodeState(f"n{i}", bytes([10, 0, 0, i]), 7946, b"\xff\x80", i, i % 4, VSN)
         for i in range(5)]
SERF_STATE = b"\x02" + msgpack.packb({"LTime": 7, "StatusLTimes": {}, "LeftMembers": [],
                                      "EventLTime": 1, "Events": [None] * 4, "QueryLTime": 1},
                                     use_bin_type=False)


def feed_bytewise(parser: StreamParser, data: bytes):
    for i in range(len(data)):
        r = parser.feed(data[i:i + 1])
        if r is not None:
            assert i == len(data) - 1, "completed before the last byte"
            return r
    return None


def test_push_pull_with_user_state_bytewise():
    data = encode_push_pull(PushPullHeader(5, len(SERF_STATE), True), NODES, SERF_STATE)
    r = feed_bytewise(StreamParser(), data)
    assert r is not None and not r.encrypted and not r.compressed
    assert r.message == PushPull(PushPullHeader(5, len(SERF_STATE), True), tuple(NODES),
                                 SERF_STATE)


def test_serf_style_reply_compressed_with_leading_clear():
    inner = encode_push_pull(PushPullHeader(5, len(SERF_STATE), True), NODES, SERF_STATE)
    wire = b"\x09" + codec.pack({"Algo": 0, "Buf": lzw.compress(inner, leading_clear=True)})
    r = StreamParser().feed(wire)
    assert r is not None and r.compressed
    assert r.message.nodes == tuple(NODES) and r.message.user_state == SERF_STATE


def test_encrypted_compressed_stream_in_chunks():
    ring = Keyring([bytes(32)])
    data = frame_stream(codec.encode(Ping(3, "x")), compress=True, keyring=ring)
    p = StreamParser(ring)
    assert p.feed(data[:3]) is None
    assert p.feed(data[3:10]) is None
    r = p.feed(data[10:])
    assert r.encrypted and r.compressed and r.message == Ping(3, "x")


def test_encrypted_without_key_refused():
    ring = Keyring([bytes(32)])
    data = frame_stream(codec.encode(Ping(3, "x")), compress=False, keyring=ring)
    with pytest.raises(PeerError) as ei:
        StreamParser().feed(data)
    assert ei.value.reason == "encrypted_without_key"


def test_simple_messages_and_label():
    assert StreamParser().feed(codec.encode(Ack(4))).message == Ack(4)
    assert StreamParser().feed(codec.encode(ErrResp("bad"))).message == ErrResp("bad")
    r = StreamParser().feed(b"\xf4\x02ab" + encode_user_stream(b"m-payload"))
    assert r.message == StreamUser(b"m-payload")


def test_trailing_bytes_ignored():
    r = StreamParser().feed(codec.encode(Ack(4)) + b"garbage")
    assert r.message == Ack(4)


def test_truncated_and_limits():
    data = encode_push_pull(PushPullHeader(5, 10, False), NODES, b"0123456789")
    p = StreamParser()
    assert p.feed(data[:-1]) is None
    with pytest.raises(PeerError):
        p.finish()
    with pytest.raises(PeerError) as ei:
        StreamParser(limits=Limits(max_nodes=3)).feed(data)
    assert ei.value.reason == "oversized"
    with pytest.raises(PeerError) as ei:
        StreamParser(limits=Limits(max_stream=100)).feed(data)
    assert ei.value.reason == "oversized"
    with pytest.raises(PeerError):
        StreamParser().feed(b"\x05" + codec.pack({}))  # dead is not a stream message
    with pytest.raises(PeerError):  # nested compress is not allowed on streams
        StreamParser().feed(codec.compress_message(codec.compress_message(codec.encode(Ack(1)))))
