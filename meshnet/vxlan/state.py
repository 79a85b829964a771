"""Desired and observed overlay state as plain data, and ``desired()`` (pure)."""

from __future__ import annotations

import ipaddress
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from meshnet.model import Endpoint, IPAddress, Network

VXLAN_PORT = 4789
VXLAN_OVERHEAD_V4 = 50  # inner Ethernet 14 + outer IPv4 20 + UDP 8 + VXLAN 8
VXLAN_OVERHEAD_V6 = 70
BRIDGE = "br0"


def sandbox_ns(prefix: str, vni: int) -> str:
    return f"{prefix}ov-{vni:06x}"


def vxlan_name(vni: int) -> str:
    return f"mn-vx{vni:06x}"


def port_name(endpoint_key: str) -> str:
    return f"ve{zlib.crc32(endpoint_key.encode()):08x}"


def docker_peer_name(endpoint_key: str) -> str:
    """The container side of a Docker plugin endpoint's veth while it is in the host
    namespace (Docker moves it into the container and renames it ethN)."""
    return f"mn-dk{zlib.crc32(endpoint_key.encode()):08x}"


ENDPOINT_MAC_PREFIXES = ("02:42:", "02:43:")  #: what mac_for gives (never bridge_mac)


def mac_for(ip: IPAddress) -> str:
    """Deterministic MAC: 02:42 + the IPv4 address (as Docker), or a hash for IPv6."""
    if ip.version == 4:
        raw = b"\x02\x42" + ip.packed
    else:
        raw = b"\x02\x43" + zlib.crc32(ip.packed).to_bytes(4, "big")
    return ":".join(f"{b:02x}" for b in raw)


def overlay_mtu(network: Network, underlay_mtu: int, underlay_v6: bool = False) -> int:
    if network.mtu:
        return network.mtu
    return underlay_mtu - (VXLAN_OVERHEAD_V6 if underlay_v6 else VXLAN_OVERHEAD_V4)


def bridge_mac(local_vtep: str, vni: int) -> str:
    """The sandbox bridge's MAC, fixed (a Linux bridge otherwise takes the lowest MAC of its
    ports and changes it as ports come and go, and containers that cached the old one for
    the gateway, a VIP or the DNS address lose it until their ARP entry expires); unique
    per host and network, because the bridge's frames reach other hosts (the load
    balancer forwards to remote tasks) and a bridge drops frames from its own MAC."""
    raw = b"\x02\x4d" + zlib.crc32(f"{local_vtep}/{vni}".encode()).to_bytes(4, "big")
    return ":".join(f"{b:02x}" for b in raw)


@dataclass(frozen=True)
class Sandbox:
    ns: str
    vni: int
    mtu: int
    bridge_addr: str  #: "10.0.0.1/24"
    local: str  #: this host's VTEP address
    mac: str = ""  #: the bridge's MAC (bridge_mac)


@dataclass(frozen=True)
class Port:
    ns: str  #: the sandbox
    name: str  #: host side, on the sandbox bridge
    netns: str  #: the container's namespace (name or path); "": Docker's (peer left
    #: in the host namespace, named ``ifname``, for Docker to move; no address set)
    ifname: str  #: inside the container
    addr: str  #: "10.0.0.5/24"
    mac: str
    mtu: int


@dataclass
class Overlay:
    """Everything the vxlan reconciler owns on one host."""

    sandboxes: dict[str, Sandbox] = field(default_factory=dict)
    ports: dict[tuple[str, str], Port] = field(default_factory=dict)
    fdb: dict[tuple[str, str], str] = field(default_factory=dict)  #: (ns, mac) -> vtep
    neigh: dict[tuple[str, str], str] = field(default_factory=dict)  #: (ns, ip) -> mac


def desired(node: str, networks: Mapping[str, Network], endpoints: Iterable[Endpoint],
            vteps: Mapping[str, str], underlay_mtu: int, prefix: str,
            everywhere: Iterable[str] = ()) -> Overlay:
    """The overlay this host should have, from the full tables. ``everywhere``: networks
    whose sandbox every host needs (routing-mesh networks), local endpoint or not."""
    out = Overlay()
    eps = list(endpoints)
    networks = {n: net for n, net in networks.items() if not net.macvlan}  # not VXLAN's
    local_vtep = vteps.get(node)
    if local_vtep is None:
        return out
    v6 = ipaddress.ip_address(local_vtep).version == 6

    def sandbox(net: Network) -> Sandbox:
        ns = sandbox_ns(prefix, net.vni)
        sb = Sandbox(ns, net.vni, overlay_mtu(net, underlay_mtu, v6),
                     f"{net.gateway}/{net.subnet.prefixlen}", local_vtep,
                     bridge_mac(local_vtep, net.vni))
        out.sandboxes[ns] = sb
        return sb

    local = [e for e in eps if e.host == node and e.network in networks and e.netns]
    for ep in local:
        net = networks[ep.network]
        sb = sandbox(net)
        name = port_name(ep.key)
        if ep.docker:
            if ep.docker_id:  # Docker's endpoint exists (not only the address claim)
                out.ports[(sb.ns, name)] = Port(sb.ns, name, "", docker_peer_name(ep.key),
                                                "", ep.mac, sb.mtu)
            continue
        out.ports[(sb.ns, name)] = Port(sb.ns, name, ep.netns, ep.ifname or "eth0",
                                        f"{ep.ip}/{net.subnet.prefixlen}", ep.mac, sb.mtu)
    local_nets = {e.network for e in local}
    for name in everywhere:
        if name in networks:
            sandbox(networks[name])
            local_nets.add(name)
    for ep in eps:
        if ep.host == node or ep.network not in local_nets or ep.host not in vteps:
            continue
        ns = sandbox_ns(prefix, networks[ep.network].vni)
        out.fdb[(ns, ep.mac)] = vteps[ep.host]
        out.neigh[(ns, str(ep.ip))] = ep.mac
    return out
