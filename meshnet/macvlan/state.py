"""Desired macvlan state from the tables, and the plan to reach it (pure)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from meshnet.model import Endpoint, Network

MODES = {"private": 1, "vepa": 2, "bridge": 4, "passthru": 8}  #: IFLA_MACVLAN_MODE
VLAN_ALIAS = "meshnet"  #: the ifalias of the VLAN sub-interfaces meshnet creates


@dataclass(frozen=True)
class MvPort:
    netns: str  #: the container's namespace
    ifname: str  #: inside the container
    parent: str  #: on this host
    mode: str
    mac: str
    addr: str  #: "192.0.2.100/24"
    gateway: str


@dataclass(frozen=True)
class Shim:
    """This host's own macvlan on a network's parent, so the host reaches its containers
    (the parent itself cannot: the kernel never hands its traffic to macvlan children)."""

    name: str  #: mn-mvsVNI
    parent: str
    addr: str  #: "192.0.2.190/32"
    route: str  #: the network's --ip-range (or subnet), routed through the shim


@dataclass
class MacvlanState:
    ports: dict[tuple[str, str], MvPort] = field(default_factory=dict)  #: (netns, ifname)
    vlans: set[str] = field(default_factory=set)  #: NAME.VLAN parents meshnet owns
    shims: dict[str, Shim] = field(default_factory=dict)


def shim_name(vni: int) -> str:
    return f"mn-mvs{vni:06x}"


def shim_endpoint_name(node: str) -> str:
    return f"{node}-shim"


def desired(node: str, networks: Mapping[str, Network], endpoints: Iterable[Endpoint],
            parent_of: Callable[[Network], str]) -> MacvlanState:
    out = MacvlanState()
    for net in networks.values():
        if net.macvlan and "." in parent_of(net):
            out.vlans.add(parent_of(net))
    for ep in endpoints:
        net = networks.get(ep.network)
        if net is None or not net.macvlan or ep.host != node or ep.docker:
            continue
        if not ep.netns:  # this host's shim address on the network
            if ep.name == shim_endpoint_name(node):
                name = shim_name(net.vni)
                out.shims[name] = Shim(name, parent_of(net), f"{ep.ip}/{ep.ip.max_prefixlen}",
                                       str(net.range))
            continue
        ifname = ep.ifname or "eth0"
        out.ports[(ep.netns, ifname)] = MvPort(
            ep.netns, ifname, parent_of(net), net.macvlan_mode or "bridge", ep.mac,
            f"{ep.ip}/{net.subnet.prefixlen}", str(net.gateway))
    return out


@dataclass(frozen=True)
class AddVlan:
    name: str


@dataclass(frozen=True)
class DeleteVlan:
    name: str


@dataclass(frozen=True)
class AddPort:
    port: MvPort


@dataclass(frozen=True)
class DeletePort:
    netns: str
    ifname: str


@dataclass(frozen=True)
class AddShim:
    shim: Shim


@dataclass(frozen=True)
class DeleteShim:
    name: str


Op = AddVlan | DeleteVlan | AddPort | DeletePort | AddShim | DeleteShim


def plan(want: MacvlanState, have: MacvlanState) -> list[Op]:
    """VLANs first (ports sit on them), ports; removals in reverse. A port whose settings
    differ (another MAC: the address was re-claimed) is replaced."""
    ops: list[Op] = [AddVlan(v) for v in sorted(want.vlans - have.vlans)]
    for key, port in sorted(want.ports.items()):
        cur = have.ports.get(key)
        if cur is not None and cur.mac != port.mac:
            ops.append(DeletePort(*key))
            cur = None
        if cur is None:
            ops.append(AddPort(port))
    for name, shim in sorted(want.shims.items()):
        if have.shims.get(name) != shim:
            ops.append(AddShim(shim))  # (re)made: address and route as wanted
    ops += [DeletePort(*key) for key in sorted(have.ports) if key not in want.ports]
    ops += [DeleteShim(n) for n in sorted(have.shims) if n not in want.shims]
    ops += [DeleteVlan(v) for v in sorted(have.vlans - want.vlans)]
    return ops
