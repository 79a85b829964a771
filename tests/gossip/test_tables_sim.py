"""Deterministic cluster simulation of the tables layer.

``Sim`` runs N ``Tables`` cores on a virtual clock over an in-memory fabric with
delivery delay, UDP loss, partitions and black holes. It also plays the membership
layer: it calls ``member_down`` some time after a crash or partition and ``member_up``
after a heal or restart, as SWIM would. Everything is seeded; no sleeps, no sockets.

Run with ``-s`` to see the convergence figures each scenario prints.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import replace

import pytest

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


# --- scenarios ---------------------------------------------------------------------


def settled(n: int, config: TableConfig | None = None, **kw: object) -> Sim:
    sim = Sim(n, config, **kw)  # type: ignore[arg-type]
    sim.start()
    sim.run(1.0)  # let the start-up push/pulls finish
    sim.reset_stats()
    return sim


def agreed(sim: Sim) -> Callable[[], bool]:
    """Every live node holds exactly the live entries their owners hold."""
    return lambda: sim.converged() and sim.view(sim.alive()[0]) == sim.owned_view()


@pytest.mark.parametrize("preset", ["lan", "fast"])
def test_one_entry_reaches_20_nodes(preset: str) -> None:
    sim = settled(20, getattr(TableConfig, preset)())
    want = sim.everyone_has("vteps", "n0003", b"10.0.0.3")
    sim.put("n0003", "vteps", "n0003", b"10.0.0.3")
    took, _ = sim.measure(f"N=20 one entry, {preset}", want, 10)
    assert took < 5 * sim.config.gossip_interval
    assert all(
        sim.events[n] == [TableEvent("create", "vteps", "n0003", b"10.0.0.3", "n0003")]
        for n in sim.names
    )


def test_one_entry_reaches_1000_nodes() -> None:
    sim = settled(1000, TableConfig.lan())
    before = {n: t.metrics.get("gossip_rounds", 0) for n, t in sim.nodes.items()}
    start = sim.now
    sim.put("n0500", "vteps", "n0500", b"10.0.1.244")
    want = sim.everyone_has("vteps", "n0500", b"10.0.1.244")
    took, _ = sim.measure("N=1000 one entry, lan", want, 20)
    assert took < 10 * sim.config.gossip_interval
    # Rounds stay at least gossip_interval apart on every node.
    rounds = max(t.metrics.get("gossip_rounds", 0) - before[n] for n, t in sim.nodes.items())
    assert rounds <= (sim.now - start) / sim.config.gossip_interval + 1


def test_updates_and_deletes_propagate() -> None:
    sim = settled(20)
    sim.put("n0001", "endpoints", "ep1", b"v1")
    sim.run_until(sim.everyone_has("endpoints", "ep1", b"v1"), timeout=5)
    sim.put("n0001", "endpoints", "ep1", b"v2")
    sim.run_until(sim.everyone_has("endpoints", "ep1", b"v2"), timeout=5)
    assert sim.delete("n0001", "endpoints", "ep1")
    sim.measure("N=20 delete", sim.everyone_has("endpoints", "ep1", None), 5)
    kinds = [e.kind for e in sim.events["n0017"]]
    assert kinds == ["create", "update", "delete"]
    assert sim.events["n0017"][-1].value == b"v2"  # a delete carries the last value


def test_concurrent_writes_resolve_the_same_everywhere() -> None:
    sim = settled(20)
    # Same ltime (both clocks at 0): the tie goes to the higher owner name.
    sim.put("n0002", "services", "web", b"from-2")
    sim.put("n0009", "services", "web", b"from-9")
    sim.run(sim.now + 3)
    assert sim.converged()
    assert sim.view("n0000")[("services", "web")] == (b"from-9", "n0009")
    # A writer that has seen more (higher clock) wins whatever its name.
    sim.put("n0001", "services", "web", b"from-1")
    sim.run(sim.now + 3)
    assert sim.converged()
    assert sim.view("n0019")[("services", "web")] == (b"from-1", "n0001")


def test_owner_down_removes_its_entries_everywhere() -> None:
    sim = settled(20)
    for i in range(5):
        sim.put("n0007", "endpoints", f"ep{i}", b"x")
    sim.put("n0008", "endpoints", "other", b"y")
    sim.run(sim.now + 3)
    sim.crash("n0007")
    took = sim.run_until(
        lambda: all(len(t.items("endpoints")) == 1 for t in sim.nodes.values()), timeout=10
    )
    sim.run(sim.now + 3 * sim.config.push_pull_interval)  # anti-entropy must not resurrect
    assert sim.converged()
    assert sim.view("n0000") == {("endpoints", "other"): (b"y", "n0008")}
    assert [e.kind for e in sim.events["n0001"]].count("delete") == 5
    print(f"\n[owner down] entries gone {took:.2f}s after the crash (detect {sim.detect}s)")


def test_partition_then_heal_converges() -> None:
    sim = settled(20)
    left, right = sim.names[:10], sim.names[10:]
    for name in sim.names:
        sim.put(name, "vteps", name, f"ip-{name}".encode())
        sim.put(name, "endpoints", f"ep-{name}", b"before")
    sim.run(sim.now + 2)
    assert sim.converged()
    sim.partition(left, right)
    sim.run(sim.now + 3)  # failure detected on both sides
    assert sim.nodes["n0000"].get("vteps", "n0015") is None
    assert sim.nodes["n0015"].get("vteps", "n0000") is None
    for name in left[:3] + right[:3]:
        sim.put(name, "endpoints", f"ep-{name}", b"during")
        sim.put(name, "endpoints", f"new-{name}", b"during")
    sim.delete("n0004", "endpoints", "ep-n0004")
    sim.delete("n0014", "endpoints", "ep-n0014")
    sim.run(sim.now + 7)  # 10 s of partition in all
    sim.heal(up_after=0.5)
    sim.measure("N=20 heal after 10 s partition (member_up after 0.5 s)", agreed(sim), 30)
    view = sim.view("n0019")
    assert len([k for k in view if k[0] == "vteps"]) == 20
    assert view[("endpoints", "ep-n0001")] == (b"during", "n0001")
    assert view[("endpoints", "new-n0011")] == (b"during", "n0011")
    assert ("endpoints", "ep-n0004") not in view and ("endpoints", "ep-n0014") not in view


def test_restart_with_fresh_clock_wins_over_stale_tombstones() -> None:
    sim = settled(20)
    for v in range(30):  # push n0005's clock well up
        sim.put("n0005", "endpoints", "ep-a", f"v{v}".encode())
    sim.put("n0005", "endpoints", "ep-b", b"old")
    sim.put("n0005", "endpoints", "ep-c", b"old")
    sim.run(sim.now + 2)
    sim.crash("n0005")
    sim.run(sim.now + 3)
    assert sim.nodes["n0000"].entry("endpoints", "ep-a").deleted  # stale tombstone, ltime 30
    # Fresh clock: its puts start at ltime 1 and would lose to the tombstones.
    sim.restart("n0005", {("endpoints", "ep-a"): b"new", ("endpoints", "ep-d"): b"new"})
    sim.measure("N=20 restart, crash detected (member_up after 0.3 s)", agreed(sim), 10)
    view = sim.view("n0012")
    assert view[("endpoints", "ep-a")] == (b"new", "n0005")
    assert view[("endpoints", "ep-d")] == (b"new", "n0005")
    assert ("endpoints", "ep-b") not in view
    assert sim.nodes["n0005"].clock > 30


def test_restart_before_failure_detection_retracts_old_entries() -> None:
    sim = settled(20)
    for v in range(10):
        sim.put("n0005", "endpoints", "ep-a", f"v{v}".encode())
    sim.put("n0005", "endpoints", "ep-b", b"old")
    sim.run(sim.now + 2)
    sim.crash("n0005", detected=False)  # back before SWIM noticed: peers hold live entries
    sim.restart("n0005", {("endpoints", "ep-a"): b"new"})
    sim.measure("N=20 restart, crash not detected", agreed(sim), 10)
    view = sim.view("n0003")
    assert view[("endpoints", "ep-a")] == (b"new", "n0005")
    assert ("endpoints", "ep-b") not in view


def test_tombstones_are_reaped_and_late_copies_do_not_stick() -> None:
    cfg = replace(TableConfig.fast(), reap_interval=5.0)
    sim = settled(20, cfg)
    sim.put("n0001", "endpoints", "ep", b"x")
    sim.run(sim.now + 2)
    # n0019 is cut off (a stuck peer that SWIM does not report as failed) and keeps
    # its live copy through the delete and the reap.
    sim.blackholed.add("n0019")
    sim.delete("n0001", "endpoints", "ep")
    sim.run(sim.now + 2)
    assert sim.nodes["n0000"].entry("endpoints", "ep").deleted
    sim.run(sim.now + cfg.reap_interval + 1)
    assert all(sim.nodes[n].entry("endpoints", "ep") is None for n in sim.alive() if n != "n0019")
    assert sum(t.metrics.get("reaped", 0) for t in sim.nodes.values()) >= 19
    assert sim.nodes["n0019"].get("endpoints", "ep") == b"x"
    sim.blackholed.clear()  # its push/pulls spread the stale copy; the owner retracts it
    took = sim.run_until(sim.everyone_has("endpoints", "ep", None), timeout=20)
    sim.run(sim.now + 3 * cfg.push_pull_interval)
    assert sim.everyone_has("endpoints", "ep", None)()
    print(f"\n[reap] stale copy cleaned {took:.2f}s after the stuck peer came back")


def test_converges_with_10_percent_loss() -> None:
    sim = settled(50, loss=0.10, seed=7)
    for i in range(0, 50, 5):
        sim.put(sim.names[i], "health", sim.names[i], b"ok")
    sim.put("n0003", "published", "8080/tcp", b"svc")
    want = agreed(sim)
    sim.measure(
        "N=50 11 entries, 10% UDP loss", lambda: want() and len(sim.view("n0000")) == 11, 10
    )
    assert sim.stats["lost"] > 0


def test_batches_respect_udp_limit() -> None:
    cfg = replace(TableConfig.fast(), max_udp_size=500)
    sim = settled(10, cfg)
    for i in range(300):
        sim.put("n0000", "endpoints", f"ep{i:03d}", bytes(60))
    sim.put("n0001", "endpoints", "big", bytes(2000))  # fits no UDP packet: goes over TCP
    want = agreed(sim)
    sim.measure(
        "N=10 301 entries, 500-byte UDP", lambda: want() and len(sim.view("n0009")) == 301, 20
    )
    assert 0 < sim.max_udp <= 500
    assert sum(t.metrics.get("sent_oversize_reliable", 0) for t in sim.nodes.values()) > 0
    # Batched: about 6 entries per packet, so far fewer packets than transmissions.
    transmissions = 300 * cfg.retransmit_mult * math.ceil(math.log10(11)) * 10
    assert sim.stats["udp_msgs"] < transmissions / 4


def test_simulation_is_deterministic() -> None:
    def run() -> tuple[View, tuple[tuple[str, int], ...]]:
        sim = settled(15, loss=0.05, seed=3)
        for i in range(15):
            sim.put(sim.names[i], "t", f"k{i % 4}", bytes([i]))
        sim.run(sim.now + 5)
        return sim.view("n0000"), tuple(sorted(sim.stats.items()))

    assert run() == run()
