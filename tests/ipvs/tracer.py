"""A packet tracer over the iptables subset meshnet renders.

``trace(chains, pkt)`` walks a packet through a built-in chain, following jumps and
treating ``-m statistic --mode random`` as a branch, and returns the distribution of
outcomes: {Outcome: probability}. It checks behaviour (where do packets go, with what
odds, is the source rewritten) rather than rule text. Unknown matches raise, so a rule
the tracer does not understand cannot silently pass.
"""

from __future__ import annotations

import ipaddress
import shlex
from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Packet:
    src: str
    dst: str
    proto: str = "tcp"
    dport: int = 80
    iif: str = "br0"
    oif: str = ""
    mark: int = 0
    local: frozenset[str] = frozenset()  #: addresses local to the namespace
    ctstate: str = "NEW"


@dataclass(frozen=True)
class Outcome:
    verdict: str  #: DNAT, SNAT, MASQUERADE, ACCEPT (fell through), REJECT, ...
    to: str = ""  #: DNAT/SNAT address
    mark: int = 0


@dataclass
class Recent:
    """-m recent tables: name -> set of source addresses."""

    tables: dict[str, set[str]] = field(default_factory=dict)


def _in(addr: str, net: str) -> bool:
    return ipaddress.ip_address(addr) in ipaddress.ip_network(net, strict=False)


def _iface(pattern: str, name: str) -> bool:
    return name.startswith(pattern[:-1]) if pattern.endswith("+") else name == pattern


def trace(chains: dict[str, list[str]], pkt: Packet, chain: str = "PREROUTING",
          recent: Recent | None = None) -> dict[Outcome, float]:
    recent = recent or Recent()
    out: dict[Outcome, float] = {}
    for p, o, _sets, _pkt in _walk(chains, chain, pkt, 1.0, recent, 0):
        out[o] = out.get(o, 0.0) + p
    return out


def trace_paths(chains, pkt, chain="PREROUTING", recent=None):
    """Like trace, but each path with its -m recent --set side effects."""
    return [(p, o, s) for p, o, s, _ in _walk(chains, chain, pkt, 1.0, recent or Recent(), 0)]


def _walk(chains, chain, pkt, p, recent, depth):
    """Yields (probability, Outcome or None for RETURN, recent-sets, packet) per path."""
    if depth > 20:
        raise RuntimeError("jump loop")
    yield from _rules(chains, chain, chains[chain], pkt, p, recent, depth, ())


def _rules(chains, chain, rules, pkt, p, recent, depth, sets):
    if not rules:
        builtin = chain.isupper() and not chain.startswith("MESHNET-")
        yield p, (Outcome("ACCEPT", mark=pkt.mark) if builtin else None), sets, pkt
        return
    rule, rest = rules[0], rules[1:]
    prob, pkt2, target, targs, new_sets = _match(rule, pkt, recent)
    sets2 = sets + new_sets
    if prob < 1.0:  # the statistic branch not taken
        yield from _rules(chains, chain, rest, pkt, p * (1 - prob), recent, depth, sets)
    if prob == 0.0:
        return
    p *= prob
    if target is None:
        yield from _rules(chains, chain, rest, pkt2, p, recent, depth, sets2)
    elif target == "RETURN":
        yield p, None, sets2, pkt2
    elif target == "MARK":
        val, _, mask = targs["--set-xmark"].partition("/")
        v, m = int(val, 16), int(mask or "0xffffffff", 16)
        pkt3 = replace(pkt2, mark=(pkt2.mark & ~m) ^ v)
        yield from _rules(chains, chain, rest, pkt3, p, recent, depth, sets2)
    elif target in ("DNAT", "SNAT"):
        to = targs.get("--to-destination") or targs.get("--to-source")
        yield p, Outcome(target, to, pkt2.mark), sets2, pkt2
    elif target in ("MASQUERADE", "ACCEPT", "REJECT", "DROP"):
        yield p, Outcome(target, "", pkt2.mark), sets2, pkt2
    elif target in chains:
        for q, o, s, back in _walk(chains, target, pkt2, p, recent, depth + 1):
            if o is None:  # returned: continue after the jump (with the marks it set)
                yield from _rules(chains, chain, rest, back, q, recent, depth, sets2 + s)
            else:
                yield q, o, sets2 + s, back
    else:
        raise ValueError(f"unknown target {target!r} in {rule!r}")


def _match(rule, pkt, recent):
    """-> (probability the rule matches, packet, target, target args, recent sets)."""
    toks = shlex.split(rule)
    prob = 1.0
    sets: tuple[tuple[str, str], ...] = ()
    i = 0
    target = None
    targs: dict[str, str] = {}
    while i < len(toks):
        t = toks[i]
        neg = t == "!"
        if neg:
            i += 1
            t = toks[i]
        arg = toks[i + 1] if i + 1 < len(toks) else ""
        ok = True
        if t == "-s":
            ok = _in(pkt.src, arg)
        elif t == "-d":
            ok = _in(pkt.dst, arg)
        elif t == "-p":
            ok = pkt.proto == arg
        elif t == "-i":
            ok = _iface(arg, pkt.iif)
        elif t == "-o":
            ok = _iface(arg, pkt.oif)
        elif t == "-m":
            if arg not in ("tcp", "udp", "comment", "statistic", "recent", "addrtype", "mark",
                           "conntrack"):
                raise ValueError(f"unknown match {arg}")
            i += 2
            continue
        elif t == "--dport":
            ok = pkt.dport == int(arg)
        elif t == "--comment":
            pass
        elif t == "--mode":
            assert arg == "random"
        elif t == "--probability":
            prob *= float(arg)
        elif t == "--dst-type":
            ok = arg == "LOCAL" and pkt.dst in pkt.local
        elif t == "--mark":
            v, _, m = arg.partition("/")
            ok = pkt.mark & int(m or "0xffffffff", 16) == int(v, 16)
        elif t == "--ctstate":
            ok = pkt.ctstate in arg.split(",")
        elif t == "--name":
            name = arg
            if "--rcheck" in toks:
                ok = pkt.src in recent.tables.get(name, set())
            if "--set" in toks:
                sets = sets + ((name, pkt.src),)
        elif t in ("--rcheck", "--set", "--reap", "--rsource"):
            i += 1
            continue
        elif t in ("--seconds", "--mask"):
            pass
        elif t == "-j":
            target = arg
            rest = toks[i + 2:]
            targs = dict(zip(rest[::2], rest[1::2], strict=False))
            break
        else:
            raise ValueError(f"unknown option {t} in {rule!r}")
        if neg:
            ok = not ok
        if not ok:
            return 0.0, pkt, None, {}, ()
        i += 2
    return prob, pkt, target, targs, sets
