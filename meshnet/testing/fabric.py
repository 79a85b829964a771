"""In-memory datagram + stream fabric with a virtual clock, for gossip tests.

Design notes
------------
* Drives many sans-IO :class:`~meshnet.gossip.core.Memberlist` cores from one seed:
  one event heap ordered by ``(time, seq)`` holds datagram deliveries, stream
  openings/replies and per-core timer ticks, so a run is fully deterministic.
* Datagrams: delivered after ``latency + jitter * U(0,1)``; lost with probability
  ``loss``; dropped when source and destination are on different sides of a
  partition or the destination is killed.
* Streams (TCP): same latency and jitter as datagrams; a request is delivered whole to the target's ``open_stream()``
  object; the reply comes back whole. Killed target = connection refused (fails
  after one latency); partitioned = no answer (fails at the request's deadline).
  Streams are never lossy.
* Timers: each core has at most one live tick entry, at its ``next_deadline()``; an
  entry superseded by an earlier deadline is skipped when popped.
* ``partition(a, b)`` blocks traffic between two sets of node names; ``heal()``
  removes all partitions. ``kill(name)`` stops a node dead (no leave);
  ``restart(name)`` brings up a fresh core under the same name and address.
* ``seed_full_view()`` skips the joins of a large simulation: every core knows every
  other as alive (incarnation 1) with nothing queued, as a long-settled cluster would.
* ``udp_bytes``/``tcp_bytes`` count what the cores sent (lost datagrams included).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from random import Random

from meshnet.gossip.config import GossipConfig
from meshnet.gossip.core import Memberlist
from meshnet.gossip.events import Event, StreamRequest
from meshnet.gossip.security import Keyring
from meshnet.gossip.state import NodeRecord, NodeState

Address = tuple[str, int]
INF = float("inf")


@dataclass(eq=False)
class FabricNode:
    name: str
    addr: Address
    core: Memberlist
    alive: bool = True
    scheduled: float = INF
    events: list[Event] = field(default_factory=list)


class Fabric:
    def __init__(self, seed: int = 0, *, latency: float = 0.0005, jitter: float = 0.0005,
                 loss: float = 0.0) -> None:
        self.rng = Random(seed)
        self.now = 0.0
        self.latency = latency
        self.jitter = jitter
        self.loss = loss
        self.nodes: dict[str, FabricNode] = {}
        self._by_addr: dict[Address, FabricNode] = {}
        self._heap: list[tuple] = []
        self._seq = itertools.count()
        self._ephemeral = itertools.count(40000)
        self._partitions: list[tuple[frozenset[str], frozenset[str]]] = []
        self.delivered = 0
        self.dropped = 0
        self.udp_bytes = 0
        self.tcp_bytes = 0

    # -- topology ---------------------------------------------------------------

    def add(self, name: str, config: GossipConfig, *, meta: bytes = b"",
            keyring: Keyring | None = None, addr: Address | None = None) -> Memberlist:
        if addr is None:
            i = len(self.nodes)
            addr = (f"10.0.{i // 250}.{i % 250 + 1}", 7946)
        core = Memberlist(config, name, addr[0], addr[1], meta,
                          Random(self.rng.getrandbits(64)), keyring)
        node = FabricNode(name, addr, core)
        self.nodes[name] = node
        self._by_addr[addr] = node
        core.start(self.now)
        self._flush(node)
        return core

    def seed_full_view(self) -> None:
        """Make every node know every other as alive, without a message (see notes)."""
        nodes = list(self.nodes.values())
        for node in nodes:
            ms = node.core._ms
            for other in nodes:
                if other is node or other.name in ms.nodes:
                    continue
                oc = other.core
                rec = NodeRecord(other.name, other.addr[0], other.addr[1], oc._meta,
                                 oc.config.vsn, 1, NodeState.ALIVE, self.now)
                ms.nodes[other.name] = rec
                ms.order.append(rec)
            core = node.core
            core.rng.shuffle(ms.order)
            if core.config.push_pull_interval > 0:  # spread as in a long-running cluster
                core._next_push_pull = self.now + core.rng.uniform(0, core.push_pull_period())

    def core(self, name: str) -> Memberlist:
        return self.nodes[name].core

    def kill(self, name: str) -> None:
        node = self.nodes[name]
        node.alive = False
        node.scheduled = INF

    def restart(self, name: str, config: GossipConfig, *, meta: bytes = b"",
                keyring: Keyring | None = None) -> Memberlist:
        node = self.nodes[name]
        node.core = Memberlist(config, name, node.addr[0], node.addr[1], meta,
                               Random(self.rng.getrandbits(64)), keyring)
        node.alive = True
        node.scheduled = INF
        node.events = []
        node.core.start(self.now)
        self._flush(node)
        return node.core

    def partition(self, a: Iterable[str], b: Iterable[str]) -> None:
        self._partitions.append((frozenset(a), frozenset(b)))

    def heal(self) -> None:
        self._partitions.clear()

    def blocked(self, src: str, dst: str) -> bool:
        for a, b in self._partitions:
            if (src in a and dst in b) or (src in b and dst in a):
                return True
        return False

    # -- running ------------------------------------------------------------------

    def join(self, name: str, targets: list[str]) -> int:
        node = self.nodes[name]
        jid = node.core.join([self.nodes[t].addr for t in targets], self.now)
        self._flush(node)
        return jid

    def call(self, name: str, fn: Callable[[Memberlist, float], object]) -> object:
        """Run ``fn(core, now)`` on a node and perform what it produced."""
        node = self.nodes[name]
        out = fn(node.core, self.now)
        self._flush(node)
        return out

    def run_for(self, dt: float) -> None:
        self.run_until(self.now + dt)

    def run_until(self, t: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= t:
            item = heapq.heappop(heap)
            self.now = item[0]
            kind = item[2]
            if kind == "tick":
                self._on_tick(item[3], item[0])
            elif kind == "dgram":
                self._on_dgram(*item[3:])
            elif kind == "stream":
                self._on_stream(*item[3:])
            elif kind == "reply":
                self._on_reply(*item[3:])
        self.now = t

    def run_until_true(self, pred: Callable[[], bool], timeout: float,
                       step: float = 0.05) -> float | None:
        """Advance until ``pred()`` holds; return the time taken or None on timeout."""
        start = self.now
        while self.now - start < timeout:
            if pred():
                return self.now - start
            self.run_for(step)
        return self.now - start if pred() else None

    # -- internals ------------------------------------------------------------------

    def _push(self, t: float, kind: str, *args: object) -> None:
        heapq.heappush(self._heap, (t, next(self._seq), kind, *args))

    def _delay(self) -> float:
        return self.now + self.latency + self.jitter * self.rng.random()

    def _flush(self, node: FabricNode) -> None:
        core = node.core
        if not node.alive:
            core.drain_outbox()
            core.drain_streams()
            return
        for data, dst in core.drain_outbox():
            self.udp_bytes += len(data)
            target = self._by_addr.get(dst)
            if self.loss and self.rng.random() < self.loss:
                self.dropped += 1
                continue
            if target is None or self.blocked(node.name, target.name):
                self.dropped += 1
                continue
            self._push(self._delay(), "dgram", node.addr, dst, data)
        for req in core.drain_streams():
            self.tcp_bytes += len(req.data)
            self._push(self._delay(), "stream", node, req)
        node.events.extend(core.drain_events())
        d = core.next_deadline()
        if d < node.scheduled:
            d = max(d, self.now)
            node.scheduled = d
            self._push(d, "tick", node)

    def _on_tick(self, node: FabricNode, t: float) -> None:
        if not node.alive or node.scheduled != t:
            return
        node.scheduled = INF
        node.core.tick(self.now)
        if node.core.next_deadline() <= self.now:
            raise AssertionError(f"{node.name}: next_deadline did not advance after tick")
        self._flush(node)

    def _on_dgram(self, src: Address, dst: Address, data: bytes) -> None:
        target = self._by_addr.get(dst)
        if target is None or not target.alive:
            self.dropped += 1
            return
        self.delivered += 1
        target.core.handle_datagram(data, src, self.now)
        self._flush(target)

    def _on_stream(self, node: FabricNode, req: StreamRequest) -> None:
        target = self._by_addr.get(req.addr)
        if target is None or not target.alive:
            if req.expect_reply:  # connection refused
                self._push(self.now + self.latency, "reply", node, req.id, None)
            return
        if self.blocked(node.name, target.name):
            if req.expect_reply:  # silently dropped SYN: fails at the deadline
                self._push(max(req.deadline, self.now), "reply", node, req.id, None)
            return
        src = (node.addr[0], next(self._ephemeral))
        inbound = target.core.open_stream(src, self.now)
        reply = inbound.feed(req.data, self.now)
        if reply:
            self.tcp_bytes += len(reply)
        if reply is None and not inbound.done:
            inbound.eof(self.now)
        self._flush(target)
        if req.expect_reply:
            at = self._delay()
            if reply is None or at > req.deadline:
                self._push(min(at, req.deadline), "reply", node, req.id, None)
            else:
                self._push(at, "reply", node, req.id, reply)

    def _on_reply(self, node: FabricNode, req_id: int, data: bytes | None) -> None:
        if not node.alive:
            return
        done = node.core.stream_reply(req_id, data, self.now)
        if not done and data is not None:
            node.core.stream_reply(req_id, None, self.now)
        self._flush(node)
