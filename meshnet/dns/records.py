"""The records view: what the resolver knows, built from the cluster tables (pure).

Design notes
------------
* Input: the ``networks``, ``endpoints``, ``services`` and ``health`` tables as model
  objects. Output: an immutable :class:`RecordsView`. It is rebuilt whole on every
  table change (no incremental bookkeeping to get wrong: a rebuild cannot drift from the
  tables); 10k endpoints build in ~20-30 ms. The responder swaps views atomically and
  bumps its generation, which invalidates every cached answer.
* Per network, one dict ``name -> Entry`` holds every answerable name, both bare and
  network-qualified (``web`` and ``web.front``), lower-cased:

  ===============================  ============================================  =======
  name                             addresses                                     kind
  ===============================  ============================================  =======
  endpoint name, each alias        the endpoint's IP                             static
  service (mode vip)               the VIP                                       static
  service (mode dnsrr)             healthy task IPs                              dynamic
  ``tasks.<svc>``                  healthy task IPs                              dynamic
  ===============================  ============================================  =======

  "dynamic" answers are shuffled per query and carry the short task TTL. A task is an
  endpoint with ``service`` set; it is healthy unless the health table holds a
  TaskHealth for (network, ip) with ``healthy=False``. Unhealthy tasks keep their own
  name (the container still exists) but leave ``tasks.<svc>``, dnsrr and SRV answers.
  A name that collides (a container named like a service) answers the union.
* SRV ``_<port>._<proto>.<svc>`` per service port: target ``<svc>`` (-> VIP) in vip mode,
  each healthy task's name in dnsrr mode (qualified queries get qualified targets).
* PTR: endpoint IP -> ``<name>.<network>``, VIP -> ``<svc>.<network>``, keyed by
  address object (no reverse strings built at build time).
* Scoping: :meth:`RecordsView.for_networks` gives the :class:`ScopedView` of the
  networks one container is attached to; names elsewhere do not exist for it. A
  ScopedView is cached per scope inside the (immutable) view.
* "Ours" (answer NXDOMAIN rather than forward): single-label names, ``tasks.*``, names
  ending in any meshnet network's name, SRV-shaped names under a local name, and
  reverse names of addresses inside any meshnet subnet (overlay addresses are private:
  their reverse lookups never leak upstream).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from ipaddress import IPv4Address
from typing import NamedTuple, TypeVar

from meshnet.model import Endpoint, IPAddress, Network, Service, TaskHealth

T = TypeVar("T")


class Entry(NamedTuple):
    """The addresses of one name on one network (or merged over a scope)."""

    v4: tuple[IPAddress, ...]
    v6: tuple[IPAddress, ...]
    dynamic: bool  #: task answers: shuffled per query, short TTL


class SrvTarget(NamedTuple):
    port: int
    target: str  #: lower-case name, no trailing dot
    addrs: tuple[IPAddress, ...]  #: for the additional section
    weight: int = 0
    priority: int = 0


EMPTY = Entry((), (), False)


def _values(tbl: Mapping[str, T] | Iterable[T]) -> Iterable[T]:
    return tbl.values() if isinstance(tbl, Mapping) else tbl


Raw = tuple  # (v4 tuple, v6 tuple, dynamic): an Entry before lookup wraps it (cheaper)


def _raw(ips: list[IPAddress], dynamic: bool) -> Raw:
    return (tuple(ip for ip in ips if ip.__class__ is IPv4Address),
            tuple(ip for ip in ips if ip.__class__ is not IPv4Address), dynamic)


class _NetBuilder:
    """One network's names while building. A name with one address and no collision (the
    common case) is stored final at once; others as lists, finalised in freeze()."""

    __slots__ = ("names", "dynamic", "srv")

    def __init__(self) -> None:
        self.names: dict[str, Raw | list[IPAddress]] = {}
        self.dynamic: set[str] = set()
        self.srv: dict[str, list[SrvTarget]] = {}

    def add1(self, name: str, ip: IPAddress) -> None:
        cur = self.names.get(name)
        if cur is None:
            self.names[name] = ((ip,), (), False) if ip.__class__ is IPv4Address else \
                ((), (ip,), False)
        else:
            self.add(name, (ip,))

    def add(self, name: str, ips: Iterable[IPAddress], dynamic: bool = False) -> None:
        cur = self.names.get(name)
        if cur is None:
            self.names[name] = list(ips)  # addresses are unique within one network
        else:
            lst = cur if cur.__class__ is list else list(cur[0] + cur[1])
            lst += [ip for ip in ips if ip not in lst]
            self.names[name] = lst
        if dynamic:
            self.dynamic.add(name)

    def freeze(self) -> tuple[dict[str, Raw], dict[str, tuple[SrvTarget, ...]]]:
        names = self.names
        dyn = self.dynamic
        for name, cur in names.items():
            if cur.__class__ is list:
                names[name] = _raw(cur, name in dyn)  # type: ignore[arg-type]
        return names, {name: tuple(targets) for name, targets in self.srv.items()}  # type: ignore[return-value]


class RecordsView:
    """Immutable name data of the whole cluster; see the module notes."""

    def __init__(self, networks: dict[str, Network], names: dict[str, dict[str, Raw]],
                 srv: dict[str, dict[str, tuple[SrvTarget, ...]]],
                 ptr: dict[int, tuple[tuple[str, str], ...]]) -> None:
        self.networks = networks  #: lower-case name -> Network
        self._names = names
        self._srv = srv
        self._ptr = ptr
        self._suffixes = tuple("." + n for n in networks)
        self._srv_qualified: dict[str, tuple[SrvTarget, ...]] = {}
        self._scoped: dict[frozenset[str], ScopedView] = {}

    @classmethod
    def empty(cls) -> RecordsView:
        return cls({}, {}, {}, {})

    @classmethod
    def build(cls, networks: Mapping[str, Network] | Iterable[Network],
              endpoints: Mapping[str, Endpoint] | Iterable[Endpoint],
              services: Mapping[str, Service] | Iterable[Service],
              health: Mapping[str, TaskHealth] | Iterable[TaskHealth] = ()) -> RecordsView:
        nets = {n.name.lower(): n for n in _values(networks)}
        unhealthy = {(h.network.lower(), int(h.ip)) for h in _values(health) if not h.healthy}
        builders = {n: _NetBuilder() for n in nets}
        ptr: dict[int, list[tuple[str, str]]] = {}  # int(ip): ipaddress hashes slowly
        # (network, service) -> healthy tasks as (name, ip)
        tasks: dict[tuple[str, str], list[tuple[str, IPAddress]]] = {}
        for ep in _values(endpoints):
            net = ep.network.lower()
            b = builders.get(net)
            if b is None:
                continue  # endpoint of a network that is gone (or not yet here)
            ip = ep.ip
            name = ep.name.lower()
            b.add1(name, ip)
            for alias in ep.aliases:
                b.add1(alias.lower(), ip)
            ipi = int(ip)
            ptr.setdefault(ipi, []).append((net, f"{name}.{net}"))
            if ep.service and (net, ipi) not in unhealthy:
                tasks.setdefault((net, ep.service.lower()), []).append((name, ip))
        svcs = [s for s in _values(services) if s.network.lower() in builders]
        for (net, svc), ts in tasks.items():
            builders[net].add("tasks." + svc, (ip for _, ip in ts), dynamic=True)
        for s in svcs:
            net, svc = s.network.lower(), s.name.lower()
            b = builders[net]
            ts = tasks.get((net, svc), [])
            b.add("tasks." + svc, (), dynamic=True)  # exists even with no healthy task
            if s.mode == "vip" and s.vip is not None:
                b.add(svc, (s.vip,))
                ptr.setdefault(int(s.vip), []).append((net, f"{svc}.{net}"))
                targets = [SrvTarget(0, svc, (s.vip,))]
            else:
                b.add(svc, (ip for _, ip in ts), dynamic=True)
                targets = [SrvTarget(0, name, (ip,), weight=1) for name, ip in ts]
            for p in s.ports:
                b.srv[f"_{p.port}._{p.protocol}.{svc}"] = [
                    SrvTarget(p.port, t.target, t.addrs, t.weight) for t in targets]
        names: dict[str, dict[str, Raw]] = {}
        srv: dict[str, dict[str, tuple[SrvTarget, ...]]] = {}
        for net, b in builders.items():
            names[net], srv[net] = b.freeze()
        return cls(nets, names, srv, {ip: tuple(v) for ip, v in ptr.items()})

    def for_networks(self, scope: frozenset[str]) -> ScopedView:
        """The view of a container attached to the networks ``scope`` (any case)."""
        sv = self._scoped.get(scope)
        if sv is None:
            nets = tuple(sorted(n.lower() for n in scope if n.lower() in self.networks))
            sv = self._scoped[scope] = ScopedView(self, nets)
        return sv

    def __len__(self) -> int:
        return sum(len(n) for n in self._names.values())


class ScopedView:
    """Lookups as one container sees them. Names are lower-case, without trailing dot."""

    def __init__(self, view: RecordsView, nets: tuple[str, ...]) -> None:
        self.view = view
        self.nets = nets
        self._tables = tuple(view._names[n] for n in nets)
        self._srv_tables = tuple(view._srv[n] for n in nets)
        self._subnets = tuple(n.subnet for n in view.networks.values())  # all: ours
        self._suffixes = tuple("." + n for n in nets)
        #: forwarding allowed: attached to at least one non-internal network (or to no
        #: known network at all, e.g. before the tables arrive).
        self.can_forward = not nets or any(not view.networks[n].internal for n in nets)

    def _hits(self, name: str, tables: tuple[dict[str, T], ...]) -> list[tuple[T, str]]:
        """(entry, qualifier) of ``name`` over the scope: bare (qualifier "") or
        network-qualified ``<name>.<network>`` (qualifier ".<network>")."""
        found = [(e, "") for t in tables if (e := t.get(name)) is not None]
        if "." in name:
            for t, suffix in zip(tables, self._suffixes, strict=True):
                if name.endswith(suffix):
                    e = t.get(name[:-len(suffix)])
                    if e is not None:
                        found.append((e, suffix))
        return found

    def lookup(self, name: str) -> Entry | None:
        found = [Entry._make(e) for e, _ in self._hits(name, self._tables)]
        if not found:
            return None
        if len(found) == 1:
            return found[0]
        v4: list[IPAddress] = []
        v6: list[IPAddress] = []
        for e in found:
            v4 += [ip for ip in e.v4 if ip not in v4]
            v6 += [ip for ip in e.v6 if ip not in v6]
        return Entry(tuple(v4), tuple(v6), any(e.dynamic for e in found))

    def srv(self, name: str) -> tuple[SrvTarget, ...] | None:
        found = self._hits(name, self._srv_tables)
        if not found:
            return None
        return tuple(t._replace(target=t.target + q) if q else t
                     for targets, q in found for t in targets)

    def ptr(self, ip: IPAddress) -> tuple[str, ...]:
        entries = self.view._ptr.get(int(ip), ())
        return tuple(dict.fromkeys(target for net, target in entries if net in self.nets))

    def in_subnets(self, ip: IPAddress) -> bool:
        return any(ip in s for s in self._subnets if s.version == ip.version)

    def owns(self, name: str) -> bool:
        """Whether an unknown ``name`` is in meshnet's namespace (NXDOMAIN, no forward)."""
        if "." not in name or name.startswith("tasks."):
            return True
        if name.endswith(self.view._suffixes):
            return True
        if name.startswith("_"):
            parts = name.split(".", 2)
            if len(parts) == 3 and parts[1] in ("_tcp", "_udp"):
                return self.lookup(parts[2]) is not None or self.owns(parts[2])
        return False


def reverse_to_ip(name: str) -> IPAddress | None:
    """``4.3.2.1.in-addr.arpa`` -> 1.2.3.4 (full-length reverse names only)."""
    if name.endswith(".in-addr.arpa"):
        parts = name[:-13].split(".")
        if len(parts) != 4:
            return None
        try:
            return ipaddress.IPv4Address(".".join(reversed(parts)))
        except ValueError:
            return None
    if name.endswith(".ip6.arpa"):
        nibbles = name[:-9].split(".")
        if len(nibbles) != 32 or any(len(n) != 1 for n in nibbles):
            return None
        try:
            return ipaddress.IPv6Address(int("".join(reversed(nibbles)), 16))
        except ValueError:
            return None
    return None


def from_store(store) -> RecordsView:  # store: meshnet.store.Store
    """Build the view from the typed tables view (one decode of each table)."""
    # endpoints without a namespace are hosts' load-balancer addresses, not containers
    endpoints = {k: e for k, e in store.endpoints().items() if e.netns}
    return RecordsView.build(store.networks(), endpoints, store.services(),
                             store.all("health").values())
