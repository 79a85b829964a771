"""Failure detection half of the core: probes, indirect probes, relays, acks/nacks.

Design notes
------------
* A mixin of :class:`~meshnet.gossip.core.Memberlist` (it uses the core's send path,
  member table and awareness); split out only to keep modules small.
* One probe at a time, as memberlist: ping the next node of the shuffled list (a
  suspect target also gets ``suspect{From: us}`` in the same compound so it can
  refute). At ``ProbeTimeout`` without an ack: ``indirectPingReq`` to
  ``IndirectChecks`` random alive peers (``Nack`` when their PMax >= 4) and, if the
  target's PMax >= 3, a TCP fallback ping. At the end of the (health-scaled) probe
  interval without any ack: health += missing nacks (or 1) and suspect the target.
  A TCP-only success logs "network may be misconfigured" and suspects nobody.
* The next probe starts ``ProbeInterval`` after the previous one started, or when it
  ended if that is later (memberlist's blocking probe under a ticker).
* Relay role: ping the target with a fresh sequence number; forward its ack to the
  requester with the requester's sequence number, or send a nack after
  ``ProbeTimeout`` when asked to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from meshnet.gossip import codec
from meshnet.gossip.events import Address
from meshnet.gossip.messages import (
    Ack,
    IndirectPing,
    Nack,
    Ping,
    Suspect,
    addr_from_wire,
    addr_to_wire,
)
from meshnet.gossip.state import NodeRecord, NodeState

if TYPE_CHECKING:
    from meshnet.gossip.core import Memberlist

    _Base = Memberlist
else:
    _Base = object


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


@dataclass
class RelayState:
    requester: Address
    req_seq: int
    nack: bool
    deadline: float


class ProbeMixin(_Base):
    def _on_ping(self, p: Ping, src: Address) -> None:
        if p.node and p.node != self.name:
            self._drop("ping_wrong_node", src)
            return
        dest = src
        if p.source_addr and p.source_port:
            dest = (addr_from_wire(p.source_addr), p.source_port)
        node = self._ms.nodes.get(p.source_node) if p.source_node else None
        if node is not None and node.address != dest:
            node = None
        self._send_msg(dest, codec.encode(Ack(p.seq_no)), node)

    def _on_indirect(self, ind: IndirectPing, src: Address, now: float) -> None:
        target = (addr_from_wire(ind.target), ind.port or self.port)
        requester = src
        if ind.source_addr and ind.source_port:
            requester = (addr_from_wire(ind.source_addr), ind.source_port)
        seq = self._next_seq()
        self._relays[seq] = RelayState(requester, ind.seq_no, ind.nack, now + self.config.probe_timeout)
        ping = Ping(seq, ind.node, self._addr_wire, self.port, self.name)
        node = self._ms.nodes.get(ind.node)
        if node is not None and node.address != target:
            node = None
        self._send_msg(target, codec.encode(ping), node)

    def _on_ack(self, ack: Ack, now: float) -> None:
        relay = self._relays.pop(ack.seq_no, None)
        if relay is not None:
            self._send_msg(relay.requester, codec.encode(Ack(relay.req_seq)))
            return
        p = self._probe_waits.pop(ack.seq_no, None)
        if p is None:
            self.metrics["ack.unexpected"] += 1
            return
        if p is self._probe:
            self._probe_succeeded(p, now)

    def _on_nack(self, nack: Nack) -> None:
        p = self._probe_waits.get(nack.seq_no)
        if p is not None:
            p.nacks += 1

    def _relay_tick(self, now: float) -> None:
        for seq, r in list(self._relays.items()):
            if now >= r.deadline:
                del self._relays[seq]
                if r.nack:
                    self._send_msg(r.requester, codec.encode(Nack(r.req_seq)))

    def _probe_tick(self, now: float) -> None:
        p = self._probe
        if p is not None:
            if not p.indirect_sent and now >= p.timeout_at:
                self._indirect_probe(p, now)
            if now >= p.deadline:
                self._probe_failed(p, now)
        if self._probe is None and now >= self._next_probe:
            self._start_probe(now)

    def _pick_target(self, now: float) -> NodeRecord | None:
        checked = 0
        while checked < len(self._ms.order):
            if self._probe_index >= len(self._ms.order):
                self._ms.reset_order(now)
                self._probe_index = 0
                checked += 1
                continue
            rec = self._ms.order[self._probe_index]
            self._probe_index += 1
            if rec.name == self.name or rec.state in (NodeState.DEAD, NodeState.LEFT):
                checked += 1
                continue
            return rec
        return None

    def _start_probe(self, now: float) -> None:
        rec = self._pick_target(now)
        if rec is None:
            self._next_probe = now + self.config.probe_interval * self._ms.interval_scale
            return
        seq = self._next_seq()
        interval = self._aw.scale(self.config.probe_interval * self._ms.interval_scale)
        p = ProbeState(rec, rec.incarnation, seq, now, now + self.config.probe_timeout, now + interval)
        self._probe = p
        self._probe_waits[seq] = p
        ping = codec.encode(Ping(seq, rec.name, self._addr_wire, self.port, self.name))
        if rec.state == NodeState.ALIVE:
            self._send_msg(rec.address, ping, rec)
        else:
            # Suspect target: tell it, so it can refute at once.
            sus = codec.encode(Suspect(rec.incarnation, rec.name, self.name))
            self.metrics["sent.ping"] += 1
            self.metrics["sent.suspect"] += 1
            self._raw_send(rec.address, codec.make_compound([ping, sus]), rec)

    def _indirect_probe(self, p: ProbeState, now: float) -> None:
        p.indirect_sent = True
        target = p.target
        peers = self._k_random(
            self.config.indirect_checks,
            lambda r: r.name in (self.name, target.name) or r.state != NodeState.ALIVE)
        for peer in peers:
            nack = peer.pmax >= 4
            p.expected_nacks += nack
            ind = IndirectPing(p.seq, addr_to_wire(target.addr), target.port, target.name, nack,
                               self._addr_wire, self.port, self.name)
            self._send_msg(peer.address, codec.encode(ind), peer)
        if not self.config.disable_tcp_pings and target.pmax >= 3:
            ping = Ping(p.seq, target.name, self._addr_wire, self.port, self.name)
            sid = self._new_stream(target.address, codec.encode(ping), True, now, "ping",
                                   deadline=p.deadline)
            self._pending[sid].probe_seq = p.seq

    def _probe_succeeded(self, p: ProbeState, now: float) -> None:
        self._aw.apply_delta(-1)
        self._end_probe(p, now)

    def _probe_failed(self, p: ProbeState, now: float) -> None:
        self._end_probe(p, now)
        if p.fallback_ok:
            self.metrics["probe.tcp_only"] += 1
            self._log_once(f"tcp_only:{p.target.name}", "reached %s over TCP but not UDP; "
                           "network may be misconfigured", p.target.name)
            return
        if p.expected_nacks > 0:
            self._aw.apply_delta(max(p.expected_nacks - p.nacks, 0))
        else:
            self._aw.apply_delta(1)
        self.metrics["probe.failed"] += 1
        self._ms.suspect(Suspect(p.incarnation, p.target.name, self.name), now)

    def _end_probe(self, p: ProbeState, now: float) -> None:
        self._probe = None
        self._probe_waits.pop(p.seq, None)
        # (scaled by the health score too: a node short of CPU probes less often)
        self._next_probe = max(
            p.start + self._aw.scale(self.config.probe_interval * self._ms.interval_scale), now)
