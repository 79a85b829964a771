"""Hypothesis fuzzing: every decoder raises only PeerError; the core never raises."""

from __future__ import annotations

from random import Random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshnet.errors import PeerError
from meshnet.gossip import codec
from meshnet.gossip.config import GossipConfig
from meshnet.gossip.core import Memberlist
from meshnet.gossip.member import decode_tags
from meshnet.gossip.messages import (
    Ack,
    Alive,
    Dead,
    IndirectPing,
    Nack,
    Ping,
    PushNodeState,
    PushPullHeader,
    Suspect,
    User,
)
from meshnet.gossip.security import Keyring
from meshnet.gossip.stream import StreamParser, encode_push_pull, encode_user_stream, frame_stream

VSN = bytes([1, 5, 2, 2, 5, 5])
RING = Keyring([bytes(range(32))])
FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

u32 = st.integers(0, 2 ** 32 - 1)
port = st.integers(0, 65535)
name = st.text(max_size=8)
addr = st.sampled_from([bytes([10, 0, 0, 1]), bytes([127, 0, 0, 1]), bytes(16)])
messages = st.one_of(
    st.builds(Ping, u32, name, addr, port, name),
    st.builds(IndirectPing, u32, addr, port, name, st.booleans(), addr, port, name),
    st.builds(Ack, u32, st.binary(max_size=40)),
    st.builds(Nack, u32),
    st.builds(Suspect, u32, name, name),
    st.builds(Dead, u32, name, name),
    st.builds(Alive, u32, name, addr, port, st.binary(max_size=30), st.just(VSN)),
    st.builds(User, st.binary(min_size=1, max_size=30)),
)


@st.composite
def packets(draw) -> bytes:
    msgs = draw(st.lists(messages, min_size=1, max_size=5))
    parts = [codec.encode(m) for m in msgs]
    if draw(st.booleans()):
        parts = [codec.compress_message(p) if draw(st.booleans()) else p for p in parts]
    pkt = parts[0] if len(parts) == 1 else codec.make_compound(parts)
    if draw(st.booleans()):
        pkt = codec.compress_message(pkt)
    if draw(st.booleans()):
        pkt = codec.add_crc(pkt)
    return pkt


@st.composite
def mutated(draw, base) -> bytes:
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "trunc", "insert", "delete", "byte"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "trunc":
            del data[i:]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete":
            del data[i]
        else:
            data[i] = draw(st.sampled_from([0, 1, 7, 9, 12, 0x80, 0xC1, 0xDA, 0xDB, 0xFF]))
    return bytes(data)


@st.composite
def streams(draw) -> bytes:
    kind = draw(st.sampled_from(["pp", "ping", "ack", "user"]))
    if kind == "pp":
        nodes = [PushNodeState(draw(name), draw(addr), draw(port), draw(st.binary(max_size=8)),
                               draw(u32), draw(st.integers(0, 3)), VSN)
                 for _ in range(draw(st.integers(0, 3)))]
        tail = draw(st.binary(max_size=20))
        msg = encode_push_pull(PushPullHeader(len(nodes), len(tail), draw(st.booleans())),
                               nodes, tail)
    elif kind == "ping":
        msg = codec.encode(Ping(draw(u32), draw(name)))
    elif kind == "ack":
        msg = codec.encode(Ack(draw(u32)))
    else:
        msg = encode_user_stream(b"m" + draw(st.binary(max_size=20)))
    return frame_stream(msg, compress=draw(st.booleans()),
                        keyring=RING if draw(st.booleans()) else None)


def decode_only_peer_errors(data: bytes, keyring=None) -> None:
    try:
        codec.decode_packet(data, keyring)
    except PeerError:
        pass


@FUZZ
@given(messages)
def test_message_round_trip(msg):
    assert codec.decode_packet(codec.encode(msg)).messages == [msg]


@FUZZ
@given(packets())
def test_valid_packets_decode(pkt):
    assert codec.decode_packet(pkt).messages


@FUZZ
@given(st.binary(max_size=300))
def test_random_datagrams(data):
    decode_only_peer_errors(data)
    decode_only_peer_errors(data, RING)


@FUZZ
@given(mutated(packets()))
def test_mutated_datagrams(data):
    decode_only_peer_errors(data)
    decode_only_peer_errors(RING.encrypt_packet(data), RING)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in points + [len(data)]:
        out.append(data[prev:p])
        prev = p
    return out


def parse_stream(data: bytes, cuts: list[int]):
    p = StreamParser(RING)
    try:
        for chunk in chunked(data, cuts):
            r = p.feed(chunk)
            if r is not None:
                return r
        return p.finish()
    except PeerError:
        return None


@FUZZ
@given(streams(), st.lists(st.integers(0, 10_000), max_size=5))
def test_valid_streams_parse_in_any_chunking(data, cuts):
    assert parse_stream(data, cuts) is not None


@FUZZ
@given(st.one_of(st.binary(max_size=300), mutated(streams())),
       st.lists(st.integers(0, 10_000), max_size=5))
def test_garbage_streams(data, cuts):
    parse_stream(data, cuts)


def make_core(keyring=None) -> Memberlist:
    m = Memberlist(GossipConfig.fast(), "a", "10.0.0.1", 7946, b"", Random(0), keyring)
    m.start(0.0)
    m.handle_datagram(codec.encode(Alive(1, "b", bytes([10, 0, 0, 2]), 7946, b"", VSN)),
                      ("10.0.0.2", 7946), 0.0)
    return m


@FUZZ
@given(st.lists(st.one_of(packets(), mutated(packets()), st.binary(max_size=100)),
                max_size=6))
def test_core_never_raises_on_datagrams(datagrams):
    m = make_core()
    t = 0.0
    for d in datagrams:
        t += 0.01
        m.handle_datagram(d, ("10.0.0.2", 7946), t)
        m.tick(max(t, m.next_deadline()))
    m.drain_outbox()


@FUZZ
@given(st.one_of(streams(), mutated(streams()), st.binary(max_size=200)),
       st.lists(st.integers(0, 10_000), max_size=4), st.booleans())
def test_core_never_raises_on_streams(data, cuts, encrypted):
    m = make_core(RING if encrypted else None)
    s = m.open_stream(("10.0.0.2", 40000), 0.0)
    for chunk in chunked(data, cuts):
        s.feed(chunk, 0.0)
    s.eof(0.0)
    jid = m.join([("10.0.0.2", 7946)], 0.0)
    del jid
    for req in m.drain_streams():
        for chunk in chunked(data, cuts):
            if m.stream_reply(req.id, chunk, 0.1):
                break
        m.stream_reply(req.id, None, 0.2)


@FUZZ
@given(st.binary(max_size=100))
def test_tags_never_raise(meta):
    assert isinstance(decode_tags(meta), dict)
    assert isinstance(decode_tags(b"\xff" + meta), dict)
