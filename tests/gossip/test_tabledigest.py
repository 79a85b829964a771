"""Anti-entropy by digest: equal tables exchange one digest and no row; a difference
is repaired both ways for the owners that differ, and only for them."""

from __future__ import annotations

import random

import pytest

from meshnet.gossip import tablecodec as codec
from meshnet.gossip.tablecodec import DigestMsg, SyncMsg, TableDecodeError, WireEntry
from meshnet.gossip.tabledigest import differing, digest
from meshnet.gossip.tables import TableConfig, Tables
from meshnet.gossip.tabletypes import Entry

CFG = TableConfig.fast()


def entry(key, owner, ltime, deleted=False, table="t"):
    return Entry(table=table, key=key, value=b"" if deleted else b"v", owner=owner,
                 ltime=ltime, deleted=deleted, reap_at=10.0 if deleted else float("inf"))


def test_digest_is_order_free_ignores_tombstones_and_sees_every_change():
    rows = [entry("k1", "a", 1), entry("k2", "a", 2), entry("k3", "b", 3),
            entry("gone", "a", 4, deleted=True)]
    d = digest(rows)
    assert d == digest(list(reversed(rows)))
    assert set(d) == {"a", "b"} and d["a"][0] == 2
    assert digest(rows[:3]) == d  # the tombstone changes nothing
    assert digest([entry("k1", "a", 9), *rows[1:]])["a"] != d["a"]  # newer version
    assert digest(rows[1:])["a"] != d["a"]  # a row missing
    theirs = [(o, n, h) for o, (n, h) in digest([entry("k1", "a", 1), entry("k2", "a", 2),
                                                 entry("x", "c", 1)]).items()]
    assert differing(d, theirs) == ["b", "c"]


def test_codec_round_trip_and_strictness():
    d = {"a": (2, 2**64 - 1), "b": (1, 0)}
    msg = codec.decode(codec.pack_digest(d))
    assert isinstance(msg, DigestMsg)
    assert msg.digest == (("a", 2, 2**64 - 1), ("b", 1, 0))
    e = WireEntry("t", "k", "a", 3, False, b"v", 0)
    [payload] = codec.chunk_sync(True, ["a", "b"], [codec.encode_entry(e)], 1 << 20)
    msg = codec.decode(payload)
    assert isinstance(msg, SyncMsg) and msg.reply and msg.owners == ("a", "b")
    assert msg.entries == (e,)
    parts = codec.chunk_sync(True, ["a"], [codec.encode_entry(e)] * 50, 400)
    assert len(parts) > 1 and [codec.decode(p).reply for p in parts][:2] == [True, False]
    with pytest.raises(TableDecodeError):
        codec.decode(codec.PREFIX + codec.msgpack.packb([3, [["a", -1, 0]]]))
    with pytest.raises(TableDecodeError):
        codec.decode(codec.PREFIX + codec.msgpack.packb([4, True, [""], []]))


def pair():
    a = Tables("a", CFG, random.Random(1), 0.0)
    b = Tables("b", CFG, random.Random(2), 0.0)
    for t, other in ((a, "b"), (b, "a")):
        t.member_up(other, 0.0)
    run(a, b, 0.0, 0.5)
    return a, b


def run(a, b, start, end, lose=False):
    """Tick both nodes every 10 ms from ``start`` to ``end``, carrying every message
    (none with ``lose``); returns the TCP messages carried, by kind, and their bytes."""
    nodes = {"a": a, "b": b}
    kinds: dict[str, int] = {}
    nbytes = 0
    now = start
    while now <= end:
        for t in (a, b):
            t.tick(now)
        moved = True
        while moved:
            moved = False
            for t in (a, b):
                for out in t.drain_outbox():
                    moved = True
                    if lose:
                        continue
                    if out.reliable:
                        kind = type(codec.decode(out.payload)).__name__
                        kinds[kind] = kinds.get(kind, 0) + 1
                        nbytes += len(out.payload)
                    nodes[out.node].handle_message(t.node, out.payload, now)
        now = round(now + 0.01, 6)
    return kinds, nbytes


def test_agreeing_nodes_exchange_digests_and_no_row():
    a, b = pair()
    for i in range(200):
        a.put("t", f"a{i}", b"x" * 50, 0.5)
        b.put("t", f"b{i}", b"y" * 50, 0.5)
    run(a, b, 0.5, 5.0)
    assert len(a.rows()) == 400 and digest(a.rows()) == digest(b.rows())
    equal = a.metrics["digest_equal"] + b.metrics["digest_equal"]
    kinds, nbytes = run(a, b, 5.0, 5.0 + 10 * CFG.push_pull_interval)
    assert set(kinds) == {"DigestMsg"} and kinds["DigestMsg"] >= 10, kinds
    assert nbytes < 100 * kinds["DigestMsg"], nbytes  # the whole state: ~30 KB each way
    assert a.metrics["digest_equal"] + b.metrics["digest_equal"] - equal == kinds["DigestMsg"]


def test_missed_gossip_is_repaired_both_ways_for_the_differing_owners_only():
    a, b = pair()
    a.put("t", "shared", b"s", 0.5)
    run(a, b, 0.5, 1.0)
    a.put("t", "only-a", b"1", 1.0)
    b.put("t", "only-b", b"2", 1.0)
    run(a, b, 1.0, 1.5, lose=True)  # every retransmission of both is lost
    assert a.get("t", "only-b") is None and b.get("t", "only-a") is None
    assert a.metrics["broadcast_queue"] == 0 and b.metrics["broadcast_queue"] == 0
    kinds, _ = run(a, b, 1.5, 1.5 + 2 * CFG.push_pull_interval)
    assert kinds.get("SyncMsg", 0) >= 2 and "PushPullMsg" not in kinds, kinds
    assert a.get("t", "only-b") == b"2" and b.get("t", "only-a") == b"1"
    assert digest(a.rows()) == digest(b.rows())


def test_sync_carries_only_the_differing_owners_rows():
    t = Tables("c", CFG, random.Random(3), 0.0)
    t.member_up("d", 0.0)
    for i in range(50):
        t.put("t", f"c{i}", b"z", 0.1)
    t.handle_message("d", codec.pack_gossip([codec.encode_entry(
        WireEntry("t", "d1", "d", 1, False, b"v", 0))]), 0.1)
    t.drain_outbox()
    theirs = {"c": digest(t.rows())["c"]}  # agrees on c, has nothing of d
    t.handle_message("d", codec.pack_digest(theirs), 0.2)
    [out] = t.drain_outbox()
    msg = codec.decode(out.payload)
    assert isinstance(msg, SyncMsg) and msg.owners == ("d",)
    assert [e.key for e in msg.entries] == ["d1"]
