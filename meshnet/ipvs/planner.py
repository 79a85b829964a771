"""``desired(...)`` -> :class:`LbState` (pure): the load balancing one host should have.

Inputs are the cluster tables as model objects plus what only this host knows (its node
name, its namespace prefix, its own LB address per network). Rules:

* A backend is a task (an endpoint with ``service`` set, on the service's network, on a
  host not known to be down) that is *usable*: if its service has a health check, only a
  ``healthy`` TaskHealth entry makes it usable (as Docker: activated once healthy); with
  no health check it is usable unless a TaskHealth entry says unhealthy.
* VIP services get one :class:`VirtualService` per (service, port) in the sandbox of the
  service's network on every host that has that sandbox (a local endpoint on the network,
  or a mesh-published port needing it). ``dnsrr`` services get none (DNS returns tasks).
* Published ports: ``ingress`` -> ``mesh`` on every host (DNAT to VIP:target, into the
  sandbox over the ingress link); ``ingress --local-only`` -> ``local`` where there is a
  usable local task, else ``reject``; ``host`` -> ``local`` on hosts running a task of the
  service (``reject`` while none of them is usable), nothing elsewhere.
* Problems in the tables (a published port of an unknown service, a target the service
  does not expose, ingress publishing of a dnsrr service) are peer/user data: they become
  ``warnings`` and the entry is skipped, never an exception.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from meshnet.ipvs.state import (
    Backend,
    HostLb,
    LbState,
    PublishedRule,
    SandboxLb,
    VirtualService,
)
from meshnet.model import (
    Endpoint,
    IPAddress,
    Network,
    PublishedPort,
    Service,
    TaskHealth,
)
from meshnet.vxlan.state import port_name, sandbox_ns


def _order(b: Backend) -> tuple[int, int, int]:
    return (b.ip.version, int(b.ip), b.port)


def usable(ep: Endpoint, svc: Service, health: Mapping[str, TaskHealth]) -> bool:
    h = health.get(ep.key) if health else None
    if h is not None and h.service != svc.name:
        h = None  # a stale record of a previous task at this address
    if svc.health.kind == "none":
        return h is None or h.healthy
    return h is not None and h.healthy


def service_vss(svc: Service, tasks: Iterable[Endpoint], node: str
                ) -> tuple[VirtualService, ...]:
    """The virtual services of one service (one per port), given its usable tasks."""
    if svc.mode != "vip" or svc.vip is None:
        return ()
    tasks = list(tasks)
    out = []
    for sp in svc.ports:
        backends = tuple(sorted(
            (Backend(e.ip, sp.port, e.host == node,
                     port_name(e.key) if e.host == node else "")
             for e in tasks), key=_order))
        out.append(VirtualService(svc.network, svc.name, svc.vip, sp.port, sp.protocol,
                                  backends, svc.affinity == "client-ip"))
    return tuple(out)


def published_rules(node: str, networks: Mapping[str, Network],
                    services: Mapping[str, Service], published: Iterable[PublishedPort],
                    tasks: Mapping[str, list[Endpoint]], any_local_task: Collection[str],
                    lb_ips: Mapping[str, IPAddress]
                    ) -> tuple[list[PublishedRule], set[str], list[str]]:
    """(rules, networks needing a mesh sandbox, warnings) for the published ports."""
    warnings: list[str] = []
    rules: list[PublishedRule] = []
    mesh_nets: set[str] = set()
    for p in sorted(published, key=lambda p: (p.published, p.protocol)):
        svc = services.get(p.service)
        if svc is None or svc.network not in networks:
            warnings.append(f"published port {p.key}: unknown service {p.service}")
            continue
        if all(sp.port != p.target or sp.protocol != p.protocol for sp in svc.ports):
            warnings.append(f"published port {p.key}: service {svc.name} does not expose "
                            f"{p.target}/{p.protocol}")
            continue
        net = networks[svc.network]
        local = [e for e in tasks.get(svc.name, []) if e.host == node]
        backends = tuple(sorted((Backend(e.ip, p.target, True, port_name(e.key))
                                 for e in local), key=_order))
        affinity = svc.affinity == "client-ip"
        base = dict(published=p.published, protocol=p.protocol, service=svc.name,
                    network=net.name, vni=net.vni, target=p.target, affinity=affinity)
        if p.mode == "host" and svc.name not in any_local_task:
            continue  # host mode binds only where a task runs
        if p.mode == "host" or p.local_only:
            kind = "local" if backends else "reject"
            rules.append(PublishedRule(kind=kind, backends=backends, **base))  # type: ignore[arg-type]
            continue
        if svc.mode != "vip" or svc.vip is None:
            warnings.append(f"published port {p.key}: ingress mode needs a VIP service, "
                            f"{svc.name} is dnsrr")
            continue
        if svc.network not in lb_ips:
            warnings.append(f"published port {p.key}: no LB address on {net.name} for this "
                            "host; only local tasks can answer")
        rules.append(PublishedRule(kind="mesh", vip=svc.vip, **base))  # type: ignore[arg-type]
        mesh_nets.add(net.name)
    return rules, mesh_nets, warnings


def desired(node: str, networks: Mapping[str, Network], services: Mapping[str, Service],
            endpoints: Iterable[Endpoint], health: Mapping[str, TaskHealth],
            published: Iterable[PublishedPort], prefix: str,
            lb_ips: Mapping[str, IPAddress] | None = None,
            down_hosts: Collection[str] = ()) -> LbState:
    """The load-balancing state ``node`` should have, from the full tables.

    ``health`` is keyed like the health table (``network/ip``); ``lb_ips`` maps a network
    name to this host's own LB address on it (see the package docstring); ``down_hosts``
    are hosts gossip considers failed (their tasks are dropped at once). The agent keeps
    the same result current one change at a time with
    :class:`meshnet.ipvs.incremental.IncrementalPlanner`; this is its reference.
    """
    lb_ips = lb_ips or {}
    eps = [e for e in endpoints if e.network in networks and e.host not in down_hosts]
    local_nets = {e.network for e in eps if e.host == node}

    # tasks per service, usable ones only
    tasks: dict[str, list[Endpoint]] = {}
    for e in eps:
        svc = services.get(e.service) if e.service else None
        if svc is None or svc.network != e.network or not usable(e, svc, health):
            continue
        tasks.setdefault(svc.name, []).append(e)
    any_local_task = {e.service for e in eps if e.host == node and e.service}
    rules, mesh_nets, warnings = published_rules(node, networks, services, published, tasks,
                                                 any_local_task, lb_ips)

    # sandboxes
    sandboxes: list[SandboxLb] = []
    for name in sorted(local_nets | mesh_nets):
        net = networks[name]
        vss: list[VirtualService] = []
        for svc in sorted(services.values(), key=lambda s: s.name):
            if svc.network == name:
                vss.extend(service_vss(svc, tasks.get(svc.name, []), node))
        sandboxes.append(SandboxLb(
            network=name, vni=net.vni, ns=sandbox_ns(prefix, net.vni), gateway=net.gateway,
            lb_ip=lb_ips.get(name), services=tuple(vss), ingress=name in mesh_nets))
    return LbState(tuple(sandboxes), HostLb(tuple(rules)), tuple(warnings))
