"""Frame parsing for the trace (pure): Ethernet, IPv4/IPv6, TCP/UDP, VXLAN.

Only what a hop summary needs: addresses, ports, TCP flags and, for VXLAN on the
underlay, the outer VTEPs, UDP port and VNI with the inner frame parsed the same way.
A frame that is too short or not IP parses to ``None``; it never raises (captured
frames are input from the network).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from meshnet.vxlan.state import VXLAN_PORT

ETH_P_IP, ETH_P_IPV6, ETH_P_8021Q = 0x0800, 0x86DD, 0x8100
IPPROTO_TCP, IPPROTO_UDP = 6, 17
VXLAN_FLAG_VNI = 0x08  #: the I flag: the VNI field is valid (RFC 7348)
TCP_FLAGS = "FSRPAUEC"


class VxlanError(ValueError):
    """Not a valid VXLAN header."""


def parse_vxlan_header(data: bytes) -> int:
    """The VNI of an 8-byte VXLAN header (flags, 24 reserved bits, VNI, 8 reserved)."""
    if len(data) < 8:
        raise VxlanError(f"VXLAN header needs 8 bytes, got {len(data)}")
    if not data[0] & VXLAN_FLAG_VNI:
        raise VxlanError(f"VXLAN flags {data[0]:#04x} lack the I (VNI valid) bit")
    return int.from_bytes(data[4:7], "big")


def vxlan_header(vni: int) -> bytes:
    return bytes([VXLAN_FLAG_VNI, 0, 0, 0]) + vni.to_bytes(3, "big") + b"\0"


@dataclass(frozen=True)
class Packet:
    """One parsed frame. ``inner`` is set for VXLAN (then ``vni`` too)."""

    src_mac: str
    dst_mac: str
    src: str
    dst: str
    proto: str  #: "tcp", "udp" or "ip/N"
    sport: int = 0
    dport: int = 0
    flags: str = ""  #: TCP flags as letters, "S", "SA", "RA"...
    length: int = 0  #: IP total length
    vni: int | None = None
    inner: Packet | None = None

    def summary(self) -> str:
        def one(p: Packet) -> str:
            ports = f":{p.sport} > {p.dst}:{p.dport}" if p.proto in ("tcp", "udp") else \
                f" > {p.dst}"
            flags = f" [{p.flags}]" if p.flags else ""
            return f"{p.proto} {p.src}{ports}{flags} len {p.length}"

        if self.inner is not None:
            return f"vxlan vni {self.vni} {self.src} > {self.dst} | {one(self.inner)}"
        return one(self)


def _mac(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def parse_frame(data: bytes, vxlan_port: int = VXLAN_PORT) -> Packet | None:
    if len(data) < 14:
        return None
    dst_mac, src_mac = _mac(data[0:6]), _mac(data[6:12])
    (etype,) = struct.unpack("!H", data[12:14])
    off = 14
    if etype == ETH_P_8021Q and len(data) >= 18:
        (etype,) = struct.unpack("!H", data[16:18])
        off = 18
    return _parse_ip(data, off, etype, src_mac, dst_mac, vxlan_port)


def _parse_ip(data: bytes, off: int, etype: int, src_mac: str, dst_mac: str,
              vxlan_port: int) -> Packet | None:
    if etype == ETH_P_IP:
        if len(data) < off + 20 or data[off] >> 4 != 4:
            return None
        ihl = (data[off] & 0x0F) * 4
        (length,) = struct.unpack("!H", data[off + 2:off + 4])
        proto = data[off + 9]
        src = str(ipaddress.IPv4Address(data[off + 12:off + 16]))
        dst = str(ipaddress.IPv4Address(data[off + 16:off + 20]))
        l4 = off + ihl
    elif etype == ETH_P_IPV6:
        if len(data) < off + 40 or data[off] >> 4 != 6:
            return None
        (plen,) = struct.unpack("!H", data[off + 4:off + 6])
        length = plen + 40
        proto = data[off + 6]  # extension headers are not followed: summaries only
        src = str(ipaddress.IPv6Address(data[off + 8:off + 24]))
        dst = str(ipaddress.IPv6Address(data[off + 24:off + 40]))
        l4 = off + 40
    else:
        return None
    base = dict(src_mac=src_mac, dst_mac=dst_mac, src=src, dst=dst, length=length)
    if proto == IPPROTO_TCP and len(data) >= l4 + 14:
        sport, dport = struct.unpack("!HH", data[l4:l4 + 4])
        bits = data[l4 + 13]
        flags = "".join(c for i, c in enumerate(TCP_FLAGS) if bits & (1 << i))
        order = "SFRPAUEC"  # conventional order: S before A, R before A
        flags = "".join(sorted(flags, key=order.index))
        return Packet(proto="tcp", sport=sport, dport=dport, flags=flags, **base)
    if proto == IPPROTO_UDP and len(data) >= l4 + 8:
        sport, dport = struct.unpack("!HH", data[l4:l4 + 4])
        if dport == vxlan_port and len(data) >= l4 + 16 + 14:
            try:
                vni = parse_vxlan_header(data[l4 + 8:l4 + 16])
            except VxlanError:
                vni = None
            if vni is not None:
                inner = parse_frame(data[l4 + 16:], vxlan_port=-1)
                return Packet(proto="udp", sport=sport, dport=dport, vni=vni, inner=inner,
                              **base)
        return Packet(proto="udp", sport=sport, dport=dport, **base)
    return Packet(proto=f"ip/{proto}", **base)


def innermost(p: Packet) -> Packet:
    return p.inner if p.inner is not None else p


def classify(p: Packet, marker: int, proto: str) -> str:
    """"probe", "reply" or "" for a packet of a trace whose probe uses source port
    ``marker``: the forward direction carries it as source port, the reply as
    destination port (on the innermost frame)."""
    q = innermost(p)
    if q.proto != proto:
        return ""
    if q.sport == marker:
        return "probe"
    if q.dport == marker:
        return "reply"
    return ""


def bpf_filter(proto: str, marker: int, vxlan: bool = False, inner_v6: bool = False) -> str:
    """A libpcap filter matching only the trace's packets: on an underlay, VXLAN whose
    inner TCP/UDP header (at a fixed offset, inner IP without options) carries the
    marker port; elsewhere, the protocol and the port."""
    if not vxlan:
        return f"{proto} port {marker}"
    l4 = 8 + 8 + 14 + (40 if inner_v6 else 20)  # from the outer UDP header
    return (f"udp dst port {VXLAN_PORT} and (udp[{l4}:2] = {marker} or "
            f"udp[{l4 + 2}:2] = {marker})")
