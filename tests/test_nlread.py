"""The fast rtnetlink dump parser against messages built here byte by byte."""

from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshnet import nlread as nl


def rta(typ: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), typ) + payload
    return raw + b"\0" * (-len(raw) % 4)


def msg(typ: int, body: bytes, seq: int = 1) -> bytes:
    return struct.pack("=IHHII", 16 + len(body), typ, nl.NLM_F_MULTI, seq, 0) + body


def vxlan_link() -> bytes:
    data = rta(nl.IFLA_VXLAN_ID, struct.pack("=I", 4242)) + \
        rta(nl.IFLA_VXLAN_LOCAL, socket.inet_aton("192.0.2.7"))
    info = rta(nl.IFLA_INFO_KIND, b"vxlan\0") + rta(nl.IFLA_INFO_DATA | 0x8000, data)
    body = struct.pack("=BxHiII", 0, 1, 7, 1, 0) + rta(nl.IFLA_IFNAME, b"mn-vx1\0") + \
        rta(nl.IFLA_MTU, struct.pack("=I", 1450)) + rta(nl.IFLA_MASTER, struct.pack("=I", 2)) + \
        rta(nl.IFLA_LINKINFO | 0x8000, info)
    return msg(nl.RTM_NEWLINK, body)


def test_link_with_nested_vxlan_info():
    [(typ, body)] = list(nl.messages(vxlan_link()))
    assert typ == nl.RTM_NEWLINK
    assert nl.parse_link(body) == nl.Link(7, "mn-vx1", "vxlan", 1450, 2, True, 4242,
                                          "192.0.2.7")


def test_neigh_and_addr():
    nd = struct.pack("=BxxxiHBB", socket.AF_INET6, 9, 0x80, 0, 1) + \
        rta(nl.NDA_DST, socket.inet_pton(socket.AF_INET6, "fd00::5")) + \
        rta(nl.NDA_LLADDR, bytes.fromhex("02420a000005"))
    [(_, body)] = list(nl.messages(msg(nl.RTM_NEWNEIGH, nd)))
    assert nl.parse_neigh(body) == nl.Neigh(9, 0x80, "fd00::5", "02:42:0a:00:00:05")
    ad = struct.pack("=BBBBI", socket.AF_INET, 24, 0, 0, 3) + \
        rta(nl.IFA_ADDRESS, socket.inet_aton("10.0.0.1"))
    [(_, body)] = list(nl.messages(msg(nl.RTM_NEWADDR, ad)))
    assert nl.parse_addr(body) == nl.Addr(3, "10.0.0.1", 24)


def test_several_messages_and_done():
    buf = vxlan_link() + vxlan_link() + msg(nl.NLMSG_DONE, struct.pack("=i", 0))
    assert [t for t, _ in nl.messages(buf)] == [nl.RTM_NEWLINK] * 2 + [nl.NLMSG_DONE]


def test_error_message_raises_oserror():
    with pytest.raises(OSError) as err:
        list(nl.messages(msg(nl.NLMSG_ERROR, struct.pack("=i", -1) + b"\0" * 16)))
    assert err.value.errno == 1


@pytest.mark.parametrize("buf", [
    struct.pack("=IHHII", 8, 16, 0, 0, 0),          # length below the header
    struct.pack("=IHHII", 400, 16, 0, 0, 0),        # length past the end
])
def test_bad_lengths(buf):
    with pytest.raises(nl.NetlinkParseError):
        list(nl.messages(buf))


def test_bad_attribute_length():
    body = struct.pack("=BxHiII", 0, 1, 7, 1, 0) + struct.pack("=HH", 200, nl.IFLA_IFNAME)
    with pytest.raises(nl.NetlinkParseError):
        nl.parse_link(memoryview(body))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200), st.sampled_from([nl.parse_link, nl.parse_neigh,
                                                 nl.parse_addr]))
def test_parsers_never_crash(data, parse):
    try:
        parse(memoryview(data))
    except nl.NetlinkParseError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_messages_never_crash(data):
    try:
        list(nl.messages(data))
    except (nl.NetlinkParseError, OSError):
        pass
