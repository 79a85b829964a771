"""The planner kept current one table change at a time (pure, no I/O).

:func:`meshnet.ipvs.planner.desired` recomputes everything from the full tables: at
1,000 services x 10 tasks that is ~30 ms of Python, and getting the full tables out of the
store (decoding every row) costs far more. :class:`IncrementalPlanner` holds its own copy
of the rows it plans from, takes changed rows one at a time (``change``), and on
``state()`` recomputes only the services those rows touch, so one task changing costs
O(that service), not O(cluster). Its result always equals ``desired`` over the same rows
(the property tests hold it to that). kube-proxy does the same with its change trackers.

What a changed row dirties:

* an endpoint: the service it belonged to and the one it belongs to now;
* a health entry ``network/ip``: the service of the endpoint at that key;
* a service: itself (and the networks it left and joined);
* a network, or the set of down hosts: every service (rare: recompute all);
* a published port: nothing per service; published rules are recomputed on every
  ``state()`` (one per published port, few).

Unchanged results are *interned*: a service recomputed to an equal value keeps the same
:class:`VirtualService` objects, and an unchanged sandbox keeps the same
:class:`SandboxLb`, so the renderer can tell "unchanged" by identity (``is``) without
comparing 10 backends per service.

The adapter (:class:`meshnet.ipvs.reconciler.LbReconciler`) feeds it changed keys from the
store's change notices and reloads every row on each full sync (periodic, after a failure,
at start), so a missed notice is repaired by the next full sync.
"""

from __future__ import annotations

import weakref
from bisect import bisect_left, insort
from collections.abc import Collection, Iterable, Mapping
from itertools import chain
from typing import Any

from meshnet.ipvs.planner import published_rules, service_vss, usable
from meshnet.ipvs.state import HostLb, LbState, SandboxLb, SbDelta, VirtualService
from meshnet.model import Endpoint, IPAddress, Network, PublishedPort, Service, TaskHealth
from meshnet.vxlan.state import sandbox_ns

#: the tables the planner reads
TABLES = ("networks", "services", "endpoints", "health", "published")


class IncrementalPlanner:
    """``desired(...)`` maintained incrementally: ``reset`` (all rows) / ``change`` (one
    row), then ``state(lb_ips, down_hosts)``."""

    def __init__(self, node: str, prefix: str) -> None:
        self.node = node
        self.prefix = prefix
        self.networks: dict[str, Network] = {}
        self.services: dict[str, Service] = {}
        self.endpoints: dict[str, Endpoint] = {}
        self.health: dict[str, TaskHealth] = {}
        self.published: dict[str, PublishedPort] = {}
        self._eps_of: dict[str, dict[str, Endpoint]] = {}  #: service -> its endpoints
        self._local: dict[str, Endpoint] = {}  #: endpoints on this host
        self._net_svcs: dict[str, list[str]] = {}  #: network -> its service names, sorted
        self._tasks: dict[str, list[Endpoint]] = {}  #: service -> usable tasks
        self._vss: dict[str, tuple[VirtualService, ...]] = {}  #: service -> its VSs
        self._sb_vss: dict[str, tuple[VirtualService, ...]] = {}  #: network -> its VSs
        self._sb: dict[str, SandboxLb] = {}  #: network -> last sandbox (for interning)
        self._down: frozenset[str] = frozenset()
        self._dirty: set[str] = set()  #: services to recompute
        self._dirty_nets: set[str] = set()  #: networks whose VS list to rebuild
        #: network -> services whose VSs changed (its VS list is patched in place when
        #: each keeps its count: a backend change; else rebuilt)
        self._patch: dict[str, set[str]] = {}
        #: network -> service -> (first position, count) in its VS list
        self._pos: dict[str, dict[str, tuple[int, int]]] = {}
        self._all_dirty = True
        #: (local networks, services with a local task), from ``_local``; None: stale
        self._local_view: tuple[set[str], set[str]] | None = None

    # --- input -----------------------------------------------------------------------

    def reset(self, tables: Mapping[str, Mapping[str, Any]]) -> None:
        """Replace every row (a full sync). Previous results stay as interning pools."""
        self.networks, self.services, self.endpoints, self.health, self.published = (
            {}, {}, {}, {}, {})
        self._eps_of, self._local, self._net_svcs = {}, {}, {}
        for table in TABLES:
            for key, value in tables.get(table, {}).items():
                self._put(table, key, value)
        self._all_dirty = True

    def change(self, table: str, key: str, value: Any | None) -> None:
        """Row ``key`` of ``table`` is now ``value`` (None: deleted)."""
        self._put(table, key, value)

    def _put(self, table: str, key: str, value: Any | None) -> None:
        if table == "endpoints":
            old = self.endpoints.pop(key, None)
            if old is not None:
                if self._local.pop(key, None) is not None:
                    self._local_view = None
                if old.service:
                    bucket = self._eps_of.get(old.service, {})
                    bucket.pop(key, None)
                    if not bucket:
                        self._eps_of.pop(old.service, None)
                    self._dirty.add(old.service)
            if value is not None:
                self.endpoints[key] = value
                if value.host == self.node:
                    self._local[key] = value
                    self._local_view = None
                if value.service:
                    self._eps_of.setdefault(value.service, {})[key] = value
                    self._dirty.add(value.service)
        elif table == "health":
            if value is None:
                self.health.pop(key, None)
            else:
                self.health[key] = value
            ep = self.endpoints.get(key)
            if ep is not None and ep.service:
                self._dirty.add(ep.service)
        elif table == "services":
            old = self.services.pop(key, None)
            if old is not None:
                names = self._net_svcs.get(old.network, [])
                i = bisect_left(names, key)
                if i < len(names) and names[i] == key:
                    del names[i]
                self._dirty_nets.add(old.network)
            if value is not None:
                self.services[key] = value
                insort(self._net_svcs.setdefault(value.network, []), key)
                self._dirty_nets.add(value.network)
            self._dirty.add(key)
        elif table == "networks":
            if value is None:
                self.networks.pop(key, None)
            else:
                self.networks[key] = value
            self._all_dirty = True
        elif table == "published":
            if value is None:
                self.published.pop(key, None)
            else:
                self.published[key] = value

    # --- views for the agent (no decoding of the store) --------------------------------

    def local_endpoints(self) -> list[Endpoint]:
        return list(self._local.values())

    def mesh_networks(self) -> set[str]:
        """As :func:`meshnet.services.mesh_networks`, from these rows."""
        out = set()
        for pp in self.published.values():
            svc = self.services.get(pp.service)
            if svc is not None and pp.mode == "ingress" and not pp.local_only:
                out.add(svc.network)
        return out

    # --- output ----------------------------------------------------------------------

    def state(self, lb_ips: Mapping[str, IPAddress] | None = None,
              down_hosts: Collection[str] = ()) -> LbState:
        """Equal to ``desired(node, <rows>, prefix, lb_ips, down_hosts)``."""
        lb_ips = lb_ips or {}
        down = frozenset(down_hosts)
        if down != self._down:
            self._down = down
            self._all_dirty = True
        if self._all_dirty:
            self._local_view = None
            self._dirty = set(self.services) | set(self._vss) | set(self._tasks)
            self._dirty_nets = set(self._sb_vss) | set(self._net_svcs)
            self._all_dirty = False
        for name in self._dirty:
            self._recompute(name)
        self._dirty = set()
        for net in self._dirty_nets:
            self._sb_vss.pop(net, None)
        self._dirty_nets = set()
        patches, self._patch = self._patch, {}

        node = self.node
        networks = self.networks
        if self._local_view is None:  # this host's endpoints changed
            local = [e for e in self._local.values()
                     if e.network in networks and node not in down]
            self._local_view = ({e.network for e in local},
                                {e.service for e in local if e.service})
        local_nets, any_local_task = self._local_view
        rules, mesh_nets, warnings = published_rules(
            node, networks, self.services, self.published.values(), self._tasks,
            any_local_task, lb_ips)

        sandboxes = []
        names = local_nets | mesh_nets
        for net in patches:
            if net not in names:  # no sandbox now: rebuild its list when it has one
                self._sb_vss.pop(net, None)
        for name in sorted(names):
            net = networks[name]
            vss = self._sb_vss.get(name)
            prev = self._sb.get(name)
            delta, vip_seq = None, None
            if vss is not None and name in patches:
                base = vss
                vss, changed = self._patched(name, vss, patches[name])
                if changed is not None and prev is not None and prev.services is base:
                    delta = SbDelta(weakref.ref(prev), changed)
                    if all(base[i].vip == vss[i].vip for i in changed):
                        vip_seq = prev.vip_seq
            elif vss is not None and prev is not None and prev.services is vss:
                vip_seq = prev.vip_seq
            if vss is None:
                vss = self._rebuild(name)
            self._sb_vss[name] = vss
            if vip_seq is None:
                vip_seq = tuple(vs.vip for vs in vss)
            sb = SandboxLb(network=name, vni=net.vni, ns=sandbox_ns(self.prefix, net.vni),
                           gateway=net.gateway, lb_ip=lb_ips.get(name), services=vss,
                           ingress=name in mesh_nets, delta=delta, vip_seq=vip_seq)
            if prev is not None and prev.services is vss and prev == sb:
                sb = prev
            self._sb[name] = sb
            sandboxes.append(sb)
        for name in set(self._sb) - local_nets - mesh_nets:
            del self._sb[name]
        return LbState(tuple(sandboxes), HostLb(tuple(rules)), tuple(warnings))

    def _recompute(self, name: str) -> None:
        svc = self.services.get(name)
        old = self._vss.get(name, ())
        if svc is None or svc.network not in self.networks:
            tasks: list[Endpoint] = []
            vss: tuple[VirtualService, ...] = ()
        else:
            down, health = self._down, self.health
            tasks = [e for e in self._eps_of.get(name, {}).values()
                     if e.network == svc.network and e.host not in down
                     and usable(e, svc, health)]
            vss = _intern(service_vss(svc, tasks, self.node), old)
        if tasks:
            self._tasks[name] = tasks
        else:
            self._tasks.pop(name, None)
        if vss:
            self._vss[name] = vss
        else:
            self._vss.pop(name, None)
        if old is not vss:
            for net in {vs.network for vs in chain(old, vss)}:
                self._patch.setdefault(net, set()).add(name)

    def _rebuild(self, net: str) -> tuple[VirtualService, ...]:
        """The network's VS list from scratch (services in name order), with positions."""
        out: list[VirtualService] = []
        pos = {}
        for s in self._net_svcs.get(net, ()):
            vss = self._vss.get(s, ())
            if vss:
                pos[s] = (len(out), len(vss))
                out.extend(vss)
        self._pos[net] = pos
        return tuple(out)

    def _patched(self, net: str, vss: tuple[VirtualService, ...], names: set[str]
                 ) -> tuple[tuple[VirtualService, ...], tuple[int, ...] | None]:
        """``vss`` with the VSs of ``names`` replaced in place, and the positions that
        changed; rebuilt (positions None) when a service's VS count changed."""
        pos = self._pos.get(net, {})
        out: list[VirtualService] | None = None
        changed: list[int] = []
        for s in names:
            new = self._vss.get(s, ()) if self.services.get(s) is not None and \
                self.services[s].network == net else ()
            at = pos.get(s)
            if at is None and not new:
                continue
            if at is None or at[1] != len(new):
                return self._rebuild(net), None
            if out is None:
                out = list(vss)
            out[at[0]:at[0] + at[1]] = new
            changed.extend(range(at[0], at[0] + at[1]))
        if out is None:
            return vss, ()
        return tuple(out), tuple(sorted(changed))


def _intern(new: tuple[VirtualService, ...], old: tuple[VirtualService, ...]
            ) -> tuple[VirtualService, ...]:
    """``old`` if equal, else ``new`` with each element equal to old's reused."""
    if new == old:
        return old
    by_key = {vs.key: vs for vs in old}
    out = []
    for vs in new:
        o = by_key.get(vs.key)
        out.append(o if o is not None and o == vs else vs)
    return tuple(out)


def plan_from_scratch(node: str, prefix: str, tables: Mapping[str, Mapping[str, Any]],
                      lb_ips: Mapping[str, IPAddress] | None = None,
                      down_hosts: Iterable[str] = ()) -> LbState:
    """``desired`` over table rows as the planner holds them (for tests and the bench)."""
    from meshnet.ipvs.planner import desired

    return desired(node, tables.get("networks", {}), tables.get("services", {}),
                   tables.get("endpoints", {}).values(), tables.get("health", {}),
                   tables.get("published", {}).values(), prefix, lb_ips,
                   frozenset(down_hosts))
