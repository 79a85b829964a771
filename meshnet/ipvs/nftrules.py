"""Render an :class:`LbState`'s sandboxes to nftables, and plan changes (pure).

``--lb nftables`` keeps what changes with backends out of the rules. Per sandbox::

  table ip meshnet_lb
    set hairpin    T . T                                 one element per local task
    chain postrouting  (nat, srcnat)   ip saddr . ip daddr @hairpin masquerade
                                       marked (ingress) traffic: clear the bit, SNAT to
                                       the LB address (masquerade without one)
  table ip meshnet_lb_K     (K = 0..f: the services whose name starts in bucket K)
    map services   VIP . proto . port : goto svc_H       one element per virtual service
    chain prerouting   (nat, dstnat)   ip daddr . meta l4proto . th dport vmap @services
    chain svc_H    [iifname "ing0" meta mark set mark | MASQ]   (routing-mesh networks)
                   meta l4proto P dnat ip addr . port to numgen random mod 65536 map @be_H
    map be_H       0-6553 : T1 . port, 6554-13106 : T2 . port, ...   (interval map)

A service's chain and map are made once, when the service appears; its rules never
mention a backend. Choosing backend i of n is a range of a random 16-bit number
(``numgen``; ``jhash ip saddr`` for ``--affinity client-ip``: a client keeps its backend
while the set of backends stays the same, as IPVS's ``sh``), and a backend change replaces
the elements of one small map. That is the point of this backend: nf_tables revalidates
the whole table on every commit that adds a rule with a verdict or NAT (what makes an
iptables change grow with the number of services), but element changes of a map without
verdicts are not validated. Element changes are sent over netlink
(:mod:`meshnet.ipvs.nftnl`); everything else (tables, chains, rules, the verdict maps) by
``nft -f``, which is rare: a service added or removed.

Why 16 tables: nf_tables finds a set by name by walking the list of its table's sets
(and a table by walking the list of tables), one cache miss or two per entry. With 1,000
services in one table, that walk was most of what a change cost more than at 100; with
16 buckets it is ~1/16 of it. The price: a new connection's first packet looks up one
verdict map per non-empty bucket (16 hash lookups at most), still far below the
iptables backend's linear dispatch chain.

A service without a healthy backend keeps its (empty) map: the lookup fails, nothing is
DNATed, and the sandbox, which owns the VIP, refuses the connection at once (as the
iptables backend). Every chain's last rule carries ``comment "mn:<digest>"`` of the
chain's content; an agent restart reads the tables back (``nft -j list ruleset``) and
adopts what matches. The host namespace's rules (published ports) stay iptables: they
must pass a FORWARD chain whose policy Docker sets to DROP, which only an iptables rule
can (an accept in another table does not override a drop).
"""

from __future__ import annotations

import ipaddress
import json
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from meshnet.ipvs.nftnl import Elem, SetChange, addr_pair, chunked, ranges_elems
from meshnet.ipvs.state import (
    INGRESS_SANDBOX_IFNAME,
    LbConfig,
    LbState,
    SandboxLb,
    VirtualService,
    short_hash,
)

TABLE = "meshnet_lb"  #: the main table; the buckets are TABLE_0 .. TABLE_f
BUCKETS = 16
_B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
SPAN = 1 << 16  #: backends split [0, SPAN) of a random (or source-hash) number
DIGEST_TAG = "mn:"
PATCH_FRACTION = 8  #: patch the last render when fewer than 1/8 of the services changed
HASH_SEED = 0x6D6E  #: jhash seed for --affinity client-ip (fixed: the same on every host)

Range = tuple[int, int, str, int]  #: lo, hi, backend ip, backend port


def bucket(name: str) -> int:
    """The bucket table of a service (its name is base32 of a hash: uniform)."""
    return _B32.find(name[0]) % BUCKETS


def table_of(k: int) -> str:
    return f"{TABLE}_{k:x}"


def split(n: int) -> list[tuple[int, int]]:
    """[0, SPAN) in n adjacent ranges whose sizes differ by at most one."""
    return [(i * SPAN // n, (i + 1) * SPAN // n - 1) for i in range(n)]


@dataclass(frozen=True)
class NftService:
    """One virtual service in a sandbox table. Observed ones may be partial: ``digest``
    None = no chain, ``ranges`` None = no map, ``vip`` None = no dispatch element."""

    name: str  #: H in svc_H / be_H
    vip: str | None
    proto: str
    port: int
    digest: str | None
    ranges: tuple[Range, ...] | None
    #: the chain's rules (wanted only; ``digest`` stands for them in comparisons)
    rules: tuple[str, ...] = field(default=(), compare=False)

    @property
    def chain(self) -> str:
        return f"svc_{self.name}"

    @property
    def map(self) -> str:
        return f"be_{self.name}"

    @property
    def table(self) -> str:
        return table_of(bucket(self.name))


@dataclass(frozen=True)
class NftSandbox:
    """The tables of one sandbox (wanted, or read back)."""

    digest: str | None  #: of the main table's chain; None: missing (observed)
    services: Mapping[str, NftService]
    hairpin: frozenset[str] = frozenset()
    #: bucket tables there (observed: complete ones) or needed (wanted: non-empty)
    buckets: frozenset[int] = frozenset()
    #: every table of this backend there (observed) or wanted
    tables: frozenset[str] = frozenset()
    #: the postrouting rules (wanted only; ``digest`` stands for them)
    postrouting: tuple[str, ...] = field(default=(), compare=False)
    #: (bucket, dispatch key) of dispatch elements with no service (observed)
    stray: tuple[tuple[int, tuple[str, str, int]], ...] = ()
    #: a hint, not part of the value: equal to ``base()`` but for the services named in
    #: ``touched`` (and perhaps the base chains and hairpin set, always compared)
    base: weakref.ref | None = field(default=None, compare=False, repr=False)
    touched: frozenset[str] = field(default=frozenset(), compare=False, repr=False)


def _comment(body: list[str], table: str, name: str) -> tuple[tuple[str, ...], str]:
    digest = short_hash(TABLE, table, name, *body)
    return (*body[:-1], f'{body[-1]} comment "{DIGEST_TAG}{digest}"'), digest


def service_name(ns: str, vs: VirtualService) -> str:
    return short_hash(ns, vs.key)


def render_service(ns: str, vs: VirtualService, ingress: bool, cfg: LbConfig) -> NftService:
    name = service_name(ns, vs)
    body = []
    if ingress:
        body.append(f'iifname "{INGRESS_SANDBOX_IFNAME}" meta mark set meta mark | '
                    f"0x{cfg.masq_mark:x}")
    pick = (f"jhash ip saddr mod {SPAN} seed 0x{HASH_SEED:x}" if vs.affinity
            else f"numgen random mod {SPAN}")
    body.append(f"meta l4proto {vs.protocol} dnat ip addr . port to {pick} map @be_{name}")
    rules, digest = _comment(body, "svc", name)
    bs = vs.backends
    ranges = tuple((lo, hi, str(b.ip), b.port) for (lo, hi), b in zip(split(len(bs)), bs,
                                                                         strict=True))
    return NftService(name, str(vs.vip), vs.protocol, vs.port, digest, ranges, rules)


def _base(sb: SandboxLb, cfg: LbConfig) -> tuple[tuple[str, ...], str]:
    m = cfg.masq_mark
    snat = f"snat ip to {sb.lb_ip}" if sb.lb_ip is not None else "masquerade"
    post = ["ip saddr . ip daddr @hairpin masquerade",
            f"meta mark & 0x{m:x} == 0x{m:x} meta mark set meta mark & 0x{~m & 0xFFFFFFFF:x} "
            + snat]
    d = short_hash(TABLE, *post)
    return (*post[:-1], f'{post[-1]} comment "{DIGEST_TAG}{d}"'), d


#: every bucket table's dispatch rule (the same in all of them)
DISPATCH = "ip daddr . meta l4proto . th dport vmap @services"
DISPATCH_DIGEST = short_hash(TABLE, "bucket", DISPATCH)


class Buckets(Mapping[str, NftService]):
    """Services by name, kept per bucket table (:func:`bucket`). Immutable; a
    :meth:`patched` copy shares all but the buckets it changes, so a one-service change
    copies ~n/16 entries, not n (copying a dict touches every entry's object: cache misses
    that grow with the number of services)."""

    WIDTH = BUCKETS

    def __init__(self, items: Mapping[str, NftService] | None = None,
                 _buckets: tuple[dict[str, NftService], ...] | None = None,
                 _size: int = 0) -> None:
        if _buckets is None:
            bs: list[dict[str, NftService]] = [{} for _ in range(self.WIDTH)]
            for k, v in (items or {}).items():
                bs[bucket(k)][k] = v
            self._b = tuple(bs)
            self._n = sum(len(b) for b in bs)
        else:
            self._b, self._n = _buckets, _size

    def __getitem__(self, key: str) -> NftService:
        return self._b[bucket(key)][key]

    def get(self, key, default=None):  # type: ignore[override] - the fast path
        return self._b[bucket(key)].get(key, default)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self._b[bucket(key)]

    def __iter__(self):
        for b in self._b:
            yield from b

    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        return f"Buckets({dict(self)!r})"

    def patched(self, drop: Iterable[str], put: Iterable[NftService]) -> Buckets:
        bs = list(self._b)
        copied: set[int] = set()
        n = self._n

        def own(key: str) -> dict[str, NftService]:  # this copy's bucket of key
            i = bucket(key)
            if i not in copied:
                bs[i] = dict(bs[i])
                copied.add(i)
            return bs[i]

        for k in drop:
            if k in bs[bucket(k)]:
                del own(k)[k]
                n -= 1
        for v in put:
            b = own(v.name)
            n += v.name not in b
            b[v.name] = v
        return Buckets(_buckets=tuple(bs), _size=n)

    def used(self) -> frozenset[int]:
        """The buckets that hold a service."""
        return frozenset(i for i, b in enumerate(self._b) if b)


class NftMemo:
    """The last render of one sandbox: services by the identity of their source."""

    def __init__(self) -> None:
        self.sb: SandboxLb | None = None
        self.out: NftSandbox | None = None
        self.by_id: dict[int, tuple[VirtualService, NftService]] = {}
        self.pins: dict[str, int] = {}  #: local task address -> how many services use it


def render_sandbox(sb: SandboxLb, cfg: LbConfig, memo: NftMemo | None = None
                   ) -> NftSandbox | None:
    """None when the sandbox has no IPv4 service (its table is removed). With ``memo``
    and a change hint (``sb.delta``) against the last render, only the changed
    services are rendered and the result says which (``touched``)."""
    memo = memo if memo is not None else NftMemo()
    if memo.sb is sb:
        return memo.out
    prev, out = memo.sb, memo.out
    changed = sb.delta.of(prev) if sb.delta is not None and prev is not None else None
    if changed is None and prev is not None and len(prev.services) == len(sb.services):
        # no hint: find the changed services by identity (unchanged ones are handed over
        # as the same objects), and patch when they are few
        changed = tuple(i for i, (a, b) in enumerate(zip(prev.services, sb.services,
                                                          strict=True)) if a is not b)
        if len(changed) * PATCH_FRACTION >= len(sb.services):
            changed = None
    if changed is not None and out is not None and prev is not None \
            and (prev.ingress, prev.lb_ip) == (sb.ingress, sb.lb_ip):
        drop: list[str] = []
        put: list[NftService] = []
        touched = set()
        hairpin = out.hairpin
        local_changed = False
        for i in changed:
            old, vs = prev.services[i], sb.services[i]
            hit = memo.by_id.pop(id(old), None)
            if hit is not None and hit[0] is old:
                drop.append(hit[1].name)
                touched.add(hit[1].name)
            if any(b.local for b in old.backends) or any(b.local for b in vs.backends):
                ips = {str(b.ip) for b in (*old.backends, *vs.backends) if b.local}
                was = {ip for ip in ips if ip in memo.pins}
                _count(memo.pins, old, -1)
                _count(memo.pins, vs, 1)
                local_changed = local_changed or was != {ip for ip in ips if ip in memo.pins}
            if vs.vip.version == 4:
                made = render_service(sb.ns, vs, sb.ingress, cfg)
                put.append(made)
                memo.by_id[id(vs)] = (vs, made)
                touched.add(made.name)
        if local_changed:
            hairpin = frozenset(ip for ip, n in memo.pins.items() if n > 0)
        base = out.services if isinstance(out.services, Buckets) else Buckets(out.services)
        services = base.patched(drop, put)
        buckets = services.used()
        result: NftSandbox | None = NftSandbox(
            out.digest, services, hairpin, buckets,
            out.tables if buckets == out.buckets else _tables(buckets), out.postrouting,
            base=weakref.ref(out), touched=frozenset(touched)) if services else None
    else:
        by_id = {}
        services = {}
        if prev is not None and prev.ingress != sb.ingress:
            memo.by_id = {}  # every service chain changes with it
        for vs in sb.services:
            if vs.vip.version != 4:
                continue
            hit = memo.by_id.get(id(vs))
            made = hit[1] if hit is not None and hit[0] is vs else render_service(
                sb.ns, vs, sb.ingress, cfg)
            services[made.name] = made
            by_id[id(vs)] = (vs, made)
        memo.by_id = by_id
        memo.pins = {}
        for vs in sb.services:
            _count(memo.pins, vs, 1)
        post, digest = _base(sb, cfg)
        hairpin = frozenset(ip for ip, n in memo.pins.items() if n > 0)
        made_all = Buckets(services)
        used = made_all.used()
        result = NftSandbox(digest, made_all, hairpin, used, _tables(used), post) \
            if services else None
    memo.sb, memo.out = sb, result
    return result


def _tables(buckets: frozenset[int]) -> frozenset[str]:
    return frozenset({TABLE} | {table_of(k) for k in buckets})


def _count(pins: dict[str, int], vs: VirtualService, step: int) -> None:
    """Local tasks of IPv4 services need hairpin masquerade (a task can pick itself):
    count the services each local address serves."""
    if vs.vip.version != 4:
        return
    for b in vs.backends:
        if b.local:
            ip = str(b.ip)
            n = pins.get(ip, 0) + step
            if n <= 0:
                pins.pop(ip, None)
            else:
                pins[ip] = n


def render(state: LbState, cfg: LbConfig, memo: dict[str, NftMemo] | None = None
           ) -> dict[str, NftSandbox | None]:
    """{sandbox namespace: table or None}. ``memo`` (owned by the caller) keeps one
    :class:`NftMemo` per sandbox of the state."""
    used: dict[str, NftMemo] = {}
    out = {}
    for sb in state.sandboxes:
        m = (memo.get(sb.ns) if memo is not None else None) or NftMemo()
        used[sb.ns] = m
        out[sb.ns] = render_sandbox(sb, cfg, m)
    if memo is not None:
        memo.clear()
        memo.update(used)
    return out


# --- reading the tables back ------------------------------------------------------------


def ours(table: str) -> bool:
    """A table this backend owns: the main one or a bucket."""
    return table == TABLE or (table.startswith(f"{TABLE}_") and len(table) == len(TABLE) + 2
                              and table[-1] in "0123456789abcdef")


def parse_ruleset(text: str) -> NftSandbox | None:
    """``nft -j list ruleset`` -> what this backend has there (None: none of its tables).
    Whatever does not look like ours is left out (so it is rewritten); other tables are
    ignored."""
    objs = [o for o in json.loads(text).get("nftables", []) if isinstance(o, dict)]
    tables = {o["table"]["name"] for o in objs if "table" in o
              and o["table"].get("family", "ip") == "ip" and ours(o["table"]["name"])}
    if not tables:
        return None
    chains: set[tuple[str, str]] = set()
    digests: dict[tuple[str, str], str] = {}
    maps: dict[str, tuple[Range, ...]] = {}
    dispatch: dict[tuple[str, str, int], tuple[str, str]] = {}  #: key -> (table, target)
    sets: set[tuple[str, str]] = set()
    hairpin: set[str] = set()
    for o in objs:
        kind = next((k for k in ("chain", "rule", "map", "set") if k in o), None)
        if kind is None or o[kind].get("table") not in tables \
                or o[kind].get("family", "ip") != "ip":
            continue
        body, table = o[kind], o[kind]["table"]
        if kind == "chain":
            chains.add((table, body["name"]))
        elif kind == "rule":
            c = str(body.get("comment", ""))
            if c.startswith(DIGEST_TAG):
                digests[(table, body["chain"])] = c[len(DIGEST_TAG):]
        else:
            name = body["name"]
            sets.add((table, name))
            elems = body.get("elem", [])
            if name == "services" and table != TABLE:
                for key, verdict in elems:
                    vip, proto, port = key["concat"]
                    target = (verdict.get("goto") or {}).get("target", "")
                    dispatch[(vip, proto, int(port))] = (table, target)
            elif name == "hairpin" and table == TABLE:
                hairpin |= {e["concat"][0] for e in elems
                            if isinstance(e, dict) and len(set(e["concat"])) == 1}
            elif name.startswith("be_") and table == table_of(bucket(name[3:])):
                maps[name[3:]] = tuple(sorted(_range(e) for e in elems))
    names = {c[4:] for t, c in chains if c.startswith("svc_") and t == table_of(bucket(c[4:]))}
    names |= set(maps)
    by_target = {t: k for k, t in dispatch.items()}
    services = {}
    for n in names:
        where = (table_of(bucket(n)), f"svc_{n}")
        key = by_target.get(where)
        services[n] = NftService(
            n, key[0] if key else None, key[1] if key else "",
            key[2] if key else 0, digests.get(where, "") if where in chains else None,
            maps.get(n))
    def proper(t: str, c: str) -> bool:  # a goto to a service's chain in its own table
        return c.startswith("svc_") and c[4:] in services and t == table_of(bucket(c[4:]))
    stray = tuple(sorted((int(t[-1], 16), k) for k, (t, c) in dispatch.items()
                         if not proper(t, c)))
    buckets = frozenset(
        k for k in range(BUCKETS) if (table_of(k), "services") in sets
        and digests.get((table_of(k), "prerouting")) == DISPATCH_DIGEST)
    main = TABLE in tables and (TABLE, "hairpin") in sets
    digest = digests.get((TABLE, "postrouting")) if main else None
    return NftSandbox(digest, Buckets(services), frozenset(hairpin), buckets,
                      frozenset(tables), stray=stray)


def _range(e) -> Range:
    key, data = e
    if isinstance(key, dict) and "range" in key:
        lo, hi = key["range"]
    else:
        lo = hi = key
    ip, port = data["concat"]
    return (int(lo), int(hi), str(ipaddress.IPv4Address(ip)), int(port))


# --- planning ---------------------------------------------------------------------------


@dataclass(frozen=True)
class NftOp:
    """One sandbox's change: an ``nft -f`` script (structure; may be empty) run first,
    then element changes in one netlink transaction."""

    ns: str
    script: str
    elements: tuple[SetChange, ...] = ()


def _map_decl(s: NftService) -> str:
    return (f"add map ip {s.table} {s.map} {{ typeof numgen random mod {SPAN} : "
            f"ip daddr . {s.proto} dport; flags interval; }}")


def plan_sandbox(ns: str, want: NftSandbox | None, have: NftSandbox | None,
                 full: bool = False) -> NftOp | None:
    """When ``have`` is a render this backend applied (the kernel holds exactly it) and
    ``want`` was patched from it (``want.base``), only the touched services are compared:
    one backend change looks at one service, not 1,000."""
    hb = have.buckets if have is not None else frozenset()
    if want is None:
        if have is None or not have.tables:
            return None
        return NftOp(ns, "".join(f"delete table ip {t}\n" for t in sorted(have.tables)))
    hs = have.services if have is not None else {}
    base = want.base() if want.base is not None else None
    if not full and base is not None and base is have:
        names: Iterable[str] = sorted(want.touched)
    else:
        names = sorted(set(want.services) | set(hs))
    head: list[str] = []
    if have is None or full or have.digest != want.digest:
        head += _main(want)
    new_buckets = sorted(want.buckets if full else want.buckets - hb)
    for k in new_buckets:
        head += _bucket(k)
    gone = set(have.tables - want.tables) if have is not None else set()
    undispatch: list[str] = [f"delete element ip {table_of(k)} services {{ {_key(key)} }}"
                             for k, key in (have.stray if have is not None else ())
                             if table_of(k) not in gone]
    make: list[str] = []
    dispatch: list[str] = []
    drop: list[str] = []
    elements: list[SetChange] = []
    for name in names:
        w, h = want.services.get(name), hs.get(name)
        t = table_of(bucket(name))
        if t in gone:  # the whole bucket table goes: nothing in it to undo one by one
            continue
        if h is not None and h.vip is not None and (w is None or (h.vip, h.proto, h.port) != (
                w.vip, w.proto, w.port)):
            undispatch.append(f"delete element ip {t} services "
                              f"{{ {_key((h.vip, h.proto, h.port))} }}")
        if w is None:
            if h is not None and h.digest is not None:
                drop += [f"flush chain ip {t} {h.chain}", f"delete chain ip {t} {h.chain}"]
            if h is not None and h.ranges is not None:
                drop.append(f"delete map ip {t} {h.map}")
            continue
        if h is None or h.ranges is None:
            make.append(_map_decl(w))
        if full or h is None or h.digest != w.digest:
            make += [f"add chain ip {t} {w.chain}", f"flush chain ip {t} {w.chain}"]
            make += [f"add rule ip {t} {w.chain} {r}" for r in w.rules]
        if h is None or h.vip is None or (h.vip, h.proto, h.port) != (w.vip, w.proto, w.port):
            dispatch.append(f"add element ip {t} services "
                            f"{{ {_key((w.vip, w.proto, w.port))} : goto {w.chain} }}")
        old = h.ranges if h is not None and h.ranges is not None else ()
        if old != w.ranges:
            elements.append(SetChange(w.map, ranges_elems(old), ranges_elems(w.ranges or ()),
                                      table=t))
    h_pin = have.hairpin if have is not None else frozenset()
    if h_pin != want.hairpin:
        elements.append(SetChange(
            "hairpin",
            chunked([Elem(addr_pair(a, a)).encode() for a in sorted(h_pin - want.hairpin)]),
            chunked([Elem(addr_pair(a, a)).encode() for a in sorted(want.hairpin - h_pin)]),
            table=TABLE))
    body = head + undispatch + make + dispatch + drop + [
        f"delete table ip {t}" for t in sorted(gone)]
    script = "\n".join(body) + "\n" if body else ""
    if not script and not elements:
        return None
    return NftOp(ns, script, tuple(elements))


def _key(k: tuple[str | None, str, int]) -> str:
    return f"{k[0]} . {k[1]} . {k[2]}"


def _main(t: NftSandbox) -> list[str]:
    out = [f"add table ip {TABLE}",
           f"add set ip {TABLE} hairpin {{ type ipv4_addr . ipv4_addr; }}",
           f"add chain ip {TABLE} postrouting {{ type nat hook postrouting priority srcnat; "
           "policy accept; }",
           f"flush chain ip {TABLE} postrouting"]
    return out + [f"add rule ip {TABLE} postrouting {r}" for r in t.postrouting]


def _bucket(k: int) -> list[str]:
    t = table_of(k)
    return [f"add table ip {t}",
            f"add map ip {t} services {{ type ipv4_addr . inet_proto . inet_service : "
            "verdict; }",
            f"add chain ip {t} prerouting {{ type nat hook prerouting priority dstnat; "
            "policy accept; }",
            f"flush chain ip {t} prerouting",
            f'add rule ip {t} prerouting {DISPATCH} comment "{DIGEST_TAG}{DISPATCH_DIGEST}"']
