"""Render an :class:`LbState` to iptables chains (pure), in ``iptables-save`` syntax.

One :class:`Ruleset` per namespace: each sandbox (``nat``) and the host namespace (key
``HOST``: ``nat`` and ``filter``), made of meshnet-owned chains and the jumps into them
from built-in chains (``H`` = 16 base32 characters of a hash)::

  sandbox  nat PREROUTING  -> MESHNET-SERVICES     one rule per VIP:port/proto with backends
                              MESHNET-SVC-H        per virtual service: mark ingress traffic
                                                   for SNAT, affinity checks, random DNAT
           nat POSTROUTING -> MESHNET-POSTROUTING  -> MESHNET-HAIRPIN (one rule per local
                                                   task), then SNAT marked packets to the
                                                   LB address (MASQUERADE without one)
                              MESHNET-MARK-MASQ    sets the masquerade bit
  host     nat PREROUTING, OUTPUT (dst-type LOCAL) -> MESHNET-INGRESS  per published port
                              MESHNET-PUB-H        local-only/host-mode port: random DNAT
                                                   to a local task (no SNAT)
           nat POSTROUTING -> MESHNET-POSTROUTING  masquerade localhost clients into
                                                   sandboxes (``-o mn-ing+``)
           filter INPUT    -> MESHNET-INPUT        refuse a published port nothing DNATed
           filter FORWARD  -> MESHNET-FORWARD      accept DNATed traffic to/from mn-ing+

Random choice is kube-proxy's: backend i of n is taken with probability 1/(n-i), so each
gets 1/n. Affinity is kube-proxy's ``-m recent`` (one recent table per service and
backend), checked before the random choice. Backends are DNATed inline from the service
chain (no per-backend chains): ~n+2 rules and one chain per service, because
iptables-nft-restore reads the table's chains on every run and its cost grows with them.

Every chain starts with a ``-m comment --comment mn:<digest>`` rule, the digest of its
content, read back by ``observe``: a sync rewrites only chains whose digest changed, and an
agent restart adopts unchanged chains as they are.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from meshnet.ipvs.state import (
    INGRESS_SANDBOX_IFNAME,
    Backend,
    LbConfig,
    LbState,
    PublishedRule,
    SandboxLb,
    VirtualService,
    short_hash,
)

HOST = ""  #: the namespace key of the host namespace
CHAIN_PREFIX = "MESHNET-"
#: chains other meshnet programmers own in the same namespaces (gateway bridge, DNS):
#: never observed, adopted or removed by the load balancer
FOREIGN_PREFIXES = ("MESHNET-GW-", "MESHNET-DNS-")


def owned_chain(name: str) -> bool:
    return name.startswith(CHAIN_PREFIX) and not name.startswith(FOREIGN_PREFIXES)
SERVICES = "MESHNET-SERVICES"
POSTROUTING = "MESHNET-POSTROUTING"
MARK_MASQ = "MESHNET-MARK-MASQ"
HAIRPIN = "MESHNET-HAIRPIN"
INGRESS = "MESHNET-INGRESS"
INPUT = "MESHNET-INPUT"
FORWARD = "MESHNET-FORWARD"
DIGEST_TAG = "mn:"
JUMP_COMMENT = "-m comment --comment meshnet"


@dataclass(frozen=True)
class Chain:
    table: str
    name: str
    rules: tuple[str, ...]  #: rule arguments, without ``-A NAME``
    digest: str = ""  #: "" for content-addressed (SEP) chains

    @property
    def key(self) -> tuple[str, str]:
        return (self.table, self.name)


@dataclass(frozen=True, order=True)
class Jump:
    """A rule in a built-in chain jumping to a meshnet chain (``spec`` ends in -j X)."""

    table: str
    chain: str
    spec: str

    @property
    def target(self) -> str:
        return self.spec.rsplit("-j ", 1)[1].split()[0]


@dataclass(frozen=True)
class Ruleset:
    chains: Mapping[tuple[str, str], Chain] = field(default_factory=dict)
    jumps: frozenset[Jump] = frozenset()
    #: a hint, not part of the value: this ruleset's chains equal ``base()``'s (the same
    #: objects) except those keyed in ``touched`` (changed, added or gone). See
    #: ``iptables.plan``. The base is held weakly.
    base: weakref.ref | None = field(default=None, compare=False, repr=False)
    touched: frozenset[tuple[str, str]] = field(default=frozenset(), compare=False,
                                                repr=False)


def _digested(table: str, name: str, body: list[str]) -> Chain:
    digest = short_hash(table, name, *body)
    return Chain(table, name, (f"-m comment --comment {DIGEST_TAG}{digest}", *body), digest)


def _net(ip) -> str:
    return f"{ip}/{32 if ip.version == 4 else 128}"


def _dport(proto: str, port: int) -> str:
    return f"-p {proto} -m {proto} --dport {port}"


def probability(i: int, n: int) -> str:
    """Rule text for 'take this one of the remaining n-i' (kube-proxy's format)."""
    return f"{1.0 / (n - i):0.10f}"


def _recent(scope: str, key: str, b: Backend) -> str:
    return f"mn-{short_hash(scope, key, b)}"


def _choice(table: str, name: str, head: list[str], scope: str, key: str, proto: str,
            backends: Iterable[Backend], affinity: bool, seconds: int) -> Chain:
    """The chain of one virtual service: pick a backend at random (or the client's previous
    one), DNAT to it inline. No per-backend chains: one chain and n+2 rules per service
    keep iptables-nft's cache (read on every restore) small."""
    bs = list(backends)
    body = list(head)
    rec = "--mask 255.255.255.255 --rsource"
    if affinity:
        body += [f"-p {proto} -m recent --rcheck --seconds {seconds} --reap "
                 f"--name {_recent(scope, key, b)} {rec} -j DNAT --to-destination {b}"
                 for b in bs]
    n = len(bs)
    for i, b in enumerate(bs):
        stat = (f"-m statistic --mode random --probability {probability(i, n)} "
                if i < n - 1 else "")
        setrec = f"-m recent --set --name {_recent(scope, key, b)} {rec} " if affinity else ""
        body.append(f"-p {proto} {stat}{setrec}-j DNAT --to-destination {b}")
    return _digested(table, name, body)


def svc_chain_name(scope: str, key: str) -> str:
    return f"{CHAIN_PREFIX}SVC-{short_hash(scope, key)}"


class SandboxMemo:
    """What rendering one sandbox last produced, owned by the caller between renders.

    Per virtual service: its chain, dispatch line and local task addresses, found by the
    object's identity first (the incremental planner hands unchanged services over as the
    same objects: no comparison at all), else by key and value. The dispatch, hairpin and
    whole-sandbox results are reused when their inputs are the same objects.
    """

    def __init__(self) -> None:
        self.by_id: dict[int, tuple] = {}  #: id(vs) -> (vs, chain, line, local ips)
        self.entries: list[tuple | None] = []  #: per service of ``sb``, in its order
        self.svc_chains: dict[tuple[str, str], Chain] = {}  #: the services' chains only
        self.sb: SandboxLb | None = None
        self.ruleset: Ruleset | None = None
        self.dispatch: list[str] = []
        self.dispatch_chain: Chain | None = None
        self.pins: list[tuple] = []  #: local task addresses (per service) of the hairpin chain
        self.pins_chain: Chain | None = None
        self.tail: tuple = ()  #: (lb_ip, chains that depend only on it)


PATCH_FRACTION = 8  #: patch the last render when fewer than 1/8 of the services changed


def _entry(vs: VirtualService, old: dict[int, tuple], by_key: Callable[[], dict],
           sb: SandboxLb, head: list[str], cfg: LbConfig,
           slot: tuple | None = None) -> tuple | None:
    """(vs, chain, dispatch line, local task addresses) of one service, or None when it
    has no rules (no backend: the VIP is local, so the sandbox refuses; or not IPv4).
    ``slot``: the last render's entry at the same position, tried before a by-key index
    of all of them is built."""
    if not vs.backends or vs.vip.version != 4:
        return None
    hit = old.get(id(vs))
    if hit is not None and hit[0] is vs:
        return hit
    if slot is not None and slot[0].key == vs.key:
        hit = slot
    else:
        hit = by_key().get(vs.key)  # not the same object as last time: match by value
    if hit is not None and hit[0] == vs:
        return (vs, *hit[1:])
    svc = svc_chain_name(sb.ns, vs.key)
    made = _choice("nat", svc, head, sb.ns, vs.key, vs.protocol, vs.backends,
                   vs.affinity, cfg.affinity_seconds)
    line = f"-d {_net(vs.vip)} {_dport(vs.protocol, vs.port)} -j {svc}"
    return (vs, made, line, tuple(b.ip for b in vs.backends if b.local))


def render_sandbox(sb: SandboxLb, cfg: LbConfig, memo: SandboxMemo | None = None) -> Ruleset:
    """``memo`` (optional, owned by the caller, one per sandbox namespace and config)
    caches each service's chain, so re-rendering 1,000 unchanged services costs a dict
    lookup each, and an unchanged sandbox (the same object) costs nothing. When only a
    few services changed (found by identity against the last render's services, in
    order), the last render is patched: the cost follows the change, not the total."""
    if memo is not None and memo.sb is sb and memo.ruleset is not None:
        return memo.ruleset
    old = memo.by_id if memo is not None else {}
    keyed: list[dict] = []

    def by_key() -> dict:
        if not keyed:
            keyed.append({h[0].key: h for h in old.values()})
        return keyed[0]

    head = [f"-i {INGRESS_SANDBOX_IFNAME} -j {MARK_MASQ}"] if sb.ingress else []
    prev = memo.sb.services if memo is not None and memo.sb is not None else None
    changed: list[int] | None = None
    if prev is not None and memo is not None and memo.ruleset is not None \
            and len(prev) == len(sb.services) == len(memo.entries):
        hinted = sb.delta.of(memo.sb) if sb.delta is not None else None
        changed = list(hinted) if hinted is not None else [
            i for i, (a, b) in enumerate(zip(prev, sb.services, strict=True)) if a is not b]
        if len(changed) * PATCH_FRACTION >= len(prev):
            changed = None  # many changed: render afresh
    touched: set[tuple[str, str]] | None = None
    same_lines = False  # the dispatch lines and local tasks are those of the last render
    if changed is not None and memo is not None:
        entries = list(memo.entries)
        by_id = dict(memo.by_id)
        svc_chains = dict(memo.svc_chains)
        touched = set()
        for i in changed:  # every removal first: a swapped pair must keep both chains
            by_id.pop(id(prev[i]), None)  # type: ignore[index]
            if entries[i] is not None:
                svc_chains.pop(entries[i][1].key, None)  # type: ignore[index]
                touched.add(entries[i][1].key)  # type: ignore[index]
        same_lines = True
        for i in changed:
            was = memo.entries[i]
            e = _entry(sb.services[i], old, by_key, sb, head, cfg, was)
            entries[i] = e
            if e is not None:
                by_id[id(e[0])] = e
                svc_chains[e[1].key] = e[1]
                touched.add(e[1].key)
            if e is None or was is None or e[2] != was[2] or e[3] != was[3]:
                same_lines = False
    else:
        entries = [_entry(vs, old, by_key, sb, head, cfg) for vs in sb.services]
        by_id = {id(e[0]): e for e in entries if e is not None}
        svc_chains = {e[1].key: e[1] for e in entries if e is not None}
    if same_lines and memo is not None:  # reuse the lists: compared by identity below
        dispatch, locals_ = memo.dispatch, memo.pins
    else:
        live = [e for e in entries if e is not None]
        dispatch = [e[2] for e in live]
        locals_ = [e[3] for e in live]
    base = memo.ruleset if memo is not None else None
    if memo is not None:
        memo.by_id, memo.entries, memo.svc_chains = by_id, entries, svc_chains
    if not dispatch:
        out = Ruleset()
        if memo is not None:  # what this render used (reused by identity next time)
            memo.dispatch, memo.pins = dispatch, locals_
    else:
        out = _sandbox_common(sb, cfg, dict(svc_chains), dispatch, locals_, memo)
        if touched is not None and base is not None and base.chains:
            out = Ruleset(out.chains, out.jumps, weakref.ref(base),
                          frozenset(touched) | _COMMON)
    if memo is not None:
        memo.sb, memo.ruleset = sb, out
    return out


def _sandbox_common(sb: SandboxLb, cfg: LbConfig, chains: dict[tuple[str, str], Chain],
                    dispatch: list[str], locals_: list[tuple],
                    memo: SandboxMemo | None) -> Ruleset:
    mark = f"0x{cfg.masq_mark:x}"
    if memo is not None and memo.dispatch_chain is not None and (
            memo.dispatch is dispatch or memo.dispatch == dispatch):
        services = memo.dispatch_chain
    else:
        services = _digested("nat", SERVICES, dispatch)
    # a local task that picked itself gets its packet back with its own address as the
    # source and would drop it: masquerade it to the bridge address (kube-proxy's hairpin
    # masquerade; after DNAT, source == destination). One rule per local task, in a chain
    # of its own that changes only when this host's tasks change.
    # (compared per service first: unchanged services hand over the same tuples)
    if memo is not None and memo.pins_chain is not None and (
            memo.pins is locals_ or memo.pins == locals_):
        pin_chain = memo.pins_chain
    else:
        hairpin = {ip for ips in locals_ for ip in ips}
        pin_chain = _digested("nat", HAIRPIN, [
            f"-s {_net(ip)} -d {_net(ip)} -j MASQUERADE"
            for ip in sorted(hairpin, key=lambda a: (a.version, int(a)))])
    if memo is not None and memo.tail and memo.tail[0] == sb.lb_ip:
        tail = memo.tail[1]
    else:
        snat = f"-j SNAT --to-source {sb.lb_ip}" if sb.lb_ip is not None else "-j MASQUERADE"
        tail = (_digested("nat", MARK_MASQ, [f"-j MARK --set-xmark {mark}/{mark}"]),
                _digested("nat", POSTROUTING, [f"-j {HAIRPIN}",
                                               f"-m mark ! --mark {mark}/{mark} -j RETURN",
                                               f"-j MARK --set-xmark {mark}/0x0", snat]))
    if memo is not None:
        memo.dispatch, memo.dispatch_chain = dispatch, services
        memo.pins, memo.pins_chain = locals_, pin_chain
        memo.tail = (sb.lb_ip, tail)
    for c in (services, tail[0], pin_chain, tail[1]):
        chains[c.key] = c
    return Ruleset(chains, _SANDBOX_JUMPS)


#: the sandbox chains that are not a service's (the patch path always compares them)
_COMMON = frozenset({("nat", SERVICES), ("nat", MARK_MASQ), ("nat", HAIRPIN),
                     ("nat", POSTROUTING)})

_SANDBOX_JUMPS = frozenset({Jump("nat", "PREROUTING", f"{JUMP_COMMENT} -j {SERVICES}"),
                            Jump("nat", "POSTROUTING", f"{JUMP_COMMENT} -j {POSTROUTING}")})


def render_host(published: Iterable[PublishedRule], cfg: LbConfig) -> Ruleset:
    chains: dict[tuple[str, str], Chain] = {}
    ingress: list[str] = []
    refuse: list[str] = []
    for p in published:
        match = _dport(p.protocol, p.published)
        reject = "tcp-reset" if p.protocol == "tcp" else "icmp-port-unreachable"
        refuse.append(f"{match} -j REJECT --reject-with {reject}")
        if p.kind == "mesh" and p.vip is not None and p.vip.version == 4:
            ingress.append(f"{match} -j DNAT --to-destination {p.vip}:{p.target}")
        elif p.kind == "local" and all(b.ip.version == 4 for b in p.backends):
            name = f"{CHAIN_PREFIX}PUB-{short_hash(HOST, p.key)}"
            c = _choice("nat", name, [], HOST, p.key, p.protocol, p.backends, p.affinity,
                        cfg.affinity_seconds)
            chains[c.key] = c
            ingress.append(f"{match} -j {name}")
    if not refuse:
        return Ruleset()
    for c in (_digested("nat", INGRESS, ingress),
              _digested("nat", POSTROUTING, ["-s 127.0.0.0/8 -o mn-ing+ -j MASQUERADE"]),
              _digested("filter", INPUT, refuse),
              _digested("filter", FORWARD, [
                  "-o mn-ing+ -m conntrack --ctstate DNAT -j ACCEPT",
                  "-i mn-ing+ -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"])):
        chains[c.key] = c
    local = f"-m addrtype --dst-type LOCAL {JUMP_COMMENT} -j {INGRESS}"
    jumps = frozenset({Jump("nat", "PREROUTING", local), Jump("nat", "OUTPUT", local),
                       Jump("nat", "POSTROUTING", f"{JUMP_COMMENT} -j {POSTROUTING}"),
                       Jump("filter", "INPUT", f"{JUMP_COMMENT} -j {INPUT}"),
                       Jump("filter", "FORWARD", f"{JUMP_COMMENT} -j {FORWARD}")})
    return Ruleset(chains, jumps)


def render(state: LbState, cfg: LbConfig | None = None,
           memo: dict[tuple[str, bool], SandboxMemo] | None = None) -> dict[str, Ruleset]:
    """{namespace: Ruleset}; the host namespace is ``HOST``. Empty rulesets are kept, so
    a namespace whose last service went away gets its chains removed. ``memo`` (owned by
    the caller, for one ``cfg``): a :class:`SandboxMemo` per (namespace, ingress); entries
    of sandboxes no longer in ``state`` are dropped."""
    cfg = cfg or LbConfig()
    if memo is None:
        out = {sb.ns: render_sandbox(sb, cfg) for sb in state.sandboxes}
    else:
        used = {}
        for sb in state.sandboxes:
            key = (sb.ns, sb.ingress)
            used[key] = memo.get(key) or SandboxMemo()
        memo.clear()
        memo.update(used)
        out = {sb.ns: render_sandbox(sb, cfg, used[(sb.ns, sb.ingress)])
               for sb in state.sandboxes}
    out[HOST] = render_host(state.host.published, cfg)
    return out

