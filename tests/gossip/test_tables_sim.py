"""Deterministic cluster simulation of the tables layer (``meshnet.testing.tablesim``).

Run with ``-s`` to see the convergence figures each scenario prints.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from meshnet.gossip.tables import TableConfig, TableEvent
from meshnet.testing.tablesim import View, agreed, settled


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
