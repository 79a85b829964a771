"""Golden bytes and round trips for memberlist message encoding (notes sections 1-4)."""

from __future__ import annotations

import struct
import zlib

import msgpack
import pytest

from meshnet.errors import PeerError
from meshnet.gossip import codec, lzw
from meshnet.gossip.member import decode_tags, encode_tags, meshnet_meta
from meshnet.gossip.messages import (
    Ack,
    Alive,
    Dead,
    DecodeError,
    ErrResp,
    IndirectPing,
    Nack,
    Ping,
    PushNodeState,
    PushPullHeader,
    Suspect,
    User,
    UserMsgHeader,
    addr_from_wire,
    addr_to_wire,
)

VSN = bytes([1, 5, 2, 2, 5, 5])


def s(text: str) -> bytes:
    """fixstr as go-msgpack writes it."""
    return bytes([0xA0 | len(text)]) + text.encode()


def test_ping_matches_capture_from_serf():
    # 85 a4"Node" a3"py1" a5"SeqNo" 25 aa"SourceAddr" a4 7f000001 aa"SourceNode" a2"s1"
    # aa"SourcePort" cd 1f2a
    want = (b"\x00\x85" + s("Node") + s("py1") + s("SeqNo") + b"\x25" + s("SourceAddr")
            + b"\xa4\x7f\x00\x00\x01" + s("SourceNode") + s("s1") + s("SourcePort")
            + b"\xcd\x1f\x2a")
    p = Ping(0x25, "py1", bytes([127, 0, 0, 1]), 0x1F2A, "s1")
    assert codec.encode(p) == want
    assert codec.decode_packet(want).messages == [p]


def test_ping_omitempty_source_fields():
    assert codec.encode(Ping(1, "")) == b"\x00\x82" + s("Node") + b"\xa0" + s("SeqNo") + b"\x01"


def test_alive_key_order_vsn_raw_and_nil_meta():
    a = Alive(1, "py1", bytes([127, 0, 0, 1]), 7946, b"", VSN)
    want = (b"\x04\x86" + s("Addr") + b"\xa4\x7f\x00\x00\x01" + s("Incarnation") + b"\x01"
            + s("Meta") + b"\xc0" + s("Node") + s("py1") + s("Port") + b"\xcd\x1f\x0a"
            + s("Vsn") + b"\xa6\x01\x05\x02\x02\x05\x05")
    assert codec.encode(a) == want
    assert codec.decode_packet(want).messages == [a]


def test_ack_nil_payload_and_long_payload_raw16():
    assert codec.encode(Ack(7)) == b"\x02\x82" + s("Payload") + b"\xc0" + s("SeqNo") + b"\x07"
    body = codec.encode(Ack(7, b"\x01" + b"x" * 129))
    assert b"\xda\x00\x82" in body  # raw16, never bin8 or str8
    assert b"\xc4" not in body and b"\xd9" not in body


@pytest.mark.parametrize("msg", [
    Ping(1, "a", b"\x0a\x00\x00\x01", 7946, "b"),
    IndirectPing(9, b"\x0a\x00\x00\x02", 7946, "t", True, b"\x0a\x00\x00\x01", 7946, "me"),
    IndirectPing(9, b"\x0a\x00\x00\x02", 0, "t"),
    Ack(3, b"\x01abc"),
    Nack(4),
    Suspect(5, "x", "y"),
    Dead(6, "x", "x"),
    Alive(2 ** 32 - 1, "n\u00e9", bytes(16), 65535, b"\xff\x80", VSN),
    User(b"m\x01hello"),
])
def test_round_trip(msg):
    assert codec.decode_packet(codec.encode(msg)).messages == [msg]


def test_decoder_tolerance_like_go_msgpack():
    # new-spec str8/bin8, Vsn as array, unknown keys, bool as int, missing keys
    body = msgpack.packb({"Node": "n1", "Incarnation": 3, "Addr": b"\x01\x02\x03\x04",
                          "Port": 1, "Meta": b"\xff\x80", "Vsn": [1, 5, 2, 2, 5, 5],
                          "Extra": [1, 2]}, use_bin_type=True)
    a = codec.decode_packet(b"\x04" + body).messages[0]
    assert a == Alive(3, "n1", b"\x01\x02\x03\x04", 1, b"\xff\x80", VSN)
    ind = codec.decode_body(IndirectPing, msgpack.packb({"Nack": 1, "SeqNo": 2}))
    assert ind.nack is True and ind.node == "" and ind.target == b""


@pytest.mark.parametrize("body", [
    {"SeqNo": -1},
    {"SeqNo": 2 ** 32},
    {"SeqNo": "x"},
    {"SeqNo": 1, "Node": 5},
    {"SeqNo": 1, "Node": b"\xff\xfe"},  # not UTF-8
    {"SeqNo": 1, "SourcePort": 70000},
    {"SeqNo": True},
])
def test_bad_field_types_are_peer_errors(body):
    with pytest.raises(PeerError):
        codec.decode_packet(b"\x00" + msgpack.packb(body, use_bin_type=False))


def test_compound_build_split_and_header_bytes():
    a, b = b"\x04" + b"a" * 0x95, b"\x03" + b"b" * 0x3A
    comp = codec.make_compound([a, b])
    assert comp[:6] == bytes.fromhex("07020096003b")
    assert codec.split_compound(comp[1:]) == ([a, b], 0)


def test_compound_truncation_keeps_earlier_parts():
    p1, p2 = codec.encode(Nack(1)), codec.encode(Nack(2))
    comp = codec.make_compound([p1, p2])[:-2]
    out = codec.decode_packet(comp)
    assert out.messages == [Nack(1)] and out.drops == ["truncated"]


def test_compound_bad_part_is_dropped_others_kept():
    comp = codec.make_compound([b"\x63junk", codec.encode(Nack(2)), b"\x00\xc1"])
    out = codec.decode_packet(comp)
    assert out.messages == [Nack(2)]
    assert sorted(out.drops) == ["decode_error", "unknown_type"]


def test_nested_compress_in_compound():
    inner = codec.compress_message(codec.encode(Suspect(1, "a", "b")))
    out = codec.decode_packet(codec.make_compound([inner, codec.encode(Nack(1))]))
    assert out.messages == [Suspect(1, "a", "b"), Nack(1)]


def test_crc_wrapping_and_mismatch():
    pkt = codec.encode(Dead(1, "a", "b"))
    wrapped = codec.add_crc(pkt)
    assert wrapped[0] == 12 and struct.unpack(">I", wrapped[1:5])[0] == zlib.crc32(pkt)
    out = codec.decode_packet(wrapped)
    assert out.had_crc and out.messages == [Dead(1, "a", "b")]
    bad = wrapped[:-1] + bytes([wrapped[-1] ^ 1])
    with pytest.raises(DecodeError) as ei:
        codec.decode_packet(bad)
    assert ei.value.reason == "bad_crc"


def test_label_header_is_stripped():
    pkt = b"\xf4\x03abc" + codec.encode(Nack(5))
    assert codec.decode_packet(pkt).messages == [Nack(5)]


def test_compress_wrapper_format_and_only_if_smaller():
    msg = codec.encode(Alive(1, "node-" * 20, bytes(4), 1, b"m" * 200, VSN))
    wrapped = codec.compress_message(msg)
    assert wrapped[0] == 9
    body = msgpack.unpackb(wrapped[1:], raw=True)
    assert list(body) == [b"Algo", b"Buf"] and body[b"Algo"] == 0
    assert lzw.decompress(body[b"Buf"]) == msg
    assert codec.compress_packet(msg) == wrapped  # repetitive: smaller, so used
    tiny = codec.encode(Nack(1))
    assert codec.compress_packet(tiny) == tiny


def test_unknown_compression_algo():
    bad = b"\x09" + codec.pack({"Algo": 1, "Buf": b"x"})
    with pytest.raises(DecodeError):
        codec.decode_packet(bad)


def test_unknown_type_and_empty():
    with pytest.raises(DecodeError) as ei:
        codec.decode_packet(b"\x63")
    assert ei.value.reason == "unknown_type"
    with pytest.raises(DecodeError):
        codec.decode_packet(b"")
    with pytest.raises(DecodeError) as ei:
        codec.decode_packet(b"\x00" * 70000)
    assert ei.value.reason == "oversized"


def test_push_pull_structs():
    h = PushPullHeader(2, 0, True)
    assert codec.pack(h.body()) == (b"\x83" + s("Join") + b"\xc3" + s("Nodes") + b"\x02"
                                    + s("UserStateLen") + b"\x00")
    n = PushNodeState("a", bytes(4), 1, b"", 3, 2, VSN)
    assert list(msgpack.unpackb(codec.pack(n.body()), raw=True)) == [
        b"Addr", b"Incarnation", b"Meta", b"Name", b"Port", b"State", b"Vsn"]
    assert codec.pack(ErrResp("x").body()) == b"\x81" + s("Error") + s("x")
    assert codec.pack(UserMsgHeader(3).body()) == b"\x81" + s("UserMsgLen") + b"\x03"


def test_addresses():
    assert addr_to_wire("127.0.0.1") == b"\x7f\x00\x00\x01"
    assert addr_from_wire(addr_to_wire("fe80::1")) == "fe80::1"
    assert addr_from_wire(b"\x00" * 10 + b"\xff\xff\x0a\x00\x00\x01") == "10.0.0.1"
    with pytest.raises(PeerError):
        addr_from_wire(b"\x01\x02")


def test_serf_tags():
    assert encode_tags({"kind": "py"}) == b"\xff\x81" + s("kind") + s("py")
    assert encode_tags({}) == b"\xff\x80"
    assert decode_tags(b"\xff\x81" + s("kind") + s("py")) == {"kind": "py"}
    assert decode_tags(b"") == {"role": ""}
    assert decode_tags(b"hello") == {"role": "hello"}
    assert decode_tags(b"\xff\xc1") == {}
    assert decode_tags(meshnet_meta({"a": "b"})) == {"a": "b", "mn": "1"}
    with pytest.raises(ValueError):
        encode_tags({"k": "v" * 600})
