"""Tables core driven directly: local API, conflict rule, owner rules, timers, faults."""

from __future__ import annotations

import random
from dataclasses import replace

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshnet.gossip import tablecodec as codec
from meshnet.gossip.tablecodec import GossipMsg, PushPullMsg, WireEntry
from meshnet.gossip.tables import Outgoing, TableConfig, TableEvent, Tables

CFG = TableConfig.fast()


def make(name: str = "a", *peers: str, now: float = 0.0) -> Tables:
    t = Tables(name, CFG, random.Random(name), now)
    for p in peers:
        t.member_up(p, now)
    t.drain_outbox()
    return t


def gossip(*entries: WireEntry) -> bytes:
    return codec.pack_gossip([codec.encode_entry(e) for e in entries])


def live(key: str, owner: str, ltime: int, value: bytes = b"v", table: str = "t") -> WireEntry:
    return WireEntry(table, key, owner, ltime, False, value, 0)


def tomb(key: str, owner: str, ltime: int, reap_ms: int = 5000) -> WireEntry:
    return WireEntry("t", key, owner, ltime, True, b"", reap_ms)


def sent_entries(out: list[Outgoing]) -> list[WireEntry]:
    return [e for o in out for e in getattr(codec.decode(o.payload), "entries", ())]


def test_put_get_items_events() -> None:
    t = make()
    t.put("t", "k1", b"one", 0.0)
    t.put("t", "k0", b"zero", 0.0)
    t.put("t", "k1", b"uno", 0.0)
    t.put("t", "k1", b"uno", 0.0)  # same value we own: no-op
    assert t.get("t", "k1") == b"uno"
    assert [e.key for e in t.items("t")] == ["k0", "k1"]
    assert t.drain_events() == [
        TableEvent("create", "t", "k1", b"one", "a"),
        TableEvent("create", "t", "k0", b"zero", "a"),
        TableEvent("update", "t", "k1", b"uno", "a"),
    ]
    assert t.delete("t", "k1", 0.0)
    assert not t.delete("t", "k1", 0.0)
    assert t.get("t", "k1") is None and t.entry("t", "k1").deleted
    assert t.drain_events() == [TableEvent("delete", "t", "k1", b"uno", "a")]
    assert t.clock == 4


def test_local_misuse_raises() -> None:
    t = make()
    with pytest.raises(TypeError):
        t.put("t", "k", "str", 0.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        t.put("", "k", b"", 0.0)
    with pytest.raises(ValueError):
        TableConfig(fanout=0)
    with pytest.raises(ValueError):
        TableConfig(max_udp_size=100)


def test_cannot_delete_someone_elses_entry() -> None:
    t = make("a", "b")
    t.handle_message("b", gossip(live("k", "b", 3)), 0.0)
    assert t.get("t", "k") == b"v"
    assert t.delete("t", "k", 0.0) is False
    assert t.get("t", "k") == b"v"


@pytest.mark.parametrize(
    ("first", "second", "winner"),
    [
        (live("k", "b", 5, b"old"), live("k", "c", 6, b"new"), b"new"),  # higher ltime
        (live("k", "c", 6, b"new"), live("k", "b", 5, b"old"), b"new"),  # order-independent
        (live("k", "b", 5, b"b"), live("k", "c", 5, b"c"), b"c"),  # tie: higher owner
        (live("k", "c", 5, b"c"), live("k", "b", 5, b"b"), b"c"),
        (live("k", "b", 5), tomb("k", "b", 6), None),  # newer delete
        (tomb("k", "b", 6), live("k", "b", 5), None),  # old update after the delete
        (tomb("k", "b", 5), live("k", "b", 5, b"x"), b"x"),  # equal: live beats tombstone
    ],
)
def test_conflict_rule(first: WireEntry, second: WireEntry, winner: bytes | None) -> None:
    t = make("a", "b", "c")
    t.handle_message("x", gossip(first), 0.0)
    t.handle_message("x", gossip(second), 0.0)
    assert t.get("t", "k") == winner
    assert t.clock == max(first.ltime, second.ltime)  # witnessed


def test_local_put_wins_over_everything_seen() -> None:
    t = make("a", "b")
    t.handle_message("b", gossip(live("k", "b", 40)), 0.0)
    t.put("t", "k", b"mine", 0.0)
    e = t.entry("t", "k")
    assert (e.owner, e.ltime, e.value) == ("a", 41, b"mine")


def test_member_down_tombstones_and_refuses_until_up() -> None:
    t = make("a", "b", "c")
    t.handle_message("b", gossip(live("k1", "b", 3), live("k2", "c", 4)), 0.0)
    t.drain_events()
    t.member_down("b", 1.0, failed=True)
    assert t.get("t", "k1") is None and t.get("t", "k2") == b"v"
    assert t.drain_events() == [TableEvent("delete", "t", "k1", b"v", "b")]
    t.handle_message("c", gossip(live("k1", "b", 3)), 1.0)  # a lagging peer re-sends it
    t.handle_message("c", gossip(live("k3", "b", 4)), 1.0)  # or b is back already
    assert t.get("t", "k1") is None and t.get("t", "k3") is None
    assert t.metrics["held_owner_down"] == 1 and t.metrics["stale_for_down_owner"] == 1
    t.member_up("b", 2.0)  # held entries are merged now; the stale copy stays out
    assert t.get("t", "k1") is None and t.get("t", "k3") == b"v"
    assert t.drain_events() == [TableEvent("create", "t", "k3", b"v", "b")]
    # b republishes when it hears of the tombstone we made (the nudge, just sent).
    (nudge,) = [o for o in t.drain_outbox() if not o.reliable]  # + an up push/pull
    # (tombstone made at t=1, sent at t=2: the residual reap time travels with it)
    left_ms = int((CFG.reap_interval - 1) * 1000)
    assert nudge.node == "b" and sent_entries([nudge]) == [tomb("k1", "b", 3, left_ms)]


def test_held_entries_are_bounded_and_forgotten() -> None:
    t = Tables("a", replace(CFG, held_per_down_node=2), random.Random(1), 0.0)
    t.member_up("b", 0.0)
    t.member_down("b", 0.0, failed=False)
    t.handle_message("c", gossip(*(live(f"k{i}", "b", 3) for i in range(3))), 0.0)
    assert t.metrics["dropped_held_overflow"] == 1
    t.tick(CFG.down_memory + 1)
    t.member_up("b", CFG.down_memory + 1)
    assert t.items("t") == []


def test_owner_republishes_over_stale_tombstone() -> None:
    t = make("a", "b")
    t.put("t", "k", b"mine", 0.0)
    t.handle_message("b", gossip(tomb("k", "a", 1)), 0.1)  # equal ltime, from a down-view
    e = t.entry("t", "k")
    assert (e.value, e.ltime, e.deleted) == (b"mine", 2, False)
    t.handle_message("b", gossip(live("k", "a", 9, b"pre-crash")), 0.1)
    e = t.entry("t", "k")
    assert (e.value, e.ltime) == (b"mine", 10)
    assert t.metrics["republished"] == 2
    t.handle_message("b", gossip(live("k", "a", 10, b"mine")), 0.1)  # echo: nothing
    assert t.metrics["republished"] == 2


def test_owner_redeletes_and_retracts_unknown_entries() -> None:
    t = make("a", "b")
    t.put("t", "gone", b"x", 0.0)
    t.delete("t", "gone", 0.0)  # ltime 2
    t.handle_message("b", gossip(live("gone", "a", 5)), 0.0)
    e = t.entry("t", "gone")
    assert e.deleted and e.ltime == 6
    t.handle_message("b", gossip(live("never", "a", 7)), 0.0)  # pre-restart leftover
    e = t.entry("t", "never")
    assert e.deleted and e.owner == "a" and e.ltime == 8
    assert t.metrics["retracted"] == 1
    t.tick(1.0)
    out = sent_entries(t.drain_outbox())
    assert {(e.key, e.ltime, e.deleted) for e in out} == {("gone", 6, True), ("never", 8, True)}


def test_overwrite_by_other_owner_is_not_fought() -> None:
    t = make("a", "b")
    t.put("t", "k", b"mine", 0.0)
    t.handle_message("b", gossip(live("k", "b", 5, b"theirs")), 0.0)
    assert t.entry("t", "k").owner == "b"
    assert t.metrics.get("republished", 0) == 0
    assert t.delete("t", "k", 0.0) is False


def test_stale_gossip_from_owner_gets_a_correction() -> None:
    t = make("a", "b")
    t.handle_message("b", gossip(live("k", "b", 9, b"new")), 0.0)
    t.drain_outbox()
    t.handle_message("b", gossip(live("k", "b", 2, b"old")), 0.0)
    (out,) = t.drain_outbox()
    assert out.node == "b" and not out.reliable
    assert codec.decode(out.payload) == GossipMsg((live("k", "b", 9, b"new"),))


def test_push_pull_answers_with_state_before_merge() -> None:
    t = make("a", "b")
    t.put("t", "mine", b"1", 0.0)
    t.drain_outbox()
    req = codec.chunk_push_pull(True, [codec.encode_entry(live("theirs", "b", 3))], 10_000)
    t.handle_message("b", req[0], 0.0)
    (out,) = t.drain_outbox()
    assert out.reliable and out.node == "b"
    msg = codec.decode(out.payload)
    assert isinstance(msg, PushPullMsg) and not msg.reply
    assert [e.key for e in msg.entries] == ["mine"]
    assert t.get("t", "theirs") == b"v"
    assert t.metrics["broadcast_queue"] == 1  # push/pull news is not re-gossiped


def test_gossip_round_and_deadlines() -> None:
    t = make("a")
    t.put("t", "k", b"v", 0.0)
    assert t.next_deadline() > CFG.gossip_interval  # nobody to gossip to
    t.member_up("b", 0.0)
    t.drain_outbox()  # the up-sync
    assert t.next_deadline() == pytest.approx(CFG.gossip_interval)
    t.tick(t.next_deadline())
    (out,) = t.drain_outbox()
    assert out == Outgoing("b", out.payload, False)
    assert sent_entries([out])[0].key == "k"
    # n = 2 members -> 4 * ceil(log10(3)) = 4 transmits in all
    for i in range(2, 10):
        t.tick(i * CFG.gossip_interval)
    assert len(t.drain_outbox()) == 3
    assert t.metrics["broadcast_queue"] == 0
    assert t.next_deadline() > 9 * CFG.gossip_interval


def test_up_sync_and_periodic_push_pull() -> None:
    t = make("a")
    t.member_up("b", 0.0)
    (out,) = t.drain_outbox()
    assert out.reliable and codec.decode(out.payload).reply
    t.member_up("b", 0.0)  # already up: nothing
    assert t.drain_outbox() == []
    t.tick(3 * CFG.push_pull_interval)
    assert [o.reliable for o in t.drain_outbox()] == [True]


def test_tombstones_are_reaped_with_residual_time() -> None:
    t = make("a", "b")
    t.handle_message("b", gossip(tomb("k", "b", 3, reap_ms=2000)), 0.0)
    assert t.entry("t", "k").reap_at == pytest.approx(2.0)
    t.put("t", "mine", b"x", 0.0)
    t.delete("t", "mine", 0.0)
    t.tick(2.5)
    assert t.entry("t", "k") is None and t.entry("t", "mine") is not None
    t.tick(CFG.reap_interval + 0.1)
    assert t.entry("t", "mine") is None
    assert t.metrics["reaped"] == 2
    assert t.table_names() == []


def test_malformed_input_is_counted_not_raised() -> None:
    t = make("a", "b")
    t.handle_message("b", b"", 0.0)
    t.handle_message("b", b"m\x07\x90", 0.0)
    t.handle_message("b", b"m\x01" + msgpack.packb([1, [["t"]]]), 0.0)
    m = t.metrics
    assert (m["dropped_short"], m["dropped_bad_version"], m["dropped_bad_entry"]) == (1, 1, 1)
    assert m["dropped"] == 3 and m["recv_msgs"] == 3


def _valid_payloads() -> list[bytes]:
    es = [live("k", "b", 3, b"x" * 40), tomb("k2", "a", 4), live("k3", "a", 2)]
    return [
        gossip(*es),
        *codec.chunk_push_pull(True, [codec.encode_entry(e) for e in es], 10_000),
    ]


@settings(max_examples=400, deadline=None)
@given(
    base=st.sampled_from(_valid_payloads()),
    edits=st.lists(
        st.tuples(
            st.sampled_from(["flip", "cut", "insert", "dup"]),
            st.integers(0, 400),
            st.binary(min_size=1, max_size=4),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_mutated_messages_never_raise(base: bytes, edits: list[tuple[str, int, bytes]]) -> None:
    data = bytearray(base)
    for op, pos, blob in edits:
        i = pos % (len(data) + 1)
        if op == "flip" and data:
            data[i % len(data)] ^= blob[0] or 1
        elif op == "cut":
            del data[i:]
        elif op == "insert":
            data[i:i] = blob
        else:
            data += data[i:]
    t = make("a", "b")
    t.put("t", "k3", b"mine", 0.0)
    t.handle_message("b", bytes(data), 1.0)
    t.tick(2.0)
    t.drain_outbox()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_raise(data: bytes) -> None:
    t = make("a", "b")
    for payload in (data, b"m\x01" + data):
        t.handle_message("b", payload, 0.0)
    assert t.metrics["recv_msgs"] == 2


def test_large_state_is_split_into_reliable_chunks() -> None:
    cfg = replace(CFG, max_reliable_size=2000)
    a = Tables("a", cfg, random.Random(1), 0.0)
    b = Tables("b", cfg, random.Random(2), 0.0)
    for i in range(100):
        a.put("t", f"k{i}", bytes(50), 0.0)
    a.member_up("b", 0.0)
    chunks = a.drain_outbox()
    assert len(chunks) > 3 and all(o.reliable and len(o.payload) <= 2000 for o in chunks)
    for o in chunks:
        b.handle_message("a", o.payload, 0.1)
    assert len(b.items("t")) == 100
    assert len(b.drain_outbox()) == 1  # one (empty) answer to the one reply request
