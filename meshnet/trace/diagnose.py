"""From what was expected and what was seen to hops and a verdict (pure).

Hops, in packet order: ``resolution``, ``load-balancing`` (VIP and published ports),
``source`` (leaving SRC) or ``mesh`` (entering the host on a published port),
``bridge`` (a local backend) or ``encapsulation`` + ``decapsulation`` (a remote one),
``delivery`` and ``reply``. The verdict names the first hop that failed and the likely
cause, looked up in the facts read from the kernel before the probe (FDB and
neighbour entries, MTU) and from gossip (hosts down).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from meshnet.trace.model import Seen
from meshnet.trace.path import Backend, Expected
from meshnet.vxlan.state import VXLAN_PORT


@dataclass(frozen=True)
class Resolution:
    """The query SRC sent to 127.0.0.11 and what came back. ``skipped``: DST was an
    address (or a published port), nothing to resolve."""

    name: str
    server: str = "127.0.0.11"
    rcode: str = ""  #: "NOERROR", "NXDOMAIN", "SERVFAIL", "TIMEOUT"...
    answers: tuple[str, ...] = ()
    expected: tuple[str, ...] = ()  #: what the tables say the name is
    skipped: str = ""

    @property
    def ok(self) -> bool:
        if self.skipped:
            return True
        if self.rcode != "NOERROR" or not self.answers:
            return False
        return not self.expected or bool(set(self.answers) & set(self.expected))


@dataclass(frozen=True)
class Facts:
    """Kernel state of the origin sandbox, read just before the probe."""

    sandbox_exists: bool = True
    fdb: Mapping[str, str] = field(default_factory=dict)  #: MAC -> dst VTEP on the VXLAN dev
    neigh: Mapping[str, str] = field(default_factory=dict)  #: IP -> MAC (permanent)
    mtu: int = 0  #: the overlay MTU SRC sends with (its interface)
    probe_len: int = 0  #: IP length of the probe


@dataclass(frozen=True)
class Probe:
    """What the probe's socket saw: "connected", "refused", "timeout", "answered"
    (UDP), "no answer" (UDP) or an error."""

    outcome: str
    marker: int
    chosen: str = ""  #: backend address from conntrack ('' = no entry found)
    conntrack: str = ""  #: the conntrack line, for people


@dataclass(frozen=True)
class Hop:
    name: str
    expected: str
    observed: str
    ok: bool | None  #: None: not applicable or not observable
    where: str = ""
    cause: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "expected": self.expected, "observed": self.observed,
                "ok": self.ok, "where": self.where, "cause": self.cause}


@dataclass(frozen=True)
class Verdict:
    ok: bool
    hop: str  #: the first broken hop ('' when delivered)
    cause: str

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "hop": self.hop, "cause": self.cause}


def verdict_of(hops: Iterable[Hop]) -> Verdict:
    for h in hops:
        if h.ok is False:
            return Verdict(False, h.name, h.cause or f"{h.name} failed")
    return Verdict(True, "", "delivered, and the reply came back")


def resolution_hop(res: Resolution) -> Hop:
    if res.skipped:
        return Hop("resolution", "-", res.skipped, True)
    expected = ", ".join(res.expected) or "an answer"
    if res.rcode == "NOERROR" and res.answers:
        observed = f"{res.name} -> {', '.join(res.answers)}"
    else:
        observed = f"{res.name}: {res.rcode or 'no answer'}"
    cause = ""
    if not res.ok:
        if res.rcode == "NXDOMAIN":
            cause = f"{res.name} does not exist (NXDOMAIN from {res.server})"
        elif res.rcode == "NOERROR" and res.answers:
            cause = f"{res.server} answered {', '.join(res.answers)}, the tables say {expected}"
        else:
            cause = f"resolver {res.server} answered {res.rcode or 'nothing'}"
    return Hop("resolution", f"{res.name} -> {expected} (query to {res.server} in SRC)",
               observed, res.ok, where=f"SRC -> {res.server}", cause=cause)


def _by(seen: Iterable[Seen], host: str, point: str) -> Seen | None:
    return next((s for s in seen if s.host == host and s.point == point), None)


def chosen_backend(exp: Expected, probe: Probe, seen: list[Seen]) -> Backend | None:
    """The backend the flow went to: conntrack first, else the inner destination the
    origin sandbox saw, else the host whose task saw the probe, else the only one."""
    for ip in (probe.chosen, *(s.inner_dst for s in seen
                               if s.host == exp.node and s.point == "sandbox")):
        if ip and exp.backend(ip):
            return exp.backend(ip)
    for s in seen:
        if s.point == "task" and s.probe and exp.backend(s.inner_dst):
            return exp.backend(s.inner_dst)
    return exp.backends[0] if len(exp.backends) == 1 else None


def diagnose(exp: Expected, res: Resolution, probe: Probe, seen: list[Seen], facts: Facts,
             reported: Mapping[str, str], down: Iterable[str] = ()) -> list[Hop]:
    """``reported``: host -> "done" / "armed" / "" (no answer) for each host asked to
    capture. Returns the hop list (the verdict is ``verdict_of(hops)``)."""
    down = set(down)
    hops = [resolution_hop(res)]
    b = chosen_backend(exp, probe, seen)
    if exp.kind in ("vip", "ingress"):
        hops.append(_lb_hop(exp, probe, b))
    hops.append(_entry_hop(exp, seen, b))
    if b is None:
        return hops
    if exp.lan:
        hops += _lan_hops(exp, b, seen, reported, down)
    elif b.local:
        hops.append(_bridge_hop(exp, b, seen))
    else:
        hops.append(_encap_hop(exp, b, seen, facts, down))
        hops.append(_decap_hop(exp, b, seen, reported, down))
    hops.append(_delivery_hop(exp, b, seen, reported))
    hops.append(_reply_hop(exp, b, seen, probe))
    return hops


def _lb_hop(exp: Expected, probe: Probe, b: Backend | None) -> Hop:
    front = f"{exp.dst}:{exp.target}/{exp.proto}"
    names = ", ".join(f"{x.ip} ({x.name} on {x.host})" for x in exp.backends) or "none"
    expected = f"{front} -> one of: {names}"
    where = f"{exp.node} {exp.sandbox} (conntrack)"
    if not exp.exposed:
        return Hop("load-balancing", f"{front} -> a backend", "no rule for this port", False,
                   where, f"missing rule: service {exp.service} does not expose "
                          f"{exp.target}/{exp.proto}, so nothing balances it (the VIP "
                          "itself answers)")
    if not exp.backends:
        bad = f"; unusable: {', '.join(exp.unhealthy)}" if exp.unhealthy else ""
        return Hop("load-balancing", expected, "no backend to choose", False, where,
                   f"no healthy backend for service {exp.service}{bad}")
    if probe.chosen and exp.backend(probe.chosen) is None:
        return Hop("load-balancing", expected, f"conntrack: {front} -> {probe.chosen}", False,
                   where, f"the flow went to {probe.chosen}, which is not a healthy "
                          "backend (stale rule)")
    if b is None:
        return Hop("load-balancing", expected, "no conntrack entry for the probe", None, where)
    how = "conntrack" if probe.chosen else "capture"
    return Hop("load-balancing", expected,
               f"{how}: {front} -> {b.ip}:{b.port} ({b.name} on {b.host})", True, where)


def _entry_hop(exp: Expected, seen: list[Seen], b: Backend | None) -> Hop:
    if exp.kind == "ingress":
        s = _by(seen, exp.node, "ingress")
        to = f"{b.name} on {b.host} (VTEP {b.vtep})" if b else "a backend"
        expected = (f"{exp.node}: :{exp.published}/{exp.proto} DNAT -> {exp.dst}:{exp.target}"
                    f" over mn-ing -> {exp.sandbox}, SNAT to {exp.client or '?'}, to {to}")
        if not exp.client:
            return Hop("mesh", expected, "no LB address on this host", False,
                       f"{exp.node}", f"{exp.node} has no load-balancer address on "
                                      f"{exp.network}: only local tasks can answer")
        if s is None or s.error:
            return Hop("mesh", expected, s.error if s else "not captured", None,
                       s.iface if s else "")
        ok = s.probe > 0
        return Hop("mesh", expected, s.first_probe or "probe never entered the ingress link",
                   ok, f"{exp.node} {s.iface}",
                   "" if ok else "missing rule: the host did not DNAT the published port "
                                 "into the sandbox (MESHNET-INGRESS / ingress route)")
    s = _by(seen, exp.node, "src")
    expected = f"{exp.client}:* -> {exp.dst}:{exp.port}/{exp.proto} out of SRC"
    if s is None or s.error:
        return Hop("source", expected, s.error if s else "not captured", None)
    ok = s.probe > 0
    return Hop("source", expected, s.first_probe or "nothing left SRC", ok,
               f"{exp.node} {s.iface}",
               "" if ok else "the probe never left SRC: missing route or interface down")


def _lan_hops(exp: Expected, b: Backend, seen: list[Seen], reported: Mapping[str, str],
              down: set[str]) -> list[Hop]:
    """macvlan: the probe leaves on the origin's LAN parent and arrives on the
    destination's (a local destination is a sibling on the same parent: no LAN hop)."""
    if b.local:
        s = _by(seen, b.host, "task")
        ok = bool(s and s.probe)
        return [Hop("macvlan", f"{exp.lan} (bridge mode) -> {b.name} on the same parent",
                    "delivered by the parent's macvlan bridge" if ok else "not delivered",
                    ok, f"{exp.node} {exp.lan}",
                    "" if ok else "the parent's macvlan mode keeps siblings apart "
                                  "(private or vepa without a hairpin switch)")]
    out, into = _by(seen, exp.node, "lan"), _by(seen, b.host, "lan")
    leave = Hop("lan out", f"{exp.client} ({exp.src_mac}) -> {b.ip} ({b.mac}) on the LAN "
                f"through {exp.lan}", (out.first_probe if out else "") or "not seen",
                bool(out and out.probe), f"{exp.node} {exp.lan}",
                "" if out and out.probe else f"the probe never left {exp.node}'s {exp.lan}: "
                                             "macvlan port missing or parent down")
    if not reported.get(b.host):
        arrive = Hop("lan in", f"{b.ip} arrives on {b.host}'s LAN parent", "no report",
                     None if b.host not in down else False, b.host,
                     f"{b.host} did not answer the capture request")
    else:
        ok = bool(into and into.probe)
        arrive = Hop("lan in", f"{b.ip} arrives on {b.host}'s LAN parent",
                     (into.first_probe if into else "") or f"nothing arrived at {b.host}",
                     ok, f"{b.host} {into.iface if into else 'LAN'}",
                     "" if ok else f"lost on the LAN between {exp.node} and {b.host} "
                                   "(switch port security, VLAN, or promiscuous mode off)")
    return [leave, arrive]


def _bridge_hop(exp: Expected, b: Backend, seen: list[Seen]) -> Hop:
    s = _by(seen, b.host, "task")
    expected = f"{exp.sandbox} br0 -> {b.bridge_port} ({b.name}, local: no VXLAN)"
    ok = bool(s and s.probe)
    return Hop("bridge", expected, "bridged to the local task" if ok else "not bridged",
               ok, f"{exp.node} {exp.sandbox}",
               "" if ok else f"missing bridge port {b.bridge_port} or bridge FDB for {b.mac}")


def _outer_text(o: tuple[str, str, int, int] | None) -> str:
    return f"{o[0]} -> {o[1]} udp/{o[2]} vni {o[3]}" if o else ""


def _encap_hop(exp: Expected, b: Backend, seen: list[Seen], facts: Facts,
               down: set[str]) -> Hop:
    want = (exp.local_vtep, b.vtep, VXLAN_PORT, exp.vni)
    expected = (f"{_outer_text(want)} (inner {exp.client} -> {b.ip}:{b.port}, "
                f"dst MAC {b.mac})")
    sb = _by(seen, exp.node, "sandbox")
    ul = _by(seen, exp.node, "underlay")
    where = f"{exp.node} {exp.vxlan_dev} -> underlay"
    if ul is not None and ul.outer is not None:
        if ul.outer == want:
            return Hop("encapsulation", expected, _outer_text(ul.outer), True,
                       f"{exp.node} {ul.iface}")
        got = _outer_text(ul.outer)
        cause = (f"wrong encapsulation: FDB entry for {b.mac} sends to {ul.outer[1]}, "
                 f"expected {b.vtep}" if ul.outer[1] != b.vtep else
                 f"wrong encapsulation: got {got}")
        return Hop("encapsulation", expected, got, False, where, cause)
    inner_seen = bool(sb and sb.probe)
    observed = ("inner frame reached " + exp.vxlan_dev + ", nothing left on the underlay"
                if inner_seen else f"nothing reached {exp.vxlan_dev}")
    if ul is None or (ul.error and not inner_seen):
        observed = ul.error if ul else "underlay not captured"
    return Hop("encapsulation", expected, observed, False, where,
               _encap_cause(exp, b, facts, inner_seen, down))


def _encap_cause(exp: Expected, b: Backend, facts: Facts, inner_seen: bool,
                 down: set[str]) -> str:
    if not facts.sandbox_exists:
        return f"sandbox {exp.sandbox} does not exist on {exp.node}"
    fdb = facts.fdb.get(b.mac)
    if fdb is None:
        return (f"missing FDB entry: {b.mac} dst {b.vtep} on {exp.vxlan_dev} in "
                f"{exp.sandbox} (bridge fdb shows none for {b.name})")
    if fdb != b.vtep:
        return f"stale FDB entry: {b.mac} dst {fdb}, expected {b.vtep} ({b.host})"
    if b.ip not in facts.neigh:
        return (f"missing neighbour entry: {b.ip} lladdr {b.mac} on {exp.vxlan_dev} in "
                f"{exp.sandbox}")
    if facts.neigh[b.ip] != b.mac:
        return f"wrong neighbour entry: {b.ip} -> {facts.neigh[b.ip]}, expected {b.mac}"
    if facts.mtu and facts.probe_len > facts.mtu:
        return f"MTU: the probe is {facts.probe_len} bytes, the overlay MTU {facts.mtu}"
    if b.host in down or b.host_down:
        return f"peer host down: {b.host} is not alive in gossip"
    if not b.vtep:
        return f"no VTEP known for {b.host} (vteps table)"
    if not inner_seen:
        return ("missing rule: the probe was not forwarded into the overlay (DNAT / "
                "bridge netfilter in the sandbox)")
    return f"dropped by {exp.vxlan_dev} although FDB and neighbour entries are in place"


def _decap_hop(exp: Expected, b: Backend, seen: list[Seen], reported: Mapping[str, str],
               down: set[str]) -> Hop:
    expected = f"{b.host}: {_outer_text((exp.local_vtep, b.vtep, VXLAN_PORT, exp.vni))} " \
               f"-> {exp.vxlan_dev} -> br0"
    ul, sb = _by(seen, b.host, "underlay"), _by(seen, b.host, "sandbox")
    if not reported.get(b.host):
        cause = (f"peer host down: {b.host} is not alive in gossip" if b.host in down
                 else f"{b.host} did not answer the capture request")
        return Hop("decapsulation", expected, "no report", None if b.host not in down
                   else False, b.host, cause)
    if sb is not None and sb.probe:
        outer = _outer_text(ul.outer) if ul and ul.outer else "?"
        return Hop("decapsulation", expected, f"{outer} -> {sb.first_probe}", True,
                   f"{b.host} {sb.iface}")
    if ul is None or not ul.probe:
        return Hop("decapsulation", expected, f"nothing arrived at {b.host}", False,
                   f"{b.host} underlay",
                   f"lost on the underlay between {exp.local_vtep} and {b.vtep}")
    return Hop("decapsulation", expected, f"{_outer_text(ul.outer)} arrived, not decapsulated",
               False, f"{b.host} {exp.vxlan_dev}",
               f"no VXLAN device for VNI {exp.vni} on {b.host} (sandbox missing?)")


def _delivery_hop(exp: Expected, b: Backend, seen: list[Seen],
                  reported: Mapping[str, str]) -> Hop:
    s = _by(seen, b.host, "task")
    expected = f"{b.name} {b.ip}:{b.port}/{exp.proto} on {b.host}"
    if s is None or s.error or (not b.local and not reported.get(b.host)):
        return Hop("delivery", expected, s.error if s and s.error else "not observed",
                   None, b.host)
    ok = s.probe > 0
    return Hop("delivery", expected, s.first_probe or "nothing arrived", ok,
               f"{b.host} {s.iface}",
               "" if ok else f"missing bridge port or FDB entry for {b.mac} on {b.host}")


def _reply_hop(exp: Expected, b: Backend, seen: list[Seen], probe: Probe) -> Hop:
    back = "ingress" if exp.kind == "ingress" else "src"
    s, t = _by(seen, exp.node, back), _by(seen, b.host, "task")
    expected = f"{b.ip}:{b.port} -> {exp.client}:{probe.marker}"
    if exp.kind == "vip":
        expected += f", seen by SRC as from {exp.dst}:{exp.port}"
    where = f"{exp.node} {s.iface}" if s else exp.node
    if s is not None and s.reply:
        refused = "R" in s.reply_flags
        ul = _by(seen, exp.node, "underlay")
        observed = s.first_reply
        if not b.local and ul is not None and ul.reply_outer:
            observed += f" (over {_outer_text(ul.reply_outer)})"
        return Hop("reply", expected, observed, not refused, where,
                   f"{b.name} refused the connection: nothing listens on "
                   f"{b.port}/{exp.proto}" if refused else "")
    if t is not None and t.reply:
        return Hop("reply", expected, f"{b.name} answered ({t.first_reply}); it never came "
                   "back", False, where, f"reply lost on the way back: check the FDB and "
                   f"neighbour entries for {exp.client} on {b.host}")
    if t is not None and t.probe:
        return Hop("reply", expected, f"{b.name} did not answer ({probe.outcome})", False,
                   f"{b.host} {t.iface}", f"nothing answers on {b.ip}:{b.port}/{exp.proto}")
    return Hop("reply", expected, f"no reply ({probe.outcome})", None, where)
