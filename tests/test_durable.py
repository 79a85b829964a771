"""The durable copy: journal format, torn tails, corruption, compaction, and the tables'
restore / dirty rows / agent-down hooks it relies on."""

from __future__ import annotations

import logging
import math
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from meshnet.durable import COMPACT_SLACK, HEADER, TableJournal, frame, parse, to_entries
from meshnet.gossip import tablecodec as codec
from meshnet.gossip.tablecodec import WireEntry
from meshnet.gossip.tables import Entry, TableConfig, Tables

CFG = TableConfig.fast()


def tables(name: str = "a", *peers: str) -> Tables:
    t = Tables(name, CFG, random.Random(name), 0.0)
    for p in peers:
        t.member_up(p, 0.0)
    t.drain_outbox()
    t.track_dirty = True
    return t


def journal_of(t: Tables, path, wall=1000.0, mono=0.0) -> TableJournal:
    j = TableJournal(path)
    j.open(t.rows(), t.clock, wall, mono)
    return j


def flush(t: Tables, j: TableJournal, wall=1000.0, mono=0.0) -> None:
    j.append(t.drain_dirty(), t.clock, wall, mono)


def loaded(path, wall=1000.0, mono=0.0) -> tuple[Tables, int]:
    p = parse(path.read_bytes())
    assert not p.error and not p.torn
    t = Tables("a", CFG, random.Random(1), mono)
    t.restore(to_entries(p, wall, mono, CFG.reap_interval), p.clock, mono)
    return t, p.clock


def rows(t: Tables) -> set[Entry]:
    return {(e.table, e.key, e.value, e.owner, e.ltime, e.deleted) for e in t.rows()}


def test_changes_round_trip_with_clock_and_tombstones(tmp_path) -> None:
    t = tables("a", "b")
    j = journal_of(t, tmp_path / "j")
    t.put("networks", "n1", b"one", 0.0)
    t.put("endpoints", "e1", b"ep", 0.0)
    t.delete("networks", "n1", 1.0)
    t.handle_message("b", codec.pack_gossip([codec.encode_entry(
        WireEntry("endpoints", "e2", "b", 40, False, b"theirs", 0))]), 1.0)
    flush(t, j, mono=1.0)
    back, clock = loaded(tmp_path / "j", mono=1.0)
    assert clock == t.clock == 40
    assert rows(back) == rows(t)
    tomb = back.entry("networks", "n1")
    assert tomb.deleted and math.isclose(tomb.reap_at, t.entry("networks", "n1").reap_at)
    # restoring marks nothing dirty and queues nothing for gossip
    assert back.drain_dirty() == {} and back.metrics["broadcast_queue"] == 0
    # a local change after the restore wins over everything loaded
    back.put("networks", "n1", b"again", 2.0)
    assert back.entry("networks", "n1").ltime == 41


def test_reaped_rows_and_expired_tombstones_are_not_loaded(tmp_path) -> None:
    t = tables()
    j = journal_of(t, tmp_path / "j")
    t.put("t", "k", b"v", 0.0)
    t.delete("t", "k", 0.0)
    t.put("t", "k2", b"v", 0.0)
    t.delete("t", "k2", 0.0)
    flush(t, j)
    t.tick(CFG.reap_interval + 1)  # both reaped
    assert t.entry("t", "k") is None
    flush(t, j, mono=CFG.reap_interval + 1)
    assert parse((tmp_path / "j").read_bytes()).rows == {}
    # and a tombstone whose (wall-clock) reap time passed while the agent was down
    t = tables()
    j = journal_of(t, tmp_path / "j2")
    t.put("t", "k", b"v", 0.0)
    t.delete("t", "k", 0.0)
    flush(t, j)
    p = parse((tmp_path / "j2").read_bytes())
    assert to_entries(p, 1000.0 + CFG.reap_interval + 1, 0.0, CFG.reap_interval) == []
    assert len(to_entries(p, 1001.0, 0.0, CFG.reap_interval)) == 1


def test_torn_tail_is_cut_with_one_line(tmp_path, caplog) -> None:
    t = tables()
    j = journal_of(t, tmp_path / "j")
    for i in range(5):
        t.put("t", f"k{i}", b"v" * 50, 0.0)
        flush(t, j)
    data = (tmp_path / "j").read_bytes()
    whole = parse(data)
    for cut in range(len(data) - 1, len(data) - 90, -7):
        (tmp_path / "j").write_bytes(data[:cut])
        with caplog.at_level(logging.WARNING):
            caplog.clear()
            p = TableJournal(tmp_path / "j").load()
        assert p is not None and p.rows.items() <= whole.rows.items()
        assert len(caplog.records) == 1 and "torn tail" in caplog.text
        assert (tmp_path / "j").stat().st_size == p.good  # cut, so appends follow good data
    # a last record with a bad checksum is a torn write too
    (tmp_path / "j").write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    p = TableJournal(tmp_path / "j").load()
    assert p is not None and p.torn and not p.error


def test_garbage_is_moved_aside_with_one_line(tmp_path, caplog) -> None:
    t = tables()
    j = journal_of(t, tmp_path / "j")
    t.put("t", "k", b"v", 0.0)
    flush(t, j)
    t.put("t", "k2", b"v", 0.0)
    flush(t, j)
    data = bytearray((tmp_path / "j").read_bytes())
    damaged = {
        "garbage": bytes(random.Random(3).randbytes(2000)),
        "middle": bytes(data[:30]) + b"\x00" + bytes(data[31:]),
        "not ours": frame({"journal": "other"}) + bytes(data[len(frame(HEADER)):]),
    }
    for what, blob in damaged.items():
        (tmp_path / "j").write_bytes(blob)
        with caplog.at_level(logging.WARNING):
            caplog.clear()
            assert TableJournal(tmp_path / "j").load() is None, what
        assert len(caplog.records) == 1 and "unusable" in caplog.text, what
        assert not (tmp_path / "j").exists()
        aside = list(tmp_path.glob("j.corrupt-*"))
        assert aside and aside[0].read_bytes() == blob
        aside[0].unlink()


def test_compaction_keeps_the_file_proportional_to_the_live_rows(tmp_path) -> None:
    t = tables()
    j = journal_of(t, tmp_path / "j")
    for i in range(200):
        t.put("endpoints", f"e{i}", b"x" * 200, 0.0)
    flush(t, j)
    live = j.live_bytes
    for cycle in range(1000):  # churn: one entry deleted and made again, many times
        t.delete("endpoints", f"e{cycle % 200}", 0.0)
        flush(t, j)
        t.put("endpoints", f"e{cycle % 200}", b"y" * 200, 0.0)
        flush(t, j)
        t.tick(cycle * 0.1)
        if j.needs_compaction():
            j.compact(t.rows(), t.clock, 1000.0, 0.0)
        assert j.file_bytes <= 1.5 * j.live_bytes + COMPACT_SLACK + 2048
    assert j.counters["compactions"] > 1
    assert (tmp_path / "j").stat().st_size == j.file_bytes
    assert j.file_bytes <= 2 * live + COMPACT_SLACK
    back, _ = loaded(tmp_path / "j")
    assert rows(back) == rows(t)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_parse_never_raises(blob: bytes) -> None:
    p = parse(blob)
    assert p.good <= len(blob)
    p = parse(frame(HEADER) + blob)
    assert p.good >= len(frame(HEADER)) or p.error


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["put", "delete"]), st.integers(0, 9),
                          st.binary(min_size=1, max_size=20)), max_size=40),
       st.integers(0, 10_000))
def test_any_prefix_of_a_journal_is_an_earlier_state(ops, cut) -> None:
    """What a crash can leave (a prefix) replays to the state after some whole batch."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        t = tables()
        j = journal_of(t, Path(d) / "j")
        states = [dict(parse((Path(d) / "j").read_bytes()).rows)]
        for op, k, v in ops:
            if op == "put":
                t.put("t", f"k{k}", v, 0.0)
            else:
                t.delete("t", f"k{k}", 0.0)
            flush(t, j)
            states.append(dict(parse((Path(d) / "j").read_bytes()).rows))
        data = (Path(d) / "j").read_bytes()
        p = parse(data[:cut % (len(data) + 1)])
        assert not p.error
        assert p.rows in states or p.good < len(frame(HEADER))


def test_unreachable_member_keeps_its_entries_until_down() -> None:
    t = tables("a", "b")
    t.handle_message("b", codec.pack_gossip([codec.encode_entry(
        WireEntry("endpoints", "e", "b", 5, False, b"ep", 0))]), 0.0)
    t.drain_events()
    t.member_unreachable("b")
    assert t.get("endpoints", "e") == b"ep" and t.metrics["up_members"] == 0
    assert t.owners() == {"b"}
    t.member_down("b", 1.0, failed=True)
    assert t.get("endpoints", "e") is None
    assert [e.kind for e in t.drain_events()] == ["delete"]
