"""Wire format of the tables layer: round trips, strictness, sizes, fuzzing."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshnet.errors import PeerError
from meshnet.gossip import tablecodec as codec
from meshnet.gossip.tablecodec import GossipMsg, PushPullMsg, TableDecodeError, WireEntry

LIVE = WireEntry("endpoints", "ep1", "node-a", 7, False, b"\x00value", 0)
TOMB = WireEntry("endpoints", "ep2", "node-b", 9, True, b"", 1500)


def raw(obj: object, version: int = codec.VERSION) -> bytes:
    return bytes((codec.MAGIC, version)) + msgpack.packb(obj, use_bin_type=True)


def entry_list(e: WireEntry) -> list[object]:
    return [e.table, e.key, e.owner, e.ltime, e.deleted, e.value, e.reap_ms]


def test_gossip_round_trip() -> None:
    payload = codec.pack_gossip([codec.encode_entry(LIVE), codec.encode_entry(TOMB)])
    assert payload[:2] == b"m\x01"
    assert codec.decode(payload) == GossipMsg((LIVE, TOMB))


def test_push_pull_round_trip_and_chunking() -> None:
    blobs = [
        codec.encode_entry(WireEntry("t", f"k{i}", "n", i + 1, False, b"x" * 100, 0))
        for i in range(100)
    ]
    chunks = codec.chunk_push_pull(True, blobs, 1000)
    assert len(chunks) > 10
    assert all(len(c) <= 1000 for c in chunks)
    msgs = [codec.decode(c) for c in chunks]
    assert all(isinstance(m, PushPullMsg) for m in msgs)
    assert [m.reply for m in msgs] == [True] + [False] * (len(msgs) - 1)
    assert [e.key for m in msgs for e in m.entries] == [f"k{i}" for i in range(100)]


def test_empty_state_still_asks_for_reply() -> None:
    (only,) = codec.chunk_push_pull(True, [], 4096)
    assert codec.decode(only) == PushPullMsg(True, ())


def test_gossip_size_overhead_is_an_upper_bound() -> None:
    for n in (1, 15, 16, 200):
        blobs = [codec.encode_entry(LIVE)] * n
        assert len(codec.pack_gossip(blobs)) <= codec.GOSSIP_OVERHEAD + sum(map(len, blobs))


BAD = [
    ("short", b"m\x01"),
    ("bad_magic", b"x\x01\x90"),
    ("bad_version", raw([1, []], version=2)),
    ("bad_msgpack", b"m\x01\xc1"),
    ("bad_msgpack", raw([1, []]) + b"\x00"),  # trailing data
    ("bad_msgpack", raw({"a": 1})),  # maps are not allowed at all
    ("bad_type", raw("hello")),
    ("bad_type", raw([])),
    ("unknown_kind", raw([9, []])),
    ("bad_type", raw([True, []])),  # a bool is not a kind
    ("bad_length", raw([1, [], 3])),
    ("bad_length", raw([2, True])),
    ("bad_type", raw([2, 1, []])),  # reply must be a bool
    ("bad_type", raw([1, {}])),
    ("bad_entry", raw([1, [entry_list(LIVE)[:6]]])),
    ("bad_entry", raw([1, [entry_list(LIVE) + [1]]])),
    ("bad_type", raw([1, [["t", "k", "n", 1, 0, b"", 0]]])),  # int as deleted
    ("bad_type", raw([1, [["t", "k", "n", True, False, b"", 0]]])),  # bool as ltime
    ("bad_type", raw([1, [["t", "k", "n", 1, False, "str", 0]]])),  # str as value
    ("bad_type", raw([1, [["t", b"k", "n", 1, False, b"", 0]]])),  # bin as key
    ("bad_value", raw([1, [["t", "k", "n", 0, False, b"", 0]]])),  # ltime 0
    ("bad_value", raw([1, [["t", "k", "n", -1, False, b"", 0]]])),
    ("bad_value", raw([1, [["t", "k", "n", 1, True, b"v", 5]]])),  # tombstone with value
    ("bad_value", raw([1, [["t", "k", "n", 1, False, b"v", 5]]])),  # live with reap time
    ("bad_size", raw([1, [["", "k", "n", 1, False, b"", 0]]])),
    ("bad_size", raw([1, [["t" * 65, "k", "n", 1, False, b"", 0]]])),
    ("bad_size", raw([1, [["t", "k", "n" * 129, 1, False, b"", 0]]])),
    ("bad_msgpack", raw([1, [["t", "k" * 513, "n", 1, False, b"", 0]]])),
    ("bad_msgpack", raw([1, [["t", "k", "n", 1, False, b"v" * (256 * 1024 + 1), 0]]])),
    ("bad_msgpack", b"m\x01" + b"\x91" * 200_000),  # deep nesting
    ("bad_msgpack", b"m\x01\xd4\x01\x00"),  # ext type
    ("bad_msgpack", b"m\x01\x92\x01\xdd\xff\xff\xff\xff"),  # array claims 4G items
]


@pytest.mark.parametrize(("reason", "payload"), BAD)
def test_strict_decoding(reason: str, payload: bytes) -> None:
    with pytest.raises(TableDecodeError) as info:
        codec.decode(payload)
    assert info.value.reason == reason
    assert isinstance(info.value, PeerError)


def test_local_checks_match_wire_limits() -> None:
    codec.check_key("k" * codec.MAX_KEY)
    with pytest.raises(ValueError):
        codec.check_key("k" * (codec.MAX_KEY + 1))
    with pytest.raises(ValueError):
        codec.check_table("é" * 33)  # 66 bytes of UTF-8
    with pytest.raises(TypeError):
        codec.check_value("not bytes")
    with pytest.raises(ValueError):
        codec.check_node("")
    with pytest.raises(ValueError):
        codec.check_key("\udc80")  # lone surrogate: not encodable


entries = st.builds(
    WireEntry,
    table=st.text(min_size=1, max_size=16),
    key=st.text(min_size=1, max_size=64),
    owner=st.text(min_size=1, max_size=32),
    ltime=st.integers(1, codec.MAX_LTIME),
    deleted=st.just(False),
    value=st.binary(max_size=300),
    reap_ms=st.just(0),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(entries, max_size=8))
def test_round_trip_any_valid_entries(es: list[WireEntry]) -> None:
    msg = codec.decode(codec.pack_gossip([codec.encode_entry(e) for e in es]))
    assert msg == GossipMsg(tuple(es))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_raise_only_peer_errors(data: bytes) -> None:
    for payload in (data, b"m\x01" + data):
        try:
            codec.decode(payload)
        except TableDecodeError:
            pass
