"""Deterministic cluster simulation of the tables layer (shared by tests and benches).

``Sim`` runs N ``Tables`` cores on a virtual clock over an in-memory fabric with
delivery delay, UDP loss, partitions and black holes. It also plays the membership
layer: it calls ``member_down`` some time after a crash or partition and ``member_up``
after a heal or restart, as SWIM would. Everything is seeded; no sleeps, no sockets.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import Counter
from collections.abc import Callable

from meshnet.gossip.tables import TableConfig, TableEvent, Tables

View = dict[tuple[str, str], tuple[bytes, str]]


class Sim:
    def __init__(
        self,
        n: int,
        config: TableConfig | None = None,
        *,
        seed: int = 1,
        loss: float = 0.0,
        delay: tuple[float, float] = (0.001, 0.01),
        detect: float = 2.0,
    ) -> None:
        self.config = config or TableConfig.fast()
        self.rng = random.Random(seed)
        self.seed = seed
        self.loss = loss
        self.delay = delay
        self.detect = detect  # how long "SWIM" takes to report a failure
        self.now = 0.0
        self.names = [f"n{i:04d}" for i in range(n)]
        self.nodes: dict[str, Tables] = {}
        self.incarnation: Counter[str] = Counter()
        self.group: dict[str, int] = dict.fromkeys(self.names, 0)
        self.blackholed: set[str] = set()  # cut off both ways, unknown to membership
        self.events: dict[str, list[TableEvent]] = {name: [] for name in self.names}
        self.stats: Counter[str] = Counter()
        self.max_udp = 0
        self._heap: list[tuple[float, int, str, object]] = []
        self._seq = itertools.count()
        self._wake: dict[str, float] = {}
        for name in self.names:
            self._boot(name)

    # --- cluster control ------------------------------------------------------------

    def _boot(self, name: str) -> None:
        self.incarnation[name] += 1
        rng = random.Random(f"{self.seed}/{name}/{self.incarnation[name]}")
        self.nodes[name] = Tables(name, self.config, rng, self.now)

    def start(self) -> None:
        """Everybody sees everybody up (as after the initial SWIM joins)."""
        for name, t in self.nodes.items():
            for other in self.names:
                if other != name:
                    t.member_up(other, self.now)
            self._flush(name)

    def alive(self) -> list[str]:
        return [n for n in self.names if n in self.nodes]

    def put(self, node: str, table: str, key: str, value: bytes) -> None:
        self.nodes[node].put(table, key, value, self.now)
        self._flush(node)

    def delete(self, node: str, table: str, key: str) -> bool:
        ok = self.nodes[node].delete(table, key, self.now)
        self._flush(node)
        return ok

    def crash(self, name: str, detected: bool = True) -> None:
        del self.nodes[name]
        self._wake.pop(name, None)
        if detected:
            self._later(self.detect, lambda: self._members_down([name], failed=True))

    def restart(self, name: str, puts: dict[tuple[str, str], bytes]) -> None:
        """Boot a fresh core (clock 0); the app re-puts ``puts``; membership follows."""
        self._boot(name)
        for (table, key), value in puts.items():
            self.nodes[name].put(table, key, value, self.now)
        others = [n for n in self.alive() if n != name]
        for other in others:
            self.nodes[name].member_up(other, self.now)
        self._flush(name)
        self._later(0.3, lambda: self._members_up_pairs([(o, name) for o in others]))

    def partition(self, *groups: list[str]) -> None:
        for i, g in enumerate(groups):
            for name in g:
                self.group[name] = i

        def detect() -> None:
            for a in self.alive():
                for b in self.alive():
                    if self.group[a] != self.group[b]:
                        self.nodes[a].member_down(b, self.now, failed=True)
                self._flush(a)

        self._later(self.detect, detect)

    def heal(self, up_after: float = 0.5) -> None:
        pairs = [
            (a, b) for a in self.alive() for b in self.alive() if self.group[a] != self.group[b]
        ]
        self.group = dict.fromkeys(self.names, 0)
        self.rng.shuffle(pairs)
        self._later(up_after, lambda: self._members_up_pairs(pairs))

    def _members_down(self, gone: list[str], failed: bool) -> None:
        for a in self.alive():
            for b in gone:
                if b != a:
                    self.nodes[a].member_down(b, self.now, failed)
            self._flush(a)

    def _members_up_pairs(self, pairs: list[tuple[str, str]]) -> None:
        for a, b in pairs:
            if a in self.nodes and b in self.nodes:
                self.nodes[a].member_up(b, self.now)
                self._flush(a)

    # --- event loop -----------------------------------------------------------------

    def _later(self, dt: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (self.now + dt, next(self._seq), "call", fn))

    def _flush(self, name: str, after_tick: bool = False) -> None:
        t = self.nodes[name]
        self.events[name].extend(t.drain_events())
        for out in t.drain_outbox():
            kind = "tcp" if out.reliable else "udp"
            self.stats[f"{kind}_msgs"] += 1
            self.stats[f"{kind}_bytes"] += len(out.payload)
            if not out.reliable:
                self.max_udp = max(self.max_udp, len(out.payload))
            if not out.reliable and self.rng.random() < self.loss:
                self.stats["lost"] += 1
                continue
            when = self.now + self.rng.uniform(*self.delay)
            heapq.heappush(
                self._heap, (when, next(self._seq), "msg", (name, out.node, out.payload))
            )
        d = t.next_deadline()
        if after_tick:
            assert d > self.now, f"{name}: tick left a deadline in the past"
        d = max(d, self.now)
        if d < self._wake.get(name, math.inf):
            self._wake[name] = d
            heapq.heappush(self._heap, (d, next(self._seq), "wake", name))

    def run(self, until: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= until:
            when, _, kind, data = heapq.heappop(heap)
            self.now = when
            if kind == "wake":
                name = data
                if self._wake.get(name) != when:
                    continue  # superseded or crashed
                del self._wake[name]
                self.nodes[name].tick(when)
                self._flush(name, after_tick=True)
            elif kind == "msg":
                src, dst, payload = data
                if (
                    dst not in self.nodes
                    or self.group[src] != self.group[dst]
                    or dst in self.blackholed
                    or src in self.blackholed
                ):
                    self.stats["undeliverable"] += 1
                    continue
                self.nodes[dst].handle_message(src, payload, when)
                self._flush(dst)
            else:
                data()
        self.now = until

    def run_until(self, pred: Callable[[], bool], timeout: float, step: float = 0.05) -> float:
        """Run until ``pred()`` holds; returns the virtual time it took."""
        start = self.now
        while not pred():
            if self.now - start > timeout:
                raise AssertionError(f"no convergence within {timeout}s of virtual time")
            self.run(self.now + step)
        return self.now - start

    # --- views ----------------------------------------------------------------------

    def view(self, name: str) -> View:
        t = self.nodes[name]
        return {
            (table, e.key): (e.value, e.owner) for table in t.table_names() for e in t.items(table)
        }

    def converged(self) -> bool:
        views = [self.view(n) for n in self.alive()]
        return all(v == views[0] for v in views)

    def everyone_has(self, table: str, key: str, value: bytes | None) -> Callable[[], bool]:
        return lambda: all(t.get(table, key) == value for t in self.nodes.values())

    def owned_view(self) -> View:
        """What the cluster should converge to: each live node's own live entries."""
        want: View = {}
        for name in self.nodes:
            for (table, key), (value, owner) in self.view(name).items():
                if owner == name:
                    want[(table, key)] = (value, owner)
        return want

    def quiet(self) -> bool:
        return all(t.metrics["broadcast_queue"] == 0 for t in self.nodes.values())

    def measure(
        self, label: str, pred: Callable[[], bool], timeout: float
    ) -> tuple[float, dict[str, float]]:
        """Run until ``pred()``, then until gossip is quiet; print and return figures.

        Cost is counted from the call until every retransmission queue is empty, so
        msgs/bytes per node are the whole price of the change(s), and the rates are
        that price spread over the quiet time.
        """
        self.reset_stats()
        start = self.now
        took = self.run_until(pred, timeout, step=0.01)
        quiet = self.run_until(self.quiet, timeout, step=0.01) + took
        n = len(self.alive())
        msgs = self.stats["udp_msgs"] + self.stats["tcp_msgs"]
        nbytes = self.stats["udp_bytes"] + self.stats["tcp_bytes"]
        figures = {
            "converged_s": round(took, 3),
            "gossip_intervals": round(took / self.config.gossip_interval, 1),
            "quiet_s": round(quiet, 3),
            "msgs_per_node": round(msgs / n, 1),
            "bytes_per_node": round(nbytes / n),
            "msgs_per_node_s": round(msgs / n / quiet, 1),
            "bytes_per_node_s": round(nbytes / n / quiet),
            "max_udp": self.max_udp,
        }
        print(f"\n[{label}] N={n} {figures}")
        assert self.now >= start
        return took, figures

    def reset_stats(self) -> None:
        self.stats.clear()
        self.max_udp = 0



def settled(n: int, config: TableConfig | None = None, **kw: object) -> Sim:
    sim = Sim(n, config, **kw)  # type: ignore[arg-type]
    sim.start()
    sim.run(1.0)  # let the start-up push/pulls finish
    sim.reset_stats()
    return sim


def agreed(sim: Sim) -> Callable[[], bool]:
    """Every live node holds exactly the live entries their owners hold."""
    return lambda: sim.converged() and sim.view(sim.alive()[0]) == sim.owned_view()
