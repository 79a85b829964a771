from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN

from meshnet.trace.frames import (
    VxlanError,
    bpf_filter,
    classify,
    parse_frame,
    parse_vxlan_header,
    vxlan_header,
)


def inner(sport=45000, dport=80, flags="S"):
    return (Ether(src="02:42:0a:00:00:05", dst="02:42:0a:00:00:09") /
            IP(src="10.0.0.5", dst="10.0.0.9") / TCP(sport=sport, dport=dport, flags=flags))


def outer(vni=0x1234, **kw):
    return (Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:03") /
            IP(src="192.0.2.1", dst="192.0.2.3") / UDP(sport=51000, dport=4789) /
            VXLAN(vni=vni, flags=0x08) / inner(**kw))


@pytest.mark.parametrize("vni", [1, 0x1234, 4096, 16_777_215])
def test_vxlan_header_round_trip(vni):
    assert parse_vxlan_header(vxlan_header(vni)) == vni
    assert parse_vxlan_header(bytes(VXLAN(vni=vni, flags=0x08))) == vni


@pytest.mark.parametrize("raw", [b"", b"\x08\0\0\0\0\0", b"\x00\0\0\0\0\0\x01\0"])
def test_bad_vxlan_headers(raw):
    with pytest.raises(VxlanError):
        parse_vxlan_header(raw)


def test_parse_vxlan_frame_outer_and_inner():
    p = parse_frame(bytes(outer()))
    assert p is not None and (p.src, p.dst, p.dport, p.vni) == ("192.0.2.1", "192.0.2.3",
                                                                 4789, 0x1234)
    assert p.inner is not None
    assert (p.inner.src, p.inner.dst, p.inner.sport, p.inner.dport, p.inner.flags) == (
        "10.0.0.5", "10.0.0.9", 45000, 80, "S")
    assert p.inner.dst_mac == "02:42:0a:00:00:09"
    assert p.summary().startswith("vxlan vni 4660 192.0.2.1 > 192.0.2.3 | tcp 10.0.0.5:45000")


def test_flags_order_and_classify():
    syn_ack = parse_frame(bytes(inner(sport=80, dport=45000, flags="SA")))
    rst = parse_frame(bytes(inner(sport=80, dport=45000, flags="RA")))
    assert syn_ack.flags == "SA" and rst.flags == "RA"
    assert classify(syn_ack, 45000, "tcp") == "reply"
    assert classify(parse_frame(bytes(outer())), 45000, "tcp") == "probe"
    assert classify(parse_frame(bytes(outer())), 45001, "tcp") == ""
    assert classify(parse_frame(bytes(outer())), 45000, "udp") == ""


def test_udp_and_non_ip():
    p = parse_frame(bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:03") / IP(src="10.0.0.5", dst="10.0.0.100") /
                          UDP(sport=45000, dport=53) / b"meshnet-trace x"))
    assert (p.proto, p.sport, p.dport, p.vni) == ("udp", 45000, 53, None)
    assert parse_frame(bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:03", type=0x0806) / (b"\0" * 28))) is None
    assert parse_frame(b"\0" * 10) is None


def test_bpf_filter_text():
    assert bpf_filter("tcp", 45000) == "tcp port 45000"
    f = bpf_filter("tcp", 45000, vxlan=True)
    assert "udp dst port 4789" in f and "udp[50:2] = 45000" in f and "udp[52:2] = 45000" in f


def test_bpf_filter_offsets_match_a_real_frame():
    raw = bytes(outer())
    udp_at = 14 + 20
    assert int.from_bytes(raw[udp_at + 50:udp_at + 52], "big") == 45000


@given(st.binary(max_size=200))
def test_garbage_never_raises(raw):
    parse_frame(raw)
    parse_frame(bytes(outer())[:len(raw)])
