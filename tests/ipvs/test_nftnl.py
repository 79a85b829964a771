"""nf_tables element batches: framing, encoding, answers (no kernel: see
test_nft_kernel for the same bytes accepted by the real one)."""

from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshnet.ipvs import nftnl
from meshnet.ipvs.nftnl import (
    Elem,
    SetChange,
    acks,
    addr_port,
    batch,
    chunked,
    ranges_elems,
)


def messages(buf: bytes) -> list[tuple[int, int, int, bytes]]:
    """(type, flags, seq, payload after the nfgenmsg) of each message."""
    out, off = [], 0
    while off < len(buf):
        length, kind, flags, seq, _ = struct.unpack_from("=IHHII", buf, off)
        out.append((kind, flags, seq, buf[off + 16:off + length]))
        off += (length + 3) & ~3
    return out


def attrs(buf: bytes) -> list[tuple[int, bytes]]:
    out, off = [], 0
    while off + 4 <= len(buf):
        n, kind = struct.unpack_from("=HH", buf, off)
        out.append((kind, buf[off + 4:off + n]))
        off += (n + 3) & ~3
    return out


def test_element_encoding_matches_the_netlink_layout():
    # a range start of an interval map: key (big endian u32) and data (addr . port)
    e = Elem(nftnl.u32(0x8000), addr_port("10.0.0.2", 8080)).encode()
    (kind, body), = attrs(e)
    assert kind == nftnl.NFTA_LIST_ELEM | nftnl.NLA_F_NESTED
    parts = dict(attrs(body))
    assert parts[nftnl.NFTA_SET_ELEM_KEY | nftnl.NLA_F_NESTED] == struct.pack(
        "=HH", 8, nftnl.NFTA_DATA_VALUE) + bytes.fromhex("00008000")
    assert parts[nftnl.NFTA_SET_ELEM_DATA | nftnl.NLA_F_NESTED] == struct.pack(
        "=HH", 12, nftnl.NFTA_DATA_VALUE) + socket.inet_aton("10.0.0.2") + bytes.fromhex(
        "1f900000")
    assert nftnl.NFTA_SET_ELEM_FLAGS not in parts
    end = dict(attrs(attrs(Elem(nftnl.u32(0x10000), None, True).encode())[0][1]))
    assert end[nftnl.NFTA_SET_ELEM_FLAGS] == struct.pack(">I", nftnl.NFT_SET_ELEM_INTERVAL_END)
    assert nftnl.NFTA_SET_ELEM_DATA | nftnl.NLA_F_NESTED not in end


def test_ranges_are_a_start_and_an_end_marker_each():
    (chunk,) = ranges_elems([(0, 32767, "10.0.0.1", 80), (32768, 65535, "10.0.0.2", 80)])
    keys = []
    for _, e in attrs(chunk):
        inner = dict(attrs(e))
        key = inner[nftnl.NFTA_SET_ELEM_KEY | nftnl.NLA_F_NESTED][4:]
        keys.append((int.from_bytes(key, "big"), nftnl.NFTA_SET_ELEM_FLAGS in inner))
    assert keys == [(0, False), (32768, True), (32768, False), (65536, True)]


def test_batch_frames_deletes_before_adds_and_acks_the_last_only():
    a = SetChange("be_A", delete=(b"d1",), add=(b"a1",))
    b = SetChange("be_B", add=(b"a2",))
    data, last = batch("meshnet_lb", [a, b], 100)
    msgs = messages(data)
    kinds = [k for k, *_ in msgs]
    assert kinds == [nftnl.NFNL_MSG_BATCH_BEGIN, nftnl.NFT_MSG_DELSETELEM,
                     nftnl.NFT_MSG_NEWSETELEM, nftnl.NFT_MSG_NEWSETELEM,
                     nftnl.NFNL_MSG_BATCH_END]
    assert [s for _, _, s, _ in msgs] == [100, 101, 102, 103, 104] and last == 103
    # the batch is addressed to the nf_tables subsystem (res_id, network order)
    begin = struct.pack("=BBH", 0, 0, socket.htons(nftnl.NFNL_SUBSYS_NFTABLES))
    assert data[16:20] == begin
    acked = [bool(f & nftnl.NLM_F_ACK) for _, f, _, _ in msgs]
    assert acked == [False, False, False, True, False]
    assert all(f & nftnl.NLM_F_CREATE for k, f, _, _ in msgs if k == nftnl.NFT_MSG_NEWSETELEM)
    body = dict(attrs(msgs[1][3][4:]))
    assert body[nftnl.NFTA_SET_ELEM_LIST_TABLE] == b"meshnet_lb\0"
    assert body[nftnl.NFTA_SET_ELEM_LIST_SET] == b"be_A\0"


def test_batch_chunks_large_element_lists():
    many = [Elem(nftnl.u32(i), addr_port("10.0.0.1", 80)).encode() for i in range(600)]
    msgs = messages(batch("t", [SetChange("s", add=chunked(many))], 1)[0])
    per = [len(attrs(dict(attrs(p[4:]))[nftnl.NFTA_SET_ELEM_LIST_ELEMENTS
                                       | nftnl.NLA_F_NESTED])) for _, _, _, p in msgs[1:-1]]
    assert per == [nftnl.CHUNK, nftnl.CHUNK, 600 - 2 * nftnl.CHUNK]
    with pytest.raises(ValueError):
        batch("t", [SetChange("s")], 1)


def _err(seq: int, errno_: int) -> bytes:
    body = struct.pack("=i", -errno_) + struct.pack("=IHHII", 16, 0, 0, seq, 0)
    return struct.pack("=IHHII", 16 + len(body), nftnl.NLMSG_ERROR, 0, seq, 0) + body


def test_acks_reads_errors_and_acknowledgements():
    assert acks(_err(7, 0) + _err(8, 2)) == [(7, 0), (8, 2)]
    with pytest.raises(ValueError):
        acks(struct.pack("=IHHII", 400, nftnl.NLMSG_ERROR, 0, 1, 0))


@given(st.binary(max_size=200))
def test_acks_never_raises_anything_but_valueerror(buf):
    try:
        acks(buf)
    except ValueError:
        pass


@given(st.integers(0, 2 ** 32 - 1))
def test_v4_is_inet_aton_for_every_address(n):
    ip = socket.inet_ntoa(n.to_bytes(4, "big"))
    assert nftnl.v4(ip) == socket.inet_aton(ip)


@pytest.mark.parametrize("bad", ["", "10.0.0", "10.0.0.256", "10.0.0.01", "10.0.0.1.2",
                                 "::1", "a.b.c.d", "10.0.0.-1"])
def test_v4_refuses_what_is_not_a_dotted_quad(bad):
    with pytest.raises(ValueError):
        nftnl.v4(bad)
