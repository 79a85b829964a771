"""Render an :class:`LbState`'s sandboxes to nftables, and plan changes (pure).

``--lb nftables`` keeps what changes with backends out of the rules. Per sandbox, one
table ``ip meshnet_lb``::

  map services   VIP . proto . port : goto svc_H       one element per virtual service
  set hairpin    T . T                                 one element per local task
  chain prerouting   (nat, dstnat)   ip daddr . meta l4proto . th dport vmap @services
  chain postrouting  (nat, srcnat)   ip saddr . ip daddr @hairpin masquerade
                                     marked (ingress) traffic: clear the bit, SNAT to the
                                     LB address (masquerade without one)
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
verdicts are not validated, so they cost the same at 100 and at 1,000 services. Element
changes are sent over netlink (:mod:`meshnet.ipvs.nftnl`); everything else (table, chains,
rules, the verdict map) by ``nft -f``, which is rare: a service added or removed.

A service without a healthy backend keeps its (empty) map: the lookup fails, nothing is
DNATed, and the sandbox, which owns the VIP, refuses the connection at once (as the
iptables backend). Every chain's last rule carries ``comment "mn:<digest>"`` of the
chain's content; an agent restart reads the table back (``nft -j list table``) and
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

from meshnet.ipvs.nftnl import Elem, SetChange, addr_pair, ranges_elems
from meshnet.ipvs.state import (
    INGRESS_SANDBOX_IFNAME,
    LbConfig,
    LbState,
    SandboxLb,
    VirtualService,
    short_hash,
)

TABLE = "meshnet_lb"
SPAN = 1 << 16  #: backends split [0, SPAN) of a random (or source-hash) number
DIGEST_TAG = "mn:"
PATCH_FRACTION = 8  #: patch the last render when fewer than 1/8 of the services changed
HASH_SEED = 0x6D6E  #: jhash seed for --affinity client-ip (fixed: the same on every host)

Range = tuple[int, int, str, int]  #: lo, hi, backend ip, backend port


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


@dataclass(frozen=True)
class NftSandbox:
    """The table of one sandbox (wanted, or read back)."""

    digest: str | None  #: of the base chains; None: missing (observed)
    services: Mapping[str, NftService]
    hairpin: frozenset[str] = frozenset()
    #: the base chains' rules (wanted only; ``digest`` stands for them)
    prerouting: tuple[str, ...] = field(default=(), compare=False)
    postrouting: tuple[str, ...] = field(default=(), compare=False)
    stray: tuple[tuple[str, str, int], ...] = ()  #: dispatch keys with no service (observed)
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


def _base(sb: SandboxLb, cfg: LbConfig) -> tuple[tuple[str, ...], tuple[str, ...], str]:
    m = cfg.masq_mark
    snat = f"snat ip to {sb.lb_ip}" if sb.lb_ip is not None else "masquerade"
    pre = ["ip daddr . meta l4proto . th dport vmap @services"]
    post = ["ip saddr . ip daddr @hairpin masquerade",
            f"meta mark & 0x{m:x} == 0x{m:x} meta mark set meta mark & 0x{~m & 0xFFFFFFFF:x} "
            + snat]
    d = short_hash(TABLE, *pre, *post)
    return (*pre[:-1], f'{pre[-1]} comment "{DIGEST_TAG}{d}"'), tuple(post), d


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
        services = dict(out.services)
        touched = set()
        hairpin = out.hairpin
        local_changed = False
        for i in changed:
            old, vs = prev.services[i], sb.services[i]
            hit = memo.by_id.pop(id(old), None)
            if hit is not None and hit[0] is old:
                services.pop(hit[1].name, None)
                touched.add(hit[1].name)
            if any(b.local for b in old.backends) or any(b.local for b in vs.backends):
                ips = {str(b.ip) for b in (*old.backends, *vs.backends) if b.local}
                was = {ip for ip in ips if ip in memo.pins}
                _count(memo.pins, old, -1)
                _count(memo.pins, vs, 1)
                local_changed = local_changed or was != {ip for ip in ips if ip in memo.pins}
            if vs.vip.version == 4:
                made = render_service(sb.ns, vs, sb.ingress, cfg)
                services[made.name] = made
                memo.by_id[id(vs)] = (vs, made)
                touched.add(made.name)
        if local_changed:
            hairpin = frozenset(ip for ip, n in memo.pins.items() if n > 0)
        result: NftSandbox | None = NftSandbox(
            out.digest, services, hairpin, out.prerouting, out.postrouting,
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
        pre, post, digest = _base(sb, cfg)
        hairpin = frozenset(ip for ip, n in memo.pins.items() if n > 0)
        result = NftSandbox(digest, services, hairpin, pre, post) if services else None
    memo.sb, memo.out = sb, result
    return result


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


# --- reading a table back --------------------------------------------------------------


def parse_table(text: str) -> NftSandbox | None:
    """``nft -j list table ip meshnet_lb`` -> what is there (None: no table). Whatever
    does not look like ours is left out (so it is rewritten)."""
    objs = [o for o in json.loads(text).get("nftables", []) if isinstance(o, dict)]
    if not any("table" in o for o in objs):
        return None
    chains: set[str] = set()
    digests: dict[str, str] = {}
    maps: dict[str, tuple[Range, ...]] = {}
    protos: dict[str, str] = {}
    dispatch: dict[tuple[str, str, int], str] = {}
    hairpin: set[str] = set()
    base_ok = {"prerouting": False, "postrouting": False, "services": False, "hairpin": False}
    for o in objs:
        if "chain" in o:
            chains.add(o["chain"]["name"])
            if o["chain"]["name"] in ("prerouting", "postrouting"):
                base_ok[o["chain"]["name"]] = True
        elif "rule" in o:
            r = o["rule"]
            c = str(r.get("comment", ""))
            if c.startswith(DIGEST_TAG):
                digests[r["chain"]] = c[len(DIGEST_TAG):]
        elif "map" in o or "set" in o:
            s = o.get("map") or o.get("set")
            name = s["name"]
            if name in base_ok:
                base_ok[name] = True
            elems = s.get("elem", [])
            if name == "services":
                for e in elems:
                    key, verdict = e
                    vip, proto, port = key["concat"]
                    target = (verdict.get("goto") or {}).get("target", "")
                    dispatch[(vip, proto, int(port))] = target
            elif name == "hairpin":
                hairpin |= {e["concat"][0] for e in elems
                            if isinstance(e, dict) and len(set(e["concat"])) == 1}
            elif name.startswith("be_"):
                maps[name[3:]] = tuple(sorted(_range(e) for e in elems))
                protos[name[3:]] = _map_proto(s)
    names = {c[4:] for c in chains if c.startswith("svc_")} | set(maps)
    by_target = {t: k for k, t in dispatch.items()}
    services = {}
    for n in names:
        key = by_target.get(f"svc_{n}")
        services[n] = NftService(
            n, key[0] if key else None, key[1] if key else protos.get(n, ""),
            key[2] if key else 0,
            digests.get(f"svc_{n}", "") if f"svc_{n}" in chains else None, maps.get(n))
    stray = tuple(sorted(k for k, t in dispatch.items()
                         if not t.startswith("svc_") or t[4:] not in services))
    base = digests.get("prerouting") if all(base_ok.values()) else None
    return NftSandbox(base, services, frozenset(hairpin), stray=stray)


def _range(e) -> Range:
    key, data = e
    if isinstance(key, dict) and "range" in key:
        lo, hi = key["range"]
    else:
        lo = hi = key
    ip, port = data["concat"]
    return (int(lo), int(hi), str(ipaddress.IPv4Address(ip)), int(port))


def _map_proto(s: dict) -> str:
    return "udp" if "udp" in json.dumps(s.get("map", "")) else "tcp"


# --- planning ---------------------------------------------------------------------------


@dataclass(frozen=True)
class NftOp:
    """One sandbox's change: an ``nft -f`` script (structure; may be empty) run first,
    then element changes in one netlink transaction."""

    ns: str
    script: str
    elements: tuple[SetChange, ...] = ()


def _map_decl(s: NftService) -> str:
    return (f"add map ip {TABLE} {s.map} {{ typeof numgen random mod {SPAN} : "
            f"ip daddr . {s.proto} dport; flags interval; }}")


def plan_sandbox(ns: str, want: NftSandbox | None, have: NftSandbox | None,
                 full: bool = False) -> NftOp | None:
    """When ``have`` is a render this backend applied (the kernel holds exactly it) and
    ``want`` was patched from it (``want.base``), only the touched services are compared:
    one backend change looks at one service, not 1,000."""
    if want is None:
        return NftOp(ns, f"delete table ip {TABLE}\n") if have is not None else None
    hs = have.services if have is not None else {}
    base = want.base() if want.base is not None else None
    if not full and base is not None and base is have:
        names: Iterable[str] = sorted(want.touched)
    else:
        names = sorted(set(want.services) | set(hs))
    head: list[str] = [f"add table ip {TABLE}"]
    if have is None or full or have.digest != want.digest:
        head += _skeleton(want)
    undispatch: list[str] = [f"delete element ip {TABLE} services {{ {_key(k)} }}"
                             for k in (have.stray if have is not None else ())]
    make: list[str] = []
    dispatch: list[str] = []
    drop: list[str] = []
    elements: list[SetChange] = []
    for name in names:
        w, h = want.services.get(name), hs.get(name)
        if h is not None and h.vip is not None and (w is None or (h.vip, h.proto, h.port) != (
                w.vip, w.proto, w.port)):
            undispatch.append(f"delete element ip {TABLE} services "
                              f"{{ {_key((h.vip, h.proto, h.port))} }}")
        if w is None:
            if h is not None and h.digest is not None:
                drop += [f"flush chain ip {TABLE} {h.chain}", f"delete chain ip {TABLE} {h.chain}"]
            if h is not None and h.ranges is not None:
                drop.append(f"delete map ip {TABLE} {h.map}")
            continue
        if h is None or h.ranges is None:
            make.append(_map_decl(w))
        if full or h is None or h.digest != w.digest:
            make += [f"add chain ip {TABLE} {w.chain}", f"flush chain ip {TABLE} {w.chain}"]
            make += [f"add rule ip {TABLE} {w.chain} {r}" for r in w.rules]
        if h is None or h.vip is None or (h.vip, h.proto, h.port) != (w.vip, w.proto, w.port):
            dispatch.append(f"add element ip {TABLE} services "
                            f"{{ {_key((w.vip, w.proto, w.port))} : goto {w.chain} }}")
        old = h.ranges if h is not None and h.ranges is not None else ()
        if old != w.ranges:
            elements.append(SetChange(w.map, ranges_elems(old), ranges_elems(w.ranges or ())))
    h_pin = have.hairpin if have is not None else frozenset()
    if h_pin != want.hairpin:
        elements.append(SetChange(
            "hairpin", tuple(Elem(addr_pair(a, a)).encode() for a in sorted(h_pin - want.hairpin)),
            tuple(Elem(addr_pair(a, a)).encode() for a in sorted(want.hairpin - h_pin))))
    body = undispatch + make + dispatch + drop
    if len(head) > 1 or body:
        script = "\n".join(head + body) + "\n"
    else:
        script = ""
    if not script and not elements:
        return None
    return NftOp(ns, script, tuple(elements))


def _key(k: tuple[str | None, str, int]) -> str:
    return f"{k[0]} . {k[1]} . {k[2]}"


def _skeleton(t: NftSandbox) -> list[str]:
    out = [f"add map ip {TABLE} services {{ type ipv4_addr . inet_proto . inet_service : "
           "verdict; }",
           f"add set ip {TABLE} hairpin {{ type ipv4_addr . ipv4_addr; }}"]
    for name, hook, prio, rules in (("prerouting", "prerouting", "dstnat", t.prerouting),
                                    ("postrouting", "postrouting", "srcnat", t.postrouting)):
        out += [f"add chain ip {TABLE} {name} {{ type nat hook {hook} priority {prio}; "
                "policy accept; }",
                f"flush chain ip {TABLE} {name}"]
        out += [f"add rule ip {TABLE} {name} {r}" for r in rules]
    return out
