"""The IPVS backend: fwmark virtual services over generic netlink (pyroute2), as Docker.

Per sandbox (only when the kernel has ip_vs; ``ipvs_available()`` says why not):

* mangle ``PREROUTING -> MESHNET-FWMARK``: ``-d VIP -p P --dport N -j MARK --set-xmark
  M/0xffffffff``, one firewall mark ``M`` per virtual service (IPVS matches the whole mark);
* one IPVS service per mark: scheduler ``rr``, or ``sh`` (source hashing) for
  ``--affinity client-ip``; real servers = healthy task IP:port, masquerade forwarding,
  weight 1;
* nat ``POSTROUTING -> MESHNET-POSTROUTING``: ``-m ipvs --ipvs -j SNAT --to-source LB``
  (Docker's SNAT to the LB endpoint address, so replies return through IPVS).

The host namespace's published-port rules are the iptables backend's (DNAT to VIP:target,
into the sandbox), so both backends share :mod:`meshnet.ipvs.rules`' host part.

Marks are ``fwmark_base + h`` where ``h`` is a hash of the service key probed past
collisions in key order, so they are stable across agent restarts (Docker's counter is
not). Requests are built by pure functions (``service_request``/``dest_request``) that the
unit tests encode and decode without a kernel.
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from meshnet.ipvs.iptables import Observed, Restore
from meshnet.ipvs.iptables import plan as ipt_plan
from meshnet.ipvs.rules import (
    HOST,
    JUMP_COMMENT,
    POSTROUTING,
    Jump,
    Ruleset,
    _digested,
    render_host,
)
from meshnet.ipvs.state import LbConfig, LbState, SandboxLb, VirtualService
from meshnet.nlread import genl_family

FWMARK_CHAIN = "MESHNET-FWMARK"
IP_VS_CONN_F_MASQ = 0
IP_VS_SVC_F_PERSISTENT = 0x1


def ipvs_available() -> tuple[bool, str]:
    """(True, "") if this kernel has IPVS, else (False, why)."""
    if not os.path.exists("/proc/net/ip_vs"):
        why = "/proc/net/ip_vs missing (no ip_vs module in this kernel)"
    else:
        why = ""
    try:
        genl_family("IPVS")
    except OSError as exc:  # ENOENT when the genl family is absent
        return False, (why + "; " if why else "") + f"generic netlink family IPVS: {exc}"
    if why:
        return False, why
    return True, ""


# --- desired IPVS state (pure) --------------------------------------------------------


@dataclass(frozen=True)
class IpvsService:
    fwmark: int
    scheduler: str  #: rr or sh
    dests: tuple[tuple[str, int], ...]  #: (ip, port), sorted
    key: str = field(default="", compare=False)


def fwmarks(keys: Iterable[str], cfg: LbConfig) -> dict[str, int]:
    """Stable marks: a hash of each key, probed linearly past marks already taken."""
    out: dict[str, int] = {}
    taken: set[int] = set()
    for k in sorted(set(keys)):
        h = int.from_bytes(hashlib.sha256(k.encode()).digest()[:4], "big") % cfg.fwmark_count
        for i in range(cfg.fwmark_count):
            m = cfg.fwmark_base + (h + i) % cfg.fwmark_count
            if m not in taken:
                taken.add(m)
                out[k] = m
                break
    return out


def desired_ipvs(state: LbState, cfg: LbConfig) -> dict[str, dict[int, IpvsService]]:
    """{sandbox ns: {fwmark: IpvsService}} for services with at least one backend."""
    out: dict[str, dict[int, IpvsService]] = {}
    for sb in state.sandboxes:
        vss = [vs for vs in sb.services if vs.backends and vs.vip.version == 4]
        marks = fwmarks((vs.key for vs in vss), cfg)
        out[sb.ns] = {
            marks[vs.key]: IpvsService(marks[vs.key], "sh" if vs.affinity else "rr",
                                       tuple(sorted((str(b.ip), b.port) for b in vs.backends)),
                                       vs.key)
            for vs in vss}
    return out


def render_marks(sb: SandboxLb, services: Mapping[int, IpvsService],
                 by_key: Mapping[str, VirtualService]) -> Ruleset:
    """The iptables half of the IPVS backend in one sandbox."""
    if not services:
        return Ruleset()
    rules = []
    for mark, svc in sorted(services.items()):
        vs = by_key[svc.key]
        rules.append(f"-d {vs.vip}/32 -p {vs.protocol} -m {vs.protocol} --dport {vs.port} "
                     f"-j MARK --set-xmark 0x{mark:x}/0xffffffff")
    snat = f"-j SNAT --to-source {sb.lb_ip}" if sb.lb_ip is not None else "-j MASQUERADE"
    chains = {c.key: c for c in (_digested("mangle", FWMARK_CHAIN, rules),
                                 _digested("nat", POSTROUTING, [f"-m ipvs --ipvs {snat}"]))}
    jumps = frozenset({Jump("mangle", "PREROUTING", f"{JUMP_COMMENT} -j {FWMARK_CHAIN}"),
                       Jump("nat", "POSTROUTING", f"{JUMP_COMMENT} -j {POSTROUTING}")})
    return Ruleset(chains, jumps)


# --- plan (pure) ----------------------------------------------------------------------


@dataclass(frozen=True)
class AddService:
    ns: str
    service: IpvsService


@dataclass(frozen=True)
class DelService:
    ns: str
    fwmark: int


@dataclass(frozen=True)
class SetScheduler:
    ns: str
    service: IpvsService


@dataclass(frozen=True)
class AddDest:
    ns: str
    fwmark: int
    ip: str
    port: int


@dataclass(frozen=True)
class DelDest:
    ns: str
    fwmark: int
    ip: str
    port: int


IpvsOp = AddService | DelService | SetScheduler | AddDest | DelDest


def plan_ipvs(want: Mapping[str, Mapping[int, IpvsService]],
              have: Mapping[str, Mapping[int, IpvsService]]) -> list[IpvsOp]:
    """Services first, then destinations; removals last (new backends before old go)."""
    ops: list[IpvsOp] = []
    dels: list[IpvsOp] = []
    for ns in sorted(set(want) | set(have)):
        w, h = want.get(ns, {}), have.get(ns, {})
        for mark, svc in sorted(w.items()):
            cur = h.get(mark)
            if cur is None:
                ops.append(AddService(ns, svc))
                ops.extend(AddDest(ns, mark, ip, port) for ip, port in svc.dests)
                continue
            if cur.scheduler != svc.scheduler:
                ops.append(SetScheduler(ns, svc))
            ops.extend(AddDest(ns, mark, ip, p) for ip, p in svc.dests if (ip, p) not in
                       cur.dests)
            dels.extend(DelDest(ns, mark, ip, p) for ip, p in cur.dests if (ip, p) not in
                        svc.dests)
        dels.extend(DelService(ns, mark) for mark in sorted(h) if mark not in w)
    return ops + dels


# --- netlink requests (pure: build, never send) ----------------------------------------


def _service_nla(fwmark: int, scheduler: str | None = None):
    from pyroute2.ipvs import IPVSService

    kw = dict(fwmark=fwmark, af=socket.AF_INET)
    if scheduler is not None:  # a full entry: the kernel wants netmask/flags/timeout too
        kw["sched_name"] = scheduler
        kw["netmask"] = "255.255.255.255"
    svc = IPVSService(**kw)
    if scheduler is None:
        for k in ("sched_name", "timeout", "flags"):
            svc.pop(k, None)
    return svc


def service_request(cmd: str, fwmark: int, scheduler: str = "rr"):
    """An ``ipvsmsg`` for IPVS_CMD_{NEW,SET,DEL}_SERVICE on a fwmark service."""
    from pyroute2.netlink.generic import ipvs as g

    cmds = {"add": g.IPVS_CMD_NEW_SERVICE, "set": g.IPVS_CMD_SET_SERVICE,
            "del": g.IPVS_CMD_DEL_SERVICE}
    msg = g.ipvsmsg()
    msg["cmd"] = cmds[cmd]
    msg["version"] = g.GENL_VERSION
    svc = _service_nla(fwmark, scheduler)
    msg["attrs"] = [("IPVS_CMD_ATTR_SERVICE",
                     svc.dump_key() if cmd == "del" else svc.dump_nla())]
    return msg


def dest_request(cmd: str, fwmark: int, ip: str, port: int, weight: int = 1):
    """An ``ipvsmsg`` for IPVS_CMD_{NEW,SET,DEL}_DEST (masquerade forwarding)."""
    from pyroute2.ipvs import IPVSDest
    from pyroute2.netlink.generic import ipvs as g

    cmds = {"add": g.IPVS_CMD_NEW_DEST, "set": g.IPVS_CMD_SET_DEST,
            "del": g.IPVS_CMD_DEL_DEST}
    msg = g.ipvsmsg()
    msg["cmd"] = cmds[cmd]
    msg["version"] = g.GENL_VERSION
    dest = IPVSDest(addr=ip, port=port, weight=weight, fwd_method=IP_VS_CONN_F_MASQ)
    msg["attrs"] = [("IPVS_CMD_ATTR_SERVICE", _service_nla(fwmark).dump_key()),
                    ("IPVS_CMD_ATTR_DEST", dest.dump_nla())]
    return msg


# --- the backend ----------------------------------------------------------------------


@dataclass
class IpvsObserved:
    services: dict[str, dict[int, IpvsService]] = field(default_factory=dict)
    rules: Observed = field(default_factory=Observed)


@dataclass(frozen=True)
class IpvsPlan:
    ipvs: tuple[IpvsOp, ...]
    rules: tuple[Restore, ...]

    def __bool__(self) -> bool:
        return bool(self.ipvs or self.rules)


class IpvsBackend:
    """Same contract as IptablesBackend: observe(), plan(want, have, full), apply(plan,
    have), cleanup(). ``runner`` runs iptables (for marks/SNAT and the host's published
    ports); ``sockets(ns)`` opens an IPVS netlink socket inside ``ns``."""

    name = "ipvs"

    def __init__(self, runner, config: LbConfig | None = None, sockets=None) -> None:
        from meshnet.ipvs.iptables import IptablesBackend

        self.runner = runner
        self.config = config or LbConfig()
        self.sockets = sockets or _ipvs_socket
        self.ipt = IptablesBackend(runner, self.config)  # marks, SNAT, published ports

    def render(self, want: LbState) -> tuple[dict[str, dict[int, IpvsService]],
                                             dict[str, Ruleset]]:
        services = desired_ipvs(want, self.config)
        rules = {HOST: render_host(want.host.published, self.config)}
        for sb in want.sandboxes:
            rules[sb.ns] = render_marks(sb, services.get(sb.ns, {}),
                                        {vs.key: vs for vs in sb.services})
        return services, rules

    def plan(self, want: LbState, have: IpvsObserved, full: bool = False) -> IpvsPlan:
        services, rules = self.render(want)
        return IpvsPlan(tuple(plan_ipvs(services, have.services)),
                        tuple(ipt_plan(rules, have.rules, full)))

    def observe(self) -> IpvsObserved:
        out = IpvsObserved(rules=self.ipt.observe())
        for ns in self.runner.namespaces():
            if ns == HOST:
                continue
            with self.sockets(ns) as s:
                out.services[ns] = _dump(s)
        return out

    def apply(self, p: IpvsPlan, have: IpvsObserved) -> tuple[IpvsObserved, list[str]]:
        for op in p.ipvs:
            with self.sockets(op.ns) as s:
                _send(s, op)
        rules, skipped = self.ipt.apply(p.rules, have.rules)
        return IpvsObserved(self.observe().services, rules), skipped

    def cleanup(self) -> list[str]:
        """Remove our IPVS services (marks in our range) and every owned chain/jump."""
        removed = []
        lo, hi = self.config.fwmark_base, self.config.fwmark_base + self.config.fwmark_count
        try:
            have = self.observe().services
        except Exception:  # no ip_vs: nothing of ours can exist
            have = {}
        for ns, svcs in have.items():
            for mark in svcs:
                if lo <= mark < hi:
                    with self.sockets(ns) as s:
                        _send(s, DelService(ns, mark))
                    removed.append(f"{ns}:fwmark {mark}")
        return removed + self.ipt.cleanup()


def _ipvs_socket(ns: str):
    """An IPVS genl socket inside ``ns`` (see netns.open_in)."""
    from pyroute2.ipvs import IPVS

    from meshnet import netns

    return netns.open_in(ns, IPVS)


def _dump(sock) -> dict[int, IpvsService]:  # pragma: no cover - needs ip_vs
    from pyroute2.ipvs import IPVSDest, IPVSService

    out = {}
    for msg in sock.service("dump"):
        svc = IPVSService.from_message(msg)
        mark = svc.get("fwmark") or 0
        if not mark:
            continue
        dests = tuple(sorted((str(d["addr"]), int(d["port"])) for d in
                             (IPVSDest.from_message(m) for m in
                              sock.dest("dump", service=_service_nla(mark)))))
        out[mark] = IpvsService(mark, svc.get("sched_name", ""), dests)
    return out


def _send(sock, op: IpvsOp) -> None:  # pragma: no cover - needs ip_vs
    from pyroute2.ipvs import IPVSDest

    match op:
        case AddService(service=s):
            sock.service("add", service=_service_nla(s.fwmark, s.scheduler))
        case SetScheduler(service=s):
            sock.service("set", service=_service_nla(s.fwmark, s.scheduler))
        case DelService(fwmark=m):
            sock.service("del", service=_service_nla(m))
        case AddDest(fwmark=m, ip=ip, port=port):
            sock.dest("add", service=_service_nla(m),
                      dest=IPVSDest(addr=ip, port=port, weight=1, fwd_method=IP_VS_CONN_F_MASQ))
        case DelDest(fwmark=m, ip=ip, port=port):
            sock.dest("del", service=_service_nla(m), dest=IPVSDest(addr=ip, port=port))
