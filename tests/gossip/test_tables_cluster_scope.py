"""Cluster-scoped tables: entries that outlive their owner (networks, services)."""

from __future__ import annotations

import random
from dataclasses import replace

from meshnet.gossip import tablecodec as codec
from meshnet.gossip.tablecodec import WireEntry
from meshnet.gossip.tables import TableConfig, Tables

CFG = replace(TableConfig.fast(), cluster_tables=frozenset({"networks"}))


def make(name: str, *peers: str) -> Tables:
    t = Tables(name, CFG, random.Random(name), 0.0)
    for p in peers:
        t.member_up(p, 0.0)
    t.drain_outbox()
    return t


def deliver(src: Tables, dst: Tables, now: float = 0.0) -> None:
    src.tick(now + 1)
    for out in src.drain_outbox():
        if out.node == dst.node:
            dst.handle_message(src.node, out.payload, now)


def gossip(*entries: WireEntry) -> bytes:
    return codec.pack_gossip([codec.encode_entry(e) for e in entries])


def test_cluster_entries_survive_owner_down_node_entries_do_not():
    b = make("b", "a")
    b.handle_message("a", gossip(WireEntry("networks", "app", "a", 5, False, b"n", 0),
                                 WireEntry("endpoints", "e1", "a", 6, False, b"e", 0)), 0.0)
    assert b.get("networks", "app") == b"n" and b.get("endpoints", "e1") == b"e"
    b.member_down("a", 1.0, failed=True)
    assert b.get("networks", "app") == b"n"
    assert b.get("endpoints", "e1") is None
    # while a is down, a fresh cluster entry of its is applied, not held
    b.handle_message("c", gossip(WireEntry("networks", "db", "a", 9, False, b"d", 0)), 2.0)
    assert b.get("networks", "db") == b"d"


def test_restarted_owner_adopts_its_cluster_entries_instead_of_retracting():
    a = make("a", "b")  # restarted: holds nothing, clock 0
    a.handle_message("b", gossip(WireEntry("networks", "app", "a", 5, False, b"n", 0)), 0.0)
    assert a.get("networks", "app") == b"n"
    assert a.metrics.get("retracted", 0) == 0
    # a node-scoped leftover is still retracted
    a.handle_message("b", gossip(WireEntry("endpoints", "old", "a", 4, False, b"e", 0)), 0.0)
    assert a.get("endpoints", "old") is None and a.metrics["retracted"] == 1


def test_any_node_may_delete_a_cluster_entry_and_the_delete_spreads():
    a, b = make("a", "b"), make("b", "a")
    a.put("networks", "app", b"n", 0.0)
    assert not b.delete("networks", "app", 0.0)  # b has not heard of it yet
    deliver(a, b)
    assert b.get("networks", "app") == b"n"
    assert b.delete("networks", "app", 1.0)
    assert not b.delete("endpoints", "x", 1.0)
    deliver(b, a, 1.0)
    assert a.get("networks", "app") is None
    assert a.metrics.get("republish_all", 0) == 0  # the owner does not fight the delete




def test_a_delete_made_across_a_partition_survives_the_heal():
    """a, cut off from b, deletes a cluster entry b owns and removes b's node-scoped
    entries (b is down for it). On the heal b hears of that removal first and
    republishes its node-scoped entries: that must not re-put the cluster entry above
    a's delete (the owner's name ranks higher: an equal ltime would go to it)."""
    a, b = make("a", "b"), make("b", "a")
    b.put("networks", "n0", b"x", 0.0)
    b.put("endpoints", "ep", b"e", 0.0)
    deliver(b, a)
    assert a.get("networks", "n0") == b"x" and a.get("endpoints", "ep") == b"e"
    a.member_down("b", 1.0, failed=True)  # the partition, as a sees it
    assert a.get("endpoints", "ep") is None
    assert a.delete("networks", "n0", 2.0)
    a.drain_outbox()  # lost: b is unreachable

    def wire(t: Tables, table: str, key: str) -> WireEntry:
        e = t.entry(table, key)
        return WireEntry(table, key, e.owner, e.ltime, e.deleted, e.value, 5000)
    # the heal: a's first word to b is its tombstone of b's own endpoint (the nudge)
    b.handle_message("a", gossip(wire(a, "endpoints", "ep")), 3.0)
    assert b.metrics["republish_all"] == 1 and b.get("endpoints", "ep") == b"e"
    # then a's delete reaches b, and b's republished entries reach a
    b.handle_message("a", gossip(wire(a, "networks", "n0")), 3.0)
    a.member_up("b", 3.0)
    deliver(b, a, 3.0)
    deliver(a, b, 3.0)
    for t in (a, b):
        assert t.get("networks", "n0") is None, t.node
        assert t.get("endpoints", "ep") == b"e", t.node
