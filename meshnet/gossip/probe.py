"""Failure detection half of the core: probes, indirect probes, relays, acks/nacks.

Design notes
------------
* ``Prober``, a collaborator of :class:`~meshnet.gossip.core.Memberlist`: it holds the
  probe and relay state and reaches its node only through ``ProbeNode`` (the send
  path, member table, awareness and the TCP fallback ping), so it imports no core.
* One probe at a time, as memberlist: ping the next node of the shuffled list (a
  suspect target also gets ``suspect{From: us}`` in the same compound so it can
  refute). At ``ProbeTimeout`` without an ack: ``indirectPingReq`` to
  ``IndirectChecks`` random alive peers (``Nack`` when their PMax >= 4) and, if the
  target's PMax >= 3, a TCP fallback ping. At the end of the (health-scaled) probe
  interval without any ack: health += missing nacks (or 1) and suspect the target.
  A TCP-only success logs "network may be misconfigured" and suspects nobody.
* The next probe starts ``ProbeInterval`` after the previous one started, or when it
  ended if that is later (memberlist's blocking probe under a ticker).
* ``probe_ring`` presets instead pick the target from the sorted live members by the
  round number (wall clock / interval, the driver's ``wall_offset``), start each probe
  at this node's own phase of the round (from a hash of its name, so a cluster's probes
  spread over the round) and skip ``score`` rounds after each (Lifeguard). With
  ``nack_confirms`` the relays that nacked become confirmations of the suspicion the
  failed probe starts (``Membership.confirm``).
* Relay role: ping the target with a fresh sequence number; forward its ack to the
  requester with the requester's sequence number, or send a nack after
  ``ProbeTimeout`` when asked to.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from meshnet.gossip import codec
from meshnet.gossip.awareness import Awareness
from meshnet.gossip.config import GossipConfig
from meshnet.gossip.events import Address
from meshnet.gossip.messages import (
    Ack,
    IndirectPing,
    Nack,
    Ping,
    Suspect,
    addr_from_wire,
    addr_to_wire,
    claimed_source,
)
from meshnet.gossip.state import Membership, NodeRecord, NodeState

INF = float("inf")


@dataclass
class ProbeState:
    target: NodeRecord
    incarnation: int
    seq: int
    start: float
    timeout_at: float
    deadline: float
    indirect_sent: bool = False
    expected_nacks: int = 0
    nacks: int = 0
    fallback_ok: bool = False
    relays: dict[Address, str] | None = None
    nacked_by: set[str] | None = None


@dataclass
class RelayState:
    requester: Address
    req_seq: int
    nack: bool
    deadline: float


class ProbeNode(Protocol):
    """What the prober uses of its node."""

    name: str
    port: int
    config: GossipConfig
    metrics: Counter[str]
    _ms: Membership
    _aw: Awareness
    _addr_wire: bytes
    wall_offset: float

    def _send_msg(self, addr: Address, msg: bytes, node: NodeRecord | None = None) -> None: ...

    def _raw_send(self, addr: Address, packet: bytes, node: NodeRecord | None) -> None: ...

    def _next_seq(self) -> int: ...

    def _other_ack(self, seq: int, now: float) -> bool: ...

    def _k_random(self, k: int, skip: Callable[[NodeRecord], bool]) -> list[NodeRecord]: ...

    def _drop(self, reason: str, src: Address | None = None,
              exc: Exception | None = None) -> None: ...

    def _log_once(self, key: str, fmt: str, *args: object) -> None: ...

    def _tcp_ping(self, addr: Address, ping: bytes, now: float, deadline: float,
                  seq: int) -> None: ...


class Prober:
    """One node's failure detector: the probe in flight, the relays it runs for peers."""

    def __init__(self, node: ProbeNode) -> None:
        self.n = node
        self._probe: ProbeState | None = None
        self._probe_index = 0
        self._probe_waits: dict[int, ProbeState] = {}
        self._relays: dict[int, RelayState] = {}
        self._next_probe = INF
        self._ring: tuple[int, list[NodeRecord], int] | None = None  # (version, sorted, own index)
        # where in each round this node probes (spreads a cluster's probes over the round)
        self._ring_phase = zlib.crc32(node.name.encode()) % 1000 / 1000 * 0.5

    def schedule(self, at: float) -> None:
        """The first probe (the node's start staggers it)."""
        self._next_probe = at

    def next_deadline(self) -> float:
        p = self._probe
        d = self._next_probe if p is None else (p.deadline if p.indirect_sent else p.timeout_at)
        if self._relays:
            d = min(d, min(r.deadline for r in self._relays.values()))
        return d

    def tcp_ping_answered(self, seq: int) -> None:
        """The TCP fallback ping of probe ``seq`` got its ack."""
        p = self._probe
        if p is not None and p.seq == seq:
            p.fallback_ok = True

    def on_ping(self, p: Ping, src: Address) -> None:
        if p.node and p.node != self.n.name:
            self.n._drop("ping_wrong_node", src)
            return
        dest = claimed_source(p.source_addr, p.source_port, src)
        node = self.n._ms.nodes.get(p.source_node) if p.source_node else None
        if node is not None and node.address != dest:
            node = None
        self.n._send_msg(dest, codec.encode(Ack(p.seq_no)), node)

    def on_indirect(self, ind: IndirectPing, src: Address, now: float) -> None:
        target = (addr_from_wire(ind.target), ind.port or self.n.port)
        requester = claimed_source(ind.source_addr, ind.source_port, src)
        seq = self.n._next_seq()
        self._relays[seq] = RelayState(requester, ind.seq_no, ind.nack, now + self.n.config.probe_timeout)
        ping = Ping(seq, ind.node, self.n._addr_wire, self.n.port, self.n.name)
        node = self.n._ms.nodes.get(ind.node)
        if node is not None and node.address != target:
            node = None
        self.n._send_msg(target, codec.encode(ping), node)

    def on_ack(self, ack: Ack, now: float) -> None:
        relay = self._relays.pop(ack.seq_no, None)
        if relay is not None:
            self.n._send_msg(relay.requester, codec.encode(Ack(relay.req_seq)))
            return
        p = self._probe_waits.pop(ack.seq_no, None)
        if p is None:
            if not self.n._other_ack(ack.seq_no, now):
                self.n.metrics["ack.unexpected"] += 1
            return
        if p is self._probe:
            self._probe_succeeded(p, now)

    def on_nack(self, nack: Nack, src: Address | None = None) -> None:
        p = self._probe_waits.get(nack.seq_no)
        if p is not None:
            p.nacks += 1
            name = p.relays.get(src) if p.relays and src is not None else None
            if name is not None and p.nacked_by is not None:
                p.nacked_by.add(name)

    def relay_tick(self, now: float) -> None:
        for seq, r in list(self._relays.items()):
            if now >= r.deadline:
                del self._relays[seq]
                if r.nack:
                    self.n._send_msg(r.requester, codec.encode(Nack(r.req_seq)))

    def probe_tick(self, now: float) -> None:
        p = self._probe
        if p is not None:
            if not p.indirect_sent and now >= p.timeout_at:
                self._indirect_probe(p, now)
            if now >= p.deadline:
                self._probe_failed(p, now)
        if self._probe is None and now >= self._next_probe:
            self._start_probe(now)

    def _round_length(self) -> float:
        return self.n.config.probe_interval * self.n._ms.interval_scale

    def _ring_target(self, now: float) -> NodeRecord | None:
        ms = self.n._ms
        if self._ring is None or self._ring[0] != ms.version:
            live = sorted((r for r in ms.nodes.values()
                           if r.state in (NodeState.ALIVE, NodeState.SUSPECT)),
                          key=lambda r: r.name)
            mine = next((i for i, r in enumerate(live) if r.name == self.n.name), -1)
            self._ring = (ms.version, live, mine)
        _, live, mine = self._ring
        n = len(live)
        if n < 2 or mine < 0:
            return None
        r = int((now + self.n.wall_offset) // self._round_length())
        return live[(mine + 1 + r % (n - 1)) % n]

    def _next_ring_start(self, now: float) -> float:
        """The next round's start plus this node's phase, at least one scaled interval
        (health score) after ``now``'s round."""
        length = self._round_length()
        t = now + self.n.wall_offset
        rounds = self.n._aw.score + 1
        start = (t // length + rounds) * length + self._ring_phase * length
        return start - self.n.wall_offset

    def _pick_target(self, now: float) -> NodeRecord | None:
        if self.n.config.probe_ring:
            return self._ring_target(now)
        checked = 0
        while checked < len(self.n._ms.order):
            if self._probe_index >= len(self.n._ms.order):
                self.n._ms.reset_order(now)
                self._probe_index = 0
                checked += 1
                continue
            rec = self.n._ms.order[self._probe_index]
            self._probe_index += 1
            if rec.name == self.n.name or rec.state in (NodeState.DEAD, NodeState.LEFT):
                checked += 1
                continue
            return rec
        return None

    def _start_probe(self, now: float) -> None:
        rec = self._pick_target(now)
        if rec is None:
            self._next_probe = now + self.n.config.probe_interval * self.n._ms.interval_scale
            return
        seq = self.n._next_seq()
        interval = self.n._aw.scale(self.n.config.probe_interval * self.n._ms.interval_scale)
        p = ProbeState(rec, rec.incarnation, seq, now, now + self.n.config.probe_timeout, now + interval)
        if self.n.config.probe_ring:
            # the probe must end before the next round's probe starts
            p.deadline = min(p.deadline, self._next_ring_start(now) - 1e-3)
        self._probe = p
        self._probe_waits[seq] = p
        ping = codec.encode(Ping(seq, rec.name, self.n._addr_wire, self.n.port, self.n.name))
        if rec.state == NodeState.ALIVE:
            self.n._send_msg(rec.address, ping, rec)
        else:
            # Suspect target: tell it, so it can refute at once.
            sus = codec.encode(Suspect(rec.incarnation, rec.name, self.n.name))
            self.n.metrics["sent.ping"] += 1
            self.n.metrics["sent.suspect"] += 1
            self.n._raw_send(rec.address, codec.make_compound([ping, sus]), rec)

    def _indirect_probe(self, p: ProbeState, now: float) -> None:
        p.indirect_sent = True
        target = p.target
        peers = self.n._k_random(
            self.n.config.indirect_checks,
            lambda r: r.name in (self.n.name, target.name) or r.state != NodeState.ALIVE)
        if self.n.config.nack_confirms:
            p.relays, p.nacked_by = {}, set()
        for peer in peers:
            nack = peer.pmax >= 4
            p.expected_nacks += nack
            if p.relays is not None:
                p.relays[peer.address] = peer.name
            ind = IndirectPing(p.seq, addr_to_wire(target.addr), target.port, target.name, nack,
                               self.n._addr_wire, self.n.port, self.n.name)
            self.n._send_msg(peer.address, codec.encode(ind), peer)
        if not self.n.config.disable_tcp_pings and target.pmax >= 3:
            ping = Ping(p.seq, target.name, self.n._addr_wire, self.n.port, self.n.name)
            self.n._tcp_ping(target.address, codec.encode(ping), now, p.deadline, p.seq)

    def _probe_succeeded(self, p: ProbeState, now: float) -> None:
        self.n._aw.apply_delta(-1)
        self._end_probe(p, now)

    def _probe_failed(self, p: ProbeState, now: float) -> None:
        self._end_probe(p, now)
        if p.fallback_ok:
            self.n.metrics["probe.tcp_only"] += 1
            self.n._log_once(f"tcp_only:{p.target.name}", "reached %s over TCP but not UDP; "
                           "network may be misconfigured", p.target.name)
            return
        if p.expected_nacks > 0:
            self.n._aw.apply_delta(max(p.expected_nacks - p.nacks, 0))
        else:
            self.n._aw.apply_delta(1)
        self.n.metrics["probe.failed"] += 1
        self.n._ms.suspect(Suspect(p.incarnation, p.target.name, self.n.name), now)
        for relay in sorted(p.nacked_by or ()):
            # it could not reach the target either: an independent confirmation
            if self.n._ms.confirm(p.target.name, relay):
                self.n.metrics["suspect.nack_confirmed"] += 1

    def _end_probe(self, p: ProbeState, now: float) -> None:
        self._probe = None
        self._probe_waits.pop(p.seq, None)
        if self.n.config.probe_ring:
            # (the health score skips rounds: a node short of CPU probes less often)
            self._next_probe = self._next_ring_start(p.start)
            return
        # (scaled by the health score too: a node short of CPU probes less often)
        self._next_probe = max(
            p.start + self.n._aw.scale(self.n.config.probe_interval * self.n._ms.interval_scale), now)
