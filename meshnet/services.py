"""Service definitions: validation, VIP allocation, removal (cluster-scoped table).

A service lives on one network; tasks are endpoints attached with ``--service NAME``.
``mode vip`` gets a virtual IP from the network's subnet (never an endpoint's address,
the gateway or another VIP); ``mode dnsrr`` has none and DNS returns the healthy tasks.
The load-balancing data plane (``meshnet/ipvs``) and DNS read these records.
"""

from __future__ import annotations

from typing import Any

from meshnet.errors import Conflict, NotFound, UserError
from meshnet.model import HealthSpec, PortSpec, PublishedPort, Service, parse_port_spec
from meshnet.store import Store
from meshnet.vxlan.ipam import allocate, check_static

SERVICE_FIELDS = {"name", "network", "mode", "ports", "health", "affinity", "vip"}
HEALTH_FIELDS = {"kind", "path", "interval", "timeout", "retries"}


def parse_health(text: str) -> dict[str, Any]:
    """CLI form: ``tcp``, ``http`` or ``http:/path``."""
    kind, _, path = text.partition(":")
    if kind not in ("tcp", "http", "none") or (path and kind != "http"):
        raise UserError(f"invalid --health {text!r}: use tcp, http or http:/PATH")
    return {"kind": kind, **({"path": path} if path else {})}


def create_service(store: Store, body: dict[str, Any], now: float) -> Service:
    unknown = set(body) - SERVICE_FIELDS
    if unknown:
        raise UserError(f"unknown service field(s): {', '.join(sorted(unknown))}")
    name, netname = body.get("name"), body.get("network")
    if not isinstance(name, str) or not isinstance(netname, str):
        raise UserError("a service needs a name and a network")
    if name in store.services():
        raise Conflict(f"service {name} already exists")
    net = store.networks().get(netname)
    if net is None:
        raise NotFound(f"no network named {netname}")
    ports = body.get("ports") or []
    if not isinstance(ports, list):
        raise UserError("ports must be a list such as [\"80/tcp\"]")
    port_specs = tuple(parse_port_spec(p) if isinstance(p, str) else PortSpec.from_dict(p)
                       for p in ports)
    health = body.get("health") or {}
    if not isinstance(health, dict) or set(health) - HEALTH_FIELDS:
        raise UserError(f"invalid health spec {health!r}")
    mode = body.get("mode", "vip")
    if net.macvlan and mode != "dnsrr":
        raise UserError(f"network {netname} is macvlan: services there are --mode dnsrr "
                        "(DNS answers the tasks, reached at their own LAN addresses; a VIP "
                        "needs the overlay's load balancer)")
    vip = None
    if mode == "vip":
        taken = {e.ip for e in store.endpoints().values() if e.network == netname}
        taken |= {s.vip for s in store.services().values()
                  if s.network == netname and s.vip is not None}
        if body.get("vip"):
            vip = check_static(net, str(body["vip"]), taken)
        else:
            vip = allocate(net, taken, f"svc/{name}")
    elif body.get("vip"):
        raise UserError("a dnsrr service has no VIP")
    svc = Service(name=name, network=netname, vip=vip, mode=mode, ports=port_specs,
                  health=HealthSpec(**health), affinity=body.get("affinity", "none"))
    store.put("services", name, svc, now)
    return svc


def remove_service(store: Store, name: str, now: float) -> None:
    if name not in store.services():
        raise NotFound(f"no service named {name}")
    published = [p.key for p in store.all("published").values()
                 if isinstance(p, PublishedPort) and p.service == name]
    if published:
        raise Conflict(f"service {name} is published on {', '.join(sorted(published))}; "
                       "unpublish it first")
    store.delete("services", name, now)


PUBLISH_FIELDS = {"published", "target", "protocol", "service", "mode", "local_only"}


def parse_publish(text: str) -> tuple[int, int, str]:
    """``PUBLISHED:TARGET[/proto]`` -> (published, target, proto)."""
    spec, _, proto = text.partition("/")
    pub, sep, target = spec.partition(":")
    if not sep or not pub.isdigit() or not target.isdigit():
        raise UserError(f"invalid port mapping {text!r}: use PUBLISHED:TARGET[/tcp|/udp]")
    return int(pub), int(target), proto or "tcp"


def publish_port(store: Store, body: dict[str, Any], now: float) -> PublishedPort:
    unknown = set(body) - PUBLISH_FIELDS
    if unknown:
        raise UserError(f"unknown publish field(s): {', '.join(sorted(unknown))}")
    proto = body.get("protocol", "tcp")
    target = body.get("target")
    services = store.services()
    name = body.get("service")
    if name:
        svc = services.get(name)
        if svc is None:
            raise NotFound(f"no service named {name}")
    else:
        exposing = [s for s in services.values()
                    if any(p.port == target and p.protocol == proto for p in s.ports)]
        if len(exposing) != 1:
            which = "no service" if not exposing else \
                f"several services ({', '.join(sorted(s.name for s in exposing))})"
            raise UserError(f"{which} expose {target}/{proto}: name one with --service")
        svc = exposing[0]
    net = store.networks().get(svc.network)
    if net is not None and net.macvlan:
        raise UserError(f"service {svc.name} is on macvlan network {net.name}: its tasks are "
                        "on the LAN at their own addresses; there is nothing to publish")
    pp = PublishedPort(published=body.get("published"), target=target, service=svc.name,
                       protocol=proto, mode=body.get("mode", "ingress"),
                       local_only=bool(body.get("local_only", False)))
    if not any(p.port == pp.target and p.protocol == pp.protocol for p in svc.ports):
        raise UserError(f"service {svc.name} does not expose {pp.target}/{pp.protocol} "
                        f"(its ports: {', '.join(map(str, svc.ports)) or 'none'})")
    if svc.mode != "vip" and pp.mode == "ingress" and not pp.local_only:
        raise UserError(f"service {svc.name} is dnsrr: publish it with --mode host or "
                        "--local-only")
    if pp.key in store.all("published"):
        raise Conflict(f"port {pp.key} is already published")
    store.put("published", pp.key, pp, now)
    return pp


def unpublish_port(store: Store, key: str, now: float) -> PublishedPort:
    if "/" not in key:
        key += "/tcp"
    pp = store.all("published").get(key)
    if pp is None:
        raise NotFound(f"port {key} is not published")
    store.delete("published", key, now)
    return pp  # type: ignore[return-value]


def mesh_networks(store: Store) -> set[str]:
    """Networks with a port published through the routing mesh: every host needs their
    sandbox (and an LB address on them), task or not."""
    services = store.services()
    out = set()
    for pp in store.all("published").values():
        assert isinstance(pp, PublishedPort)
        svc = services.get(pp.service)
        if svc is not None and pp.mode == "ingress" and not pp.local_only:
            out.add(svc.network)
    return out
