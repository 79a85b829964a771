"""Member table and every membership state transition (memberlist ``state.go``).

Design notes
------------
The whole state machine of a member record, keyed by what arrives:

===========  ====================  =========================================================
input        current state         effect
===========  ====================  =========================================================
alive(i)     unknown               create as DEAD placeholder, then apply as below (join)
alive(i)     any, other node       if i > known: ALIVE, take meta/addr/vsn, re-gossip;
                                   JOIN if it was DEAD/LEFT, UPDATE if meta changed
alive(i)     self                  ignore if i < ours or identical; else refute
alive        known, new addr:port  only if LEFT (or reclaimable DEAD); else "conflict"
suspect(i)   timer running         i >= known: count a confirmation (re-gossip if new)
suspect(i)   ALIVE, other node     i >= known: SUSPECT, start Lifeguard timer, re-gossip
suspect(i)   self                  refute (incarnation > i), health +1
dead(i)      ALIVE/SUSPECT         i >= known: DEAD (FAILED), or LEFT if From == Node
dead(i)      self, not leaving     refute;  self while leaving: LEFT, re-gossip
timer fires  still SUSPECT, same   dead{From: self} as above
reap         DEAD/LEFT > to_dead   forgotten (on each probe-list wrap)
push/pull    alive / left /        alive / dead(From=Name) / *suspect* (a remote "dead"
             suspect+dead          never kills directly)
===========  ====================  =========================================================

With ``direct_notify`` (the ``swift`` preset) three messages also go point to point
through ``send``: a suspicion we start, to the accused; a refutation, to its accuser; a
death our own timer declares, to every live member and the accused. An accusation of us
older than our incarnation is answered with our current alive (memberlist ignores it).

Refute = incarnation ours + 1 (or accused + 1 if higher), gossip our alive, health +1.
All broadcasts go through :class:`BroadcastQueue`, keyed by node name. This module
does no I/O: the core passes ``now``; events accumulate in ``self.events``.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from random import Random

from meshnet.gossip import codec
from meshnet.gossip.awareness import Awareness
from meshnet.gossip.broadcast import Broadcast, BroadcastQueue
from meshnet.gossip.config import GossipConfig
from meshnet.gossip.events import Event, MemberFailed, MemberJoin, MemberLeave, MemberUpdate
from meshnet.gossip.member import Member, decode_tags
from meshnet.gossip.messages import (
    STATE_ALIVE,
    STATE_DEAD,
    STATE_LEFT,
    STATE_SUSPECT,
    Alive,
    Dead,
    DecodeError,
    PushNodeState,
    Suspect,
    addr_from_wire,
    addr_to_wire,
)
from meshnet.gossip.suspicion import Suspicion, confirmations_wanted, suspicion_timeout


class NodeState(enum.IntEnum):
    ALIVE = STATE_ALIVE
    SUSPECT = STATE_SUSPECT
    DEAD = STATE_DEAD
    LEFT = STATE_LEFT


@dataclass(eq=False, slots=True)
class NodeRecord:
    name: str
    addr: str
    port: int
    meta: bytes
    vsn: bytes
    incarnation: int
    state: NodeState
    state_change: float

    @property
    def address(self) -> tuple[str, int]:
        return (self.addr, self.port)

    @property
    def pmax(self) -> int:
        return self.vsn[1] if len(self.vsn) == 6 else 0

    def member(self) -> Member:
        return Member(self.name, self.addr, self.port, self.state.name.lower(),
                      self.incarnation, self.meta, self.vsn, decode_tags(self.meta))


class Membership:
    """The member table of one node plus the transitions above."""

    def __init__(self, config: GossipConfig, local_name: str, rng: Random,
                 broadcasts: BroadcastQueue, awareness: Awareness, metrics: Counter) -> None:
        self.config = config
        self.local_name = local_name
        self.rng = rng
        self.broadcasts = broadcasts
        self.awareness = awareness
        #: probe/gossip interval multiplier for the cluster's size (set by the core)
        self.interval_scale = 1.0
        self.metrics = metrics
        self.nodes: dict[str, NodeRecord] = {}
        self.order: list[NodeRecord] = []  # probe order (memberlist's m.nodes)
        self.suspicions: dict[str, Suspicion] = {}
        self.events: list[Event] = []
        self.incarnation = 0
        self.leaving = False
        # Failed (not left) members we keep trying to reconnect to, like serf:
        # name -> (address, time it failed). Survives reaping from ``nodes``.
        self.failed: dict[str, tuple[tuple[str, int], float]] = {}
        #: bumped whenever a member is added, removed or changes state (probe ring cache)
        self.version = 0
        #: the core's point-to-point send, for ``direct_notify`` (None: gossip only)
        self.send: Callable[[NodeRecord, bytes], None] | None = None

    # -- helpers -------------------------------------------------------------

    def num_nodes(self) -> int:
        return len(self.nodes)

    @property
    def local(self) -> NodeRecord:
        return self.nodes[self.local_name]

    def next_incarnation(self) -> int:
        self.incarnation += 1
        return self.incarnation

    def _gossip(self, msg: Alive | Suspect | Dead) -> Broadcast:
        return self.broadcasts.queue(codec.encode(msg), key=msg.node)

    def _emit(self, cls: type, rec: NodeRecord) -> None:
        self.events.append(cls(rec.member()))

    # -- alive ---------------------------------------------------------------

    def alive(self, a: Alive, now: float, *, bootstrap: bool = False) -> None:
        if self.leaving and a.node == self.local_name:
            return
        if len(a.vsn) >= 3 and (a.vsn[0] == 0 or a.vsn[1] == 0 or a.vsn[0] > a.vsn[1]):
            self.metrics["drop.bad_vsn"] += 1
            return
        if len(a.vsn) not in (0, 6) or not a.node:
            self.metrics["drop.bad_alive"] += 1
            return
        try:
            addr = addr_from_wire(a.addr)
        except DecodeError:
            self.metrics["drop.bad_alive"] += 1
            return
        port = a.port
        rec = self.nodes.get(a.node)
        updates_addr = False
        if rec is None:
            rec = NodeRecord(a.node, addr, port, a.meta, a.vsn, 0, NodeState.DEAD, now)
            self.nodes[a.node] = rec
            # Insert at a random position of the probe order (memberlist's swap).
            self.order.append(rec)
            i = self.rng.randrange(len(self.order))
            self.order[i], self.order[-1] = self.order[-1], self.order[i]
            self.version += 1
        elif (rec.addr, rec.port) != (addr, port):
            reclaim = (self.config.dead_node_reclaim_time > 0
                       and now - rec.state_change > self.config.dead_node_reclaim_time)
            if rec.state == NodeState.LEFT or (rec.state == NodeState.DEAD and reclaim):
                updates_addr = True
            else:
                self.metrics["conflict.address"] += 1
                return
        is_local = rec.name == self.local_name
        if a.incarnation <= rec.incarnation and not is_local and not updates_addr:
            return
        if a.incarnation < rec.incarnation and is_local:
            return
        self.suspicions.pop(a.node, None)
        old_state, old_meta = rec.state, rec.meta
        if not bootstrap and is_local:
            if (a.incarnation == rec.incarnation and a.meta == rec.meta
                    and a.vsn == self.config.vsn):
                return
            self.refute(rec, a.incarnation)
        else:
            self._gossip(a)
            rec.incarnation = a.incarnation
            rec.meta = a.meta
            rec.addr, rec.port = addr, port
            if a.vsn:
                rec.vsn = a.vsn
            if rec.state != NodeState.ALIVE:
                rec.state = NodeState.ALIVE
                rec.state_change = now
                self.version += 1
            self.failed.pop(rec.name, None)
        if old_state in (NodeState.DEAD, NodeState.LEFT):
            if rec.state == NodeState.ALIVE:
                self._emit(MemberJoin, rec)
        elif old_meta != rec.meta:
            self._emit(MemberUpdate, rec)

    # -- suspect -------------------------------------------------------------

    def suspect(self, s: Suspect, now: float) -> None:
        rec = self.nodes.get(s.node)
        if rec is None or s.incarnation < rec.incarnation:
            if rec is not None and rec.name == self.local_name:
                self._correct_stale(rec, s.from_)
            return
        timer = self.suspicions.get(s.node)
        if timer is not None:
            if timer.confirm(s.from_):
                self._gossip(s)
            return
        if rec.state != NodeState.ALIVE:
            return
        if rec.name == self.local_name:
            self.refute(rec, s.incarnation, accuser=s.from_)
            self.metrics["refute.suspect"] += 1
            return
        self._gossip(s)
        rec.incarnation = s.incarnation
        rec.state = NodeState.SUSPECT
        rec.state_change = now
        self.version += 1
        c = self.config
        n = self.num_nodes()
        k = confirmations_wanted(c.suspicion_mult, n)
        if c.nack_confirms:
            # confirmations come from live peers (relays): the dead ones still in the
            # table cannot give any (memberlist counts them, and waits longer for them)
            live = sum(1 for r in self.nodes.values()
                       if r.state in (NodeState.ALIVE, NodeState.SUSPECT))
            k = confirmations_wanted(c.suspicion_mult, live)
        lo = c.suspicion_min or suspicion_timeout(c.suspicion_mult, n,
                                                  c.probe_interval * self.interval_scale)
        hi = c.suspicion_max or c.suspicion_max_timeout_mult * lo
        self.suspicions[s.node] = Suspicion(s.from_, k, lo, hi, now, s.incarnation)
        if s.from_ == self.local_name and self.send is not None and c.direct_notify:
            # our own probe failed: the accused hears it now and can refute at once
            self.metrics["sent.suspect.direct"] += 1
            self.send(rec, codec.encode(s))

    def confirm(self, name: str, from_node: str) -> bool:
        """Count ``from_node`` as an independent accuser of ``name`` (nack confirmations)."""
        timer = self.suspicions.get(name)
        return timer is not None and timer.confirm(from_node)

    def expire_suspicions(self, now: float) -> None:
        for name, timer in list(self.suspicions.items()):
            if now < timer.deadline:
                continue
            del self.suspicions[name]
            rec = self.nodes.get(name)
            if rec is not None and rec.state == NodeState.SUSPECT and rec.state_change == timer.start:
                self.metrics["suspect.timeout"] += 1
                d = Dead(rec.incarnation, name, self.local_name)
                self.dead(d, now)
                if self.send is not None and self.config.direct_notify:
                    # our timer declared it: every live member hears it now, not in
                    # log(n) gossip rounds
                    msg = codec.encode(d)
                    # (the accused too: if it lives after all, it answers at once)
                    for peer in list(self.nodes.values()):
                        if peer.name != self.local_name and (peer.name == name or peer.state in (
                                NodeState.ALIVE, NodeState.SUSPECT)):
                            self.metrics["sent.dead.direct"] += 1
                            self.send(peer, msg)

    def next_suspicion_deadline(self) -> float:
        return min((t.deadline for t in self.suspicions.values()), default=float("inf"))

    # -- dead ----------------------------------------------------------------

    def dead(self, d: Dead, now: float) -> Broadcast | None:
        rec = self.nodes.get(d.node)
        if rec is None or d.incarnation < rec.incarnation:
            if rec is not None and rec.name == self.local_name:
                self._correct_stale(rec, d.from_)
            return None
        self.suspicions.pop(d.node, None)
        if rec.state in (NodeState.DEAD, NodeState.LEFT):
            return None
        if rec.name == self.local_name and not self.leaving:
            self.refute(rec, d.incarnation, accuser=d.from_)
            self.metrics["refute.dead"] += 1
            return None
        b = self._gossip(d)
        rec.incarnation = d.incarnation
        rec.state = NodeState.LEFT if d.node == d.from_ else NodeState.DEAD
        rec.state_change = now
        self.version += 1
        if rec.state == NodeState.DEAD and rec.name != self.local_name:
            self.failed[rec.name] = (rec.address, now)
        else:
            self.failed.pop(rec.name, None)
        self._emit(MemberLeave if rec.state == NodeState.LEFT else MemberFailed, rec)
        return b

    # -- refute --------------------------------------------------------------

    def _tell(self, name: str | None, rec: NodeRecord, msg: Alive, metric: str) -> None:
        """With ``direct_notify``, send our alive straight to member ``name`` (an accuser)."""
        peer = self.nodes.get(name) if name else None
        if peer is None or peer is rec or self.send is None or not self.config.direct_notify:
            return
        self.metrics[metric] += 1
        self.send(peer, codec.encode(msg))

    def _correct_stale(self, rec: NodeRecord, accuser: str) -> None:
        """An accusation of us older than our incarnation (we refuted already, and the
        accuser missed it): memberlist ignores it, which leaves the accuser's view wrong
        until a push/pull. With ``direct_notify``, send the accuser our current alive."""
        if not self.leaving:
            self._tell(accuser, rec, Alive(rec.incarnation, rec.name, addr_to_wire(rec.addr),
                                           rec.port, rec.meta, self.config.vsn),
                       "sent.alive.correction")

    def refute(self, rec: NodeRecord, accused: int, accuser: str | None = None) -> None:
        inc = self.next_incarnation()
        if accused >= inc:
            self.incarnation = inc = accused + 1
        rec.incarnation = inc
        self.awareness.apply_delta(1)
        a = Alive(inc, rec.name, addr_to_wire(rec.addr), rec.port, rec.meta, self.config.vsn)
        self._gossip(a)
        # the accuser holds the shortest timer: answer it straight away
        self._tell(accuser, rec, a, "sent.alive.direct")

    # -- push/pull -----------------------------------------------------------

    def verify_protocol(self, remote: tuple[PushNodeState, ...]) -> str | None:
        """memberlist's verifyProtocol; returns an error string or None."""
        pmin = dmin = 0
        pmax = dmax = 255
        for v in [r.vsn for r in remote if r.state == STATE_ALIVE and len(r.vsn) == 6] + [
            n.vsn for n in self.nodes.values() if n.state == NodeState.ALIVE and len(n.vsn) == 6
        ]:
            pmin, pmax = max(pmin, v[0]), min(pmax, v[1])
            dmin, dmax = max(dmin, v[3]), min(dmax, v[4])
        for name, v in [(r.name, r.vsn) for r in remote] + [
            (n.name, n.vsn) for n in self.nodes.values()
        ]:
            pcur, dcur = (v[2], v[5]) if len(v) == 6 else (0, 0)
            if not pmin <= pcur <= pmax:
                return f"Node '{name}' protocol version ({pcur}) is incompatible: [{pmin}, {pmax}]"
            if not dmin <= dcur <= dmax:
                return (f"Node '{name}' delegate protocol version ({dcur}) is incompatible: "
                        f"[{dmin}, {dmax}]")
        return None

    def merge(self, remote: tuple[PushNodeState, ...], now: float) -> None:
        for r in remote:
            if r.state == STATE_ALIVE:
                self.alive(Alive(r.incarnation, r.name, r.addr, r.port, r.meta, r.vsn), now)
            elif r.state == STATE_LEFT:
                self.dead(Dead(r.incarnation, r.name, r.name), now)
            elif r.state in (STATE_DEAD, STATE_SUSPECT):
                # A remote "dead" only makes us suspect: we check for ourselves.
                self.suspect(Suspect(r.incarnation, r.name, self.local_name), now)

    def local_state(self) -> list[PushNodeState]:
        out = []
        for rec in self.nodes.values():
            vsn = rec.vsn if len(rec.vsn) == 6 else self.config.vsn
            out.append(PushNodeState(rec.name, addr_to_wire(rec.addr), rec.port, rec.meta,
                                     rec.incarnation, int(rec.state), vsn))
        return out

    # -- reaping -------------------------------------------------------------

    def reset_order(self, now: float) -> None:
        """On probe-list wrap: forget long-dead nodes and reshuffle (resetNodes)."""
        limit = self.config.gossip_to_the_dead_time
        keep = []
        for rec in self.order:
            if (rec.name != self.local_name and rec.state in (NodeState.DEAD, NodeState.LEFT)
                    and now - rec.state_change > limit):
                del self.nodes[rec.name]
                self.suspicions.pop(rec.name, None)
                self.version += 1
                self.metrics["reaped"] += 1
            else:
                keep.append(rec)
        self.rng.shuffle(keep)
        self.order = keep
