"""The path meshnet expects a probe to take, computed from the tables (pure).

``expected_path`` answers, before any packet is sent: what the destination is (a
service VIP, a container address, or a published port entering ``node``), which
backends are healthy and where they run, and for each backend the VTEPs, VNI and MACs
of the overlay hop. The diagnosis compares captures with this.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from meshnet.errors import NotFound, UserError
from meshnet.ipvs.planner import usable
from meshnet.model import Endpoint, Network, PublishedPort, Service, TaskHealth
from meshnet.vxlan.state import VXLAN_PORT, mac_for, port_name, sandbox_ns, vxlan_name


@dataclass(frozen=True)
class View:
    """The tables as the trace reads them (built by the adapter from the Store)."""

    node: str
    prefix: str
    networks: Mapping[str, Network]
    endpoints: Iterable[Endpoint]
    services: Mapping[str, Service]
    health: Mapping[str, TaskHealth] = field(default_factory=dict)
    published: Iterable[PublishedPort] = ()
    vteps: Mapping[str, str] = field(default_factory=dict)  #: node -> VTEP address
    down: Collection[str] = ()  #: hosts gossip considers failed or gone
    parents: Mapping[str, str] = field(default_factory=dict)  #: macvlan network -> parent


@dataclass(frozen=True)
class Backend:
    """Where a probe may be delivered, and the overlay hop that gets it there."""

    name: str
    ip: str
    port: int
    mac: str
    host: str
    vtep: str  #: the destination host's VTEP ('' if unknown)
    local: bool  #: on the origin host: no VXLAN hop
    bridge_port: str  #: its veth on the sandbox bridge (ve<crc32>)
    host_down: bool = False

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "ip": self.ip, "port": self.port, "mac": self.mac,
                "host": self.host, "vtep": self.vtep, "local": self.local,
                "bridge_port": self.bridge_port, "host_down": self.host_down}


@dataclass(frozen=True)
class Expected:
    kind: Literal["vip", "direct", "ingress"]
    network: str
    vni: int
    node: str  #: the origin host (SRC's, or --from)
    local_vtep: str
    client: str  #: the probe's source address on the overlay (SRC's IP, or the LB address)
    dst: str  #: what the probe is sent to inside the overlay: VIP or container IP
    port: int  #: destination port as the probe sends it (published port for ingress)
    target: int  #: the port the task listens on
    proto: str
    sandbox: str  #: origin sandbox namespace
    vxlan_dev: str
    service: str = ""
    backends: tuple[Backend, ...] = ()  #: healthy ones (the only ones LB may pick)
    unhealthy: tuple[str, ...] = ()  #: "name ip (reason)" of tasks LB will not pick
    published: int = 0
    src_mac: str = ""
    exposed: bool = True  #: the service has a rule for port/proto (False: the VIP answers)
    lan: str = ""  #: macvlan network: the origin host's parent interface ("" = overlay)

    @property
    def remote_hosts(self) -> tuple[str, ...]:
        return tuple(sorted({b.host for b in self.backends if not b.local}))

    def backend(self, ip: str) -> Backend | None:
        return next((b for b in self.backends if b.ip == ip), None)

    def to_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "network": self.network, "vni": self.vni,
                "node": self.node, "local_vtep": self.local_vtep, "client": self.client,
                "dst": self.dst, "port": self.port, "target": self.target,
                "proto": self.proto, "sandbox": self.sandbox, "vxlan_dev": self.vxlan_dev,
                "udp_port": VXLAN_PORT, "service": self.service,
                "backends": [b.to_dict() for b in self.backends],
                "unhealthy": list(self.unhealthy), "published": self.published,
                "exposed": self.exposed, "lan": self.lan}


def find_source(view: View, src: str) -> Endpoint:
    """SRC as an attached container on this host: by endpoint name or namespace."""
    eps = [e for e in view.endpoints if not e.docker]  # Docker's: entered only by Docker
    here = [e for e in eps if e.netns and e.host == view.node and src in (e.name, e.netns)]
    if here:
        return sorted(here, key=lambda e: (e.network, str(e.ip)))[0]
    there = sorted({e.host for e in eps if e.netns and src in (e.name, e.netns)})
    if there:
        raise UserError(f"{src} runs on {', '.join(there)}, not on {view.node}: ask that "
                        "host's agent (--api)")
    raise NotFound(f"no container {src!r} is attached on {view.node}")


def _backend(view: View, e: Endpoint, port: int) -> Backend:
    vtep = view.vteps.get(e.host, "")
    return Backend(name=e.name, ip=str(e.ip), port=port, mac=e.mac, host=e.host, vtep=vtep,
                   local=e.host == view.node, bridge_port=port_name(e.key),
                   host_down=e.host in view.down)


def _common(view: View, net: Network) -> dict[str, object]:
    return dict(network=net.name, vni=net.vni, node=view.node,
                local_vtep=view.vteps.get(view.node, ""),
                sandbox=sandbox_ns(view.prefix, net.vni), vxlan_dev=vxlan_name(net.vni))


def _service_backends(view: View, svc: Service, port: int) -> tuple[tuple[Backend, ...],
                                                                     tuple[str, ...]]:
    good, bad = [], []
    for e in view.endpoints:
        if e.service != svc.name or e.network != svc.network:
            continue
        h = view.health.get(e.key)
        if e.host in view.down:
            bad.append(f"{e.name} {e.ip} (host {e.host} down)")
        elif not usable(e, svc, view.health):
            why = h.reason if h is not None and h.reason else "not healthy"
            bad.append(f"{e.name} {e.ip} ({why})")
        else:
            good.append(_backend(view, e, port))
    good.sort(key=lambda b: (ipaddress.ip_address(b.ip).version, ipaddress.ip_address(b.ip)))
    return tuple(good), tuple(sorted(bad))


def expected_path(view: View, src: Endpoint, dst_ip: str, port: int | None,
                  proto: str) -> Expected:
    """From a container: ``dst_ip`` is a VIP of a service on SRC's network, or the
    address of an endpoint on it."""
    net = view.networks.get(src.network)
    if net is None:
        raise NotFound(f"network {src.network} of {src.name} is not in the tables")
    addr = ipaddress.ip_address(dst_ip)
    base = dict(_common(view, net), client=str(src.ip), dst=str(addr), proto=proto,
                src_mac=src.mac)
    if net.macvlan:  # no sandbox, no VXLAN: the probe leaves on the host's LAN interface
        base.update(sandbox="", vxlan_dev="", lan=view.parents.get(net.name, ""))
    for svc in view.services.values():
        if svc.network == net.name and svc.vip == addr:
            port = _port_for(svc, port, proto)
            exposed = any(p.port == port and p.protocol == proto for p in svc.ports)
            good, bad = _service_backends(view, svc, port)
            return Expected(kind="vip", port=port, target=port, service=svc.name,
                            backends=good if exposed else (), unhealthy=bad, exposed=exposed,
                            **base)  # type: ignore[arg-type]
    for e in view.endpoints:
        if e.network == net.name and e.ip == addr:
            if port is None:
                svc = view.services.get(e.service) if e.service else None
                port = _port_for(svc, None, proto) if svc else None
            if port is None:
                raise UserError(f"give the port to probe on {e.name} (DST:PORT)")
            return Expected(kind="direct", port=port, target=port, service=e.service,
                            backends=(_backend(view, e, port),), **base)  # type: ignore[arg-type]
    raise NotFound(f"{addr} is neither a service VIP nor a container on network "
                   f"{net.name}")


def _port_for(svc: Service, port: int | None, proto: str) -> int:
    ports = [p.port for p in svc.ports if p.protocol == proto]
    if port is None:
        if not ports:
            raise UserError(f"service {svc.name} exposes no {proto} port: give DST:PORT")
        return ports[0]
    return port


def expected_ingress(view: View, published: int, proto: str) -> Expected:
    """Traffic entering ``view.node`` on a published port: host DNAT to VIP:target,
    into the sandbox over the ingress link, LB there, SNAT to this host's LB address."""
    pp = next((p for p in view.published if p.published == published
               and p.protocol == proto), None)
    if pp is None:
        raise NotFound(f"port {published}/{proto} is not published")
    svc = view.services.get(pp.service)
    if svc is None or svc.network not in view.networks:
        raise NotFound(f"published port {pp.key}: service {pp.service} is unknown")
    net = view.networks[svc.network]
    lb = next((e for e in view.endpoints if e.host == view.node and not e.netns
               and e.network == net.name and e.name == f"lb-{view.node}"), None)
    good, bad = _service_backends(view, svc, pp.target)
    if pp.local_only or pp.mode == "host":
        good = tuple(b for b in good if b.local)
    return Expected(kind="ingress", client=str(lb.ip) if lb else "",
                    dst=str(svc.vip or ""), port=published, target=pp.target, proto=proto,
                    service=svc.name, backends=good, unhealthy=bad, published=published,
                    src_mac=mac_for(lb.ip) if lb else "",
                    **_common(view, net))  # type: ignore[arg-type]
