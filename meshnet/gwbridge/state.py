"""Desired and observed gateway-bridge state (plain data), ``desired()`` and ``plan()``."""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from meshnet.model import Endpoint, IPNetwork, Network

BRIDGE = "mn_gwbridge"
DEFAULT_SUBNET = "198.18.0.0/16"


def port_name(netns: str) -> str:
    return f"mn-gw{zlib.crc32(netns.encode()):08x}"


@dataclass(frozen=True)
class GwPort:
    netns: str
    name: str  #: host side, on the bridge
    ifname: str  #: in the container
    addr: str  #: "198.18.0.5/16"
    gateway: str


@dataclass
class GwState:
    bridge: str | None = None  #: the bridge's address "198.18.0.1/16", None: no bridge
    ports: dict[str, GwPort] = field(default_factory=dict)  #: by host-side name
    rules: str = ""  #: the owned iptables rules (canonical text), "" when no bridge


@dataclass(frozen=True)
class Allocation:
    """A container's gateway interface, chosen once at attach time (host-local)."""

    ip: str  #: "" when the container has its own default route (no gateway from us)
    ifname: str


def needs_gateway(netns: str, endpoints: Iterable[Endpoint], networks: Mapping[str, Network]
                  ) -> bool:
    return any(e.netns == netns and e.network in networks and not networks[e.network].internal
               and not networks[e.network].macvlan
               for e in endpoints)


def rules(subnet: str) -> str:
    """The rules of both owned chains, one per line, as iptables-save prints them."""
    return "\n".join([
        "nat MESHNET-GW-POSTROUTING "
        f"-s {subnet} ! -o {BRIDGE} -j MASQUERADE",
        f"filter MESHNET-GW-FORWARD -i {BRIDGE} -o {BRIDGE} -j DROP",
        f"filter MESHNET-GW-FORWARD -i {BRIDGE} ! -o {BRIDGE} -j ACCEPT",
        f"filter MESHNET-GW-FORWARD -o {BRIDGE} -m conntrack --ctstate RELATED,ESTABLISHED "
        "-j ACCEPT",
    ])


def desired(node: str, endpoints: Iterable[Endpoint], networks: Mapping[str, Network],
            allocations: Mapping[str, Allocation], subnet: IPNetwork) -> GwState:
    eps = [e for e in endpoints if e.host == node]
    gw = str(subnet.network_address + 1)
    out = GwState()
    for netns, alloc in sorted(allocations.items()):
        if not alloc.ip or not needs_gateway(netns, eps, networks):
            continue
        name = port_name(netns)
        out.ports[name] = GwPort(netns, name, alloc.ifname, f"{alloc.ip}/{subnet.prefixlen}", gw)
    if out.ports:
        out.bridge = f"{gw}/{subnet.prefixlen}"
        out.rules = rules(str(subnet))
    return out


@dataclass(frozen=True)
class Op:
    kind: str  #: bridge, rules, add_port, del_port, del_rules, del_bridge
    arg: object = None


def plan(want: GwState, have: GwState) -> list[Op]:
    ops: list[Op] = []
    if want.bridge and want.bridge != have.bridge:
        ops.append(Op("bridge", want.bridge))
    if want.rules and want.rules != have.rules:
        ops.append(Op("rules", want.rules))
    ops += [Op("add_port", p) for n, p in sorted(want.ports.items()) if n not in have.ports]
    ops += [Op("del_port", n) for n in sorted(have.ports) if n not in want.ports]
    if not want.bridge:
        if have.rules:
            ops.append(Op("del_rules"))
        if have.bridge:
            ops.append(Op("del_bridge"))
    return ops
