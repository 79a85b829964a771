"""Replicated cluster tables (the job Docker's NetworkDB does), as a sans-IO core.

What it holds
    Entries keyed by ``(table, key)``: value bytes, owner node, Lamport time, deleted
    flag (tombstone) and, for tombstones, a reap deadline. The layer is generic; meshnet
    uses tables such as "vteps", "networks", "endpoints", "services", "health",
    "published". Per node: one ``Entry`` per key ever seen and not yet reaped, one
    pending broadcast per recently changed key, one small record per node known down.

How it talks (through the membership layer, never to sockets)
    ``member_up`` / ``member_down`` say who is in the cluster; ``handle_message`` takes
    what a peer sent; ``drain_outbox`` returns ``Outgoing`` messages (unreliable = UDP,
    at most ``max_udp_size`` bytes; reliable = TCP); ``tick(now)`` runs timers and
    ``next_deadline()`` says when to call it next. Wire format: ``tablecodec.py``.

Conflict rule (a total order, so every node picks the same winner whatever the
arrival order): compare ``(ltime, owner, live, value)``; higher wins. ``live`` ranks
above a tombstone only at an equal ltime of the same owner, which happens only for
the local tombstones made when an owner goes down (below): the owner's own deletes
always carry a fresh, higher ltime.

Clock: one Lamport clock per node. It witnesses every ltime it receives and goes up
by one for each local put/delete, so a local change wins over everything seen so far.

Dissemination
    * Gossip: each accepted change (local, or new to us from gossip) is queued once
      per key and sent on gossip rounds every ``gossip_interval`` to ``fanout`` random
      up members, ``retransmit_mult * ceil(log10(n + 1))`` times in all, batched up to
      ``max_udp_size`` (``packets_per_target`` packets per target per round). An
      entry too big for one UDP packet goes reliably instead. Rounds are at least
      ``gossip_interval`` apart, but a node that had nothing to send for a whole
      interval sends its first round at once (``next_deadline`` is then <= now), so an
      idle cluster forwards news at network speed and then settles into rounds.
    * Anti-entropy: every ``push_pull_interval`` (jittered, and stretched like
      memberlist's for clusters over 32 nodes) a *digest* (per owner: live rows and a
      hash of them, ``tabledigest``) goes to one random up member over TCP. If they
      agree, that is all. Otherwise it answers with a *sync*: its rows of the owners
      that differ, asking for ours of the same owners (sent as they were before
      merging), so both converge on those owners. Entries learned this way are *not*
      re-gossiped (a joining node would otherwise re-flood the whole table); fresh
      changes always are. A full push/pull (the whole state both ways) is what a
      member that comes up gets:
    * When a member comes up we push/pull with it at once, but with probability
      ``min(1, up_sync_fanout / n_up)`` and at most ``up_sync_burst`` per gossip
      interval: a restarted node is synced by about ``up_sync_fanout`` peers instead of
      all of them (no thundering herd), and after a partition heals each side still
      syncs with the other through several pairs; periodic push/pull covers the rest.
    * Gossip from the owner of an entry that is older than ours is answered directly
      with our newer copy ("correction"), so a restarted owner learns fast.

Owner down, restart, heal
    * ``member_down`` (failed or left): every live entry owned by that node becomes a
      local tombstone at the same ltime (delete event, not gossiped: every node does it
      itself). While the node stays down, live entries it owns are not applied but
      *held* (newest per key, at most ``held_per_down_node``, only if newer than what
      we store): stale copies relayed by slow peers cannot resurrect them, and if the
      node comes back (``member_up`` may reach us after its first fresh gossip does)
      the held entries are merged then.
    * The owner republishes: when it learns of an entry claiming to be its own, for a
      key where it holds a live entry, at an ltime >= its own and different from it
      (the tombstones others made when it went down, or its pre-restart entries), it
      moves its clock past that ltime and re-puts *all* its live entries (that peer
      removed or holds stale copies of all of them). A live copy of an entry it holds
      as deleted is deleted again at a higher ltime; a live entry of its own that it
      does not hold at all (pre-restart leftovers) is retracted with a tombstone at a
      higher ltime. Entries written by *other* owners are legitimate overwrites and
      are never fought (two writers would otherwise fight forever).
    * On ``member_up`` of a node whose entries we removed, we send it a few of those
      tombstones (one small UDP packet), which is enough to make it republish; so a
      healed or restarted node wins back its entries within a few gossip rounds even
      if no push/pull picked it.
    * Only the application knows what should exist after a restart: it re-puts what it
      still has; until then peers may see our old entries retracted and re-created.

Reaping and its trade-off
    Tombstones are dropped ``reap_interval`` after the delete; the residual reap time
    travels with each tombstone so the cluster reaps at about the same moment. After
    that, an old live copy from a peer that missed the delete (lost or partitioned for
    longer than ``reap_interval``) is accepted again as new. It does not stay: if the
    owner is up, it sees a live entry claiming to be its own that it does not hold and
    retracts it with a newer tombstone; if the owner is down, its live entries are
    held back for ``down_memory`` seconds (and retracted by it if it returns). The
    application sees such a flap as create + delete. A longer ``reap_interval``
    (NetworkDB: 30 min) makes flaps rarer at the cost of memory (a tombstone is about
    100 bytes); keep it well above the (scaled) push/pull period so that an ordinary
    lost gossip is repaired by anti-entropy before the reap. No per-owner "reaped up
    to ltime" floor is kept: it would also reject legitimate older entries that a node
    simply had not seen yet (say, after a partition).
"""

from __future__ import annotations

import heapq
import logging
import math
import random
from collections import Counter
from dataclasses import dataclass, field

from meshnet.gossip import tablecodec as codec
from meshnet.gossip.tablecodec import DigestMsg, GossipMsg, SyncMsg, TableDecodeError, WireEntry
from meshnet.gossip.tabledigest import differing, digest
from meshnet.gossip.tablequeue import BroadcastQueue
from meshnet.gossip.tabletypes import Entry, EventKind, Outgoing, TableConfig, TableEvent

__all__ = ["Entry", "EventKind", "Outgoing", "TableConfig", "TableEvent", "Tables"]

log = logging.getLogger(__name__)

_NUDGE_MAX = 8  # tombstones sent to a returning node (see Tables._nudge)


def _rank(e: WireEntry) -> tuple[int, str, bool, bytes]:
    return (e.ltime, e.owner, not e.deleted, e.value)


@dataclass
class _Down:
    """A node we were told is down, and live entries of its that arrived since."""

    since: float
    held: dict[tuple[str, str], tuple[WireEntry, bool]] = field(default_factory=dict)
    removed: list[tuple[str, str]] = field(default_factory=list)  # keys we tombstoned


@dataclass
class _UpSet:
    """Up members with O(1) add, remove and random sampling."""

    names: list[str] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)

    def add(self, node: str) -> bool:
        if node in self.index:
            return False
        self.index[node] = len(self.names)
        self.names.append(node)
        return True

    def remove(self, node: str) -> bool:
        i = self.index.pop(node, None)
        if i is None:
            return False
        last = self.names.pop()
        if last != node:
            self.names[i] = last
            self.index[last] = i
        return True


class Tables:
    """The replicated tables of one node. Not thread-safe; one owner drives it."""

    def __init__(self, node: str, config: TableConfig, rng: random.Random, now: float) -> None:
        codec.check_node(node)
        self.node = node
        self.config = config
        self._rng = rng
        self._clock = 0
        self._store: dict[str, dict[str, Entry]] = {}
        self._reap: list[tuple[float, str, str]] = []  # heap; stale items are skipped
        self._up = _UpSet()
        self._down: dict[str, _Down] = {}
        self._queue = BroadcastQueue()
        self._outbox: list[Outgoing] = []
        self._events: list[TableEvent] = []
        self._corrections: dict[str, list[bytes]] = {}
        self._counters: Counter[str] = Counter()
        self._logged: set[str] = set()
        self._next_gossip = now + config.gossip_interval
        self._next_push_pull = now + self._push_pull_period() * self._rng.random()
        self._up_sync_window = now
        self._up_syncs = 0
        #: rows changed since the last drain_dirty (None: the row was reaped), for the
        #: durable copy; only filled once ``track_dirty`` is set
        self.track_dirty = False
        self._dirty: dict[tuple[str, str], Entry | None] = {}

    # --- local API ------------------------------------------------------------------

    @property
    def clock(self) -> int:
        return self._clock

    def put(self, table: str, key: str, value: bytes, now: float) -> None:
        """Create or overwrite ``(table, key)``; we become its owner.

        Putting the value we already own and hold live is a no-op (no traffic).
        """
        codec.check_table(table)
        codec.check_key(key)
        codec.check_value(value)
        cur = self._entry(table, key)
        if cur and not cur.deleted and cur.owner == self.node and cur.value == value:
            return
        self._clock += 1
        self._publish(Entry(table, key, value, self.node, self._clock), now)

    def delete(self, table: str, key: str, now: float) -> bool:
        """Delete an entry we own; returns False (and changes nothing) otherwise.

        Not raising for someone else's entry is deliberate: another node may have
        overwritten the key a moment ago, so the caller cannot know.
        """
        codec.check_table(table)
        codec.check_key(key)
        cur = self._entry(table, key)
        if cur is None or cur.deleted:
            return False
        if cur.owner != self.node:
            if table not in self.config.cluster_tables:
                return False
            # a cluster-scoped entry: the deleter owns the (newer) tombstone
            cur = Entry(cur.table, cur.key, b"", self.node, cur.ltime)
        self._clock += 1
        self._publish(self._tombstone_of(cur, self._clock, now), now)
        return True

    def get(self, table: str, key: str) -> bytes | None:
        cur = self._entry(table, key)
        return None if cur is None or cur.deleted else cur.value

    def entry(self, table: str, key: str) -> Entry | None:
        """The stored row, tombstones included (diagnostics and tests)."""
        return self._entry(table, key)

    def items(self, table: str) -> list[Entry]:
        """Live entries of ``table``, sorted by key."""
        rows = self._store.get(table, {})
        return [rows[k] for k in sorted(rows) if not rows[k].deleted]

    def table_names(self) -> list[str]:
        return sorted(self._store)

    def drain_events(self) -> list[TableEvent]:
        out, self._events = self._events, []
        return out

    def drain_outbox(self) -> list[Outgoing]:
        out, self._outbox = self._outbox, []
        return out

    def drain_dirty(self) -> dict[tuple[str, str], Entry | None]:
        """Rows stored or reaped since the last call (for the durable copy)."""
        out, self._dirty = self._dirty, {}
        return out

    def restore(self, rows: list[Entry], clock: int, now: float) -> int:
        """Load a durable copy (before joining): rows and the Lamport clock it had.

        Each row is merged by the conflict rule against what is held (normally
        nothing), a tombstone keeps its ``reap_at``; nothing is queued for gossip (a
        push/pull spreads it) and nothing is marked dirty (it is on disk already).
        Returns how many rows were taken.
        """
        self._clock = max(self._clock, clock)
        taken = 0
        track, self.track_dirty = self.track_dirty, False
        try:
            for e in rows:
                if e.ltime > self._clock:
                    self._clock = e.ltime
                cur = self._entry(e.table, e.key)
                if cur is not None and e.rank() <= cur.rank():
                    continue
                if e.deleted and e.reap_at <= now:
                    continue
                self._apply(e)
                taken += 1
        finally:
            self.track_dirty = track
        return taken

    def rows(self) -> list[Entry]:
        """Every stored row, tombstones included (the durable copy's compaction)."""
        return [e for rows in self._store.values() for e in rows.values()]

    def owners(self) -> set[str]:
        """Owners of live entries of the node-scoped tables."""
        out = set()
        for table, rows in self._store.items():
            if table not in self.config.cluster_tables:
                out.update(e.owner for e in rows.values() if not e.deleted)
        return out

    @property
    def metrics(self) -> dict[str, int]:
        """Counters (``sent_*``, ``recv_*``, ``dropped_<reason>``, ...) and gauges."""
        live = tombs = 0
        for rows in self._store.values():
            for e in rows.values():
                if e.deleted:
                    tombs += 1
                else:
                    live += 1
        out = dict(self._counters)
        out.update(
            entries=live,
            tombstones=tombs,
            broadcast_queue=len(self._queue),
            up_members=len(self._up.names),
            clock=self._clock,
        )
        return out

    # --- membership -----------------------------------------------------------------

    def member_up(self, node: str, now: float) -> None:
        if node == self.node:
            return
        down = self._down.pop(node, None)
        added = self._up.add(node)
        if down is not None:
            for e, gossip in down.held.values():
                cur = self._entry(e.table, e.key)
                if cur is None or e.ltime > cur.ltime:
                    self._merge(e, "", now, gossip)
            self._nudge(node, down, now)
        if not added:
            return
        if now - self._up_sync_window >= self.config.gossip_interval:
            self._up_sync_window, self._up_syncs = now, 0
        p = min(1.0, self.config.up_sync_fanout / len(self._up.names))
        if self._up_syncs < self.config.up_sync_burst and self._rng.random() < p:
            self._up_syncs += 1
            self._counters["push_pull_on_up"] += 1
            self._start_push_pull(node, now)

    def member_unreachable(self, node: str) -> None:
        """The node's agent is down but its host may still forward: stop gossiping to
        it and keep its entries (``member_down`` removes them once the host is gone)."""
        if node != self.node and self._up.remove(node):
            self._counters["members_unreachable"] += 1

    def member_down(self, node: str, now: float, failed: bool) -> None:
        """The node failed (``failed``) or left: tombstone its entries locally."""
        if node == self.node:
            return
        self._up.remove(node)
        down = self._down.setdefault(node, _Down(now))
        self._counters["members_failed" if failed else "members_left"] += 1
        for table, rows in self._store.items():
            if table in self.config.cluster_tables:
                continue  # cluster-scoped entries outlive their owner
            for cur in list(rows.values()):
                if cur.owner == node and not cur.deleted:
                    self._apply(self._tombstone_of(cur, cur.ltime, now))
                    self._queue.discard((cur.table, cur.key))
                    down.removed.append((cur.table, cur.key))
                    self._counters["owner_down_removed"] += 1

    # --- network input --------------------------------------------------------------

    def handle_message(self, from_node: str, payload: bytes, now: float) -> None:
        self._counters["recv_msgs"] += 1
        self._counters["recv_bytes"] += len(payload)
        try:
            msg = codec.decode(payload)
        except TableDecodeError as exc:  # the one boundary for peer garbage
            self._drop(exc.reason, from_node, str(exc))
            return
        if isinstance(msg, GossipMsg):
            self._counters["recv_gossip"] += 1
            for e in msg.entries:
                self._merge(e, from_node, now, gossip=True)
            for node, blobs in self._corrections.items():
                self._send_gossip(node, blobs)
            self._corrections.clear()
            return
        if isinstance(msg, DigestMsg):
            self._counters["recv_digest"] += 1
            owners = differing(digest(self.rows()), msg.digest)
            if not owners:
                self._counters["digest_equal"] += 1
                return
            self._counters["digest_differ"] += 1
            for payload_out in self._sync_messages(True, owners, now):
                self._send(from_node, payload_out, reliable=True)
            return
        if isinstance(msg, SyncMsg):
            self._counters["recv_sync"] += 1
            reply = self._sync_messages(False, msg.owners, now) if msg.reply else []
            for e in msg.entries:
                self._merge(e, from_node, now, gossip=False)
            for payload_out in reply:
                self._send(from_node, payload_out, reliable=True)
            return
        self._counters["recv_push_pull"] += 1
        reply = self._state_messages(False, now) if msg.reply else []
        for e in msg.entries:
            self._merge(e, from_node, now, gossip=False)
        for payload_out in reply:
            self._send(from_node, payload_out, reliable=True)

    # --- timers ---------------------------------------------------------------------

    def next_deadline(self) -> float:
        t = min(self._next_push_pull, self._reap[0][0] if self._reap else math.inf)
        if self._queue and self._up.names:
            t = min(t, self._next_gossip)
        return t

    def tick(self, now: float) -> None:
        self._reap_tombstones(now)
        cfg = self.config
        if now >= self._next_gossip:
            if self._queue and self._up.names:
                self._gossip_round()
            self._next_gossip += cfg.gossip_interval
            if self._next_gossip <= now:
                self._next_gossip = now + cfg.gossip_interval
        if now >= self._next_push_pull:
            if self._up.names:
                # by digest: rows travel only for the owners whose rows differ
                self._counters["push_pull_periodic"] += 1
                self._send(self._rng.choice(self._up.names),
                           codec.pack_digest(digest(self.rows())), reliable=True)
            jitter = 1 + cfg.push_pull_jitter * self._rng.uniform(-1, 1)
            self._next_push_pull = now + self._push_pull_period() * jitter
        for node, down in list(self._down.items()):
            if now - down.since > cfg.down_memory:
                del self._down[node]

    # --- internals: state -----------------------------------------------------------

    def _entry(self, table: str, key: str) -> Entry | None:
        rows = self._store.get(table)
        return None if rows is None else rows.get(key)

    def _tombstone_of(self, cur: Entry, ltime: int, now: float) -> Entry:
        reap_at = now + self.config.reap_interval
        return Entry(cur.table, cur.key, b"", cur.owner, ltime, True, reap_at)

    def _apply(self, new: Entry) -> None:
        """Store ``new`` (already known to win) and emit the visible change, if any."""
        rows = self._store.setdefault(new.table, {})
        old = rows.get(new.key)
        rows[new.key] = new
        if self.track_dirty:
            self._dirty[(new.table, new.key)] = new
        if new.deleted:
            heapq.heappush(self._reap, (new.reap_at, new.table, new.key))
            if old is not None and not old.deleted:
                self._event("delete", old)
        elif old is None or old.deleted:
            self._event("create", new)
        elif old.value != new.value or old.owner != new.owner:
            self._event("update", new)

    def _event(self, kind: EventKind, e: Entry) -> None:
        self._events.append(TableEvent(kind, e.table, e.key, e.value, e.owner))

    def _publish(self, e: Entry, now: float) -> None:
        """Apply a change we make ourselves and queue it for gossip."""
        self._apply(e)
        self._queue.push((e.table, e.key), codec.encode_entry(self._to_wire(e, now)))

    def _to_wire(self, e: Entry, now: float) -> WireEntry:
        reap_ms = 0
        if e.deleted:
            reap_ms = min(codec.MAX_REAP_MS, max(1, math.ceil((e.reap_at - now) * 1000)))
        return WireEntry(e.table, e.key, e.owner, e.ltime, e.deleted, e.value, reap_ms)

    def _merge(self, e: WireEntry, from_node: str, now: float, gossip: bool) -> None:
        if e.ltime > self._clock:
            self._clock = e.ltime  # witness
        cur = self._entry(e.table, e.key)
        cluster = e.table in self.config.cluster_tables
        if cluster and e.owner == self.node and (cur is None or cur.owner != self.node):
            pass  # ours from before a restart, say: adopt it like any peer's entry
        elif e.owner == self.node and not (e.deleted and (cur is None or cur.owner != self.node)):
            # (One of our old tombstones, where we hold nothing of ours, is merged
            # like any other entry: there is nothing to defend.)
            self._merge_own_claim(e, cur, now)
            return
        if not e.deleted and e.owner in self._down and not cluster:
            self._hold(self._down[e.owner], e, gossip)
            return
        if cur is not None and _rank(e) <= cur.rank():
            if gossip and from_node == e.owner and _rank(e) < cur.rank():
                wire = codec.encode_entry(self._to_wire(cur, now))
                self._corrections.setdefault(from_node, []).append(wire)
                self._counters["corrections_sent"] += 1
            return
        reap_at = math.inf
        if e.deleted:
            reap_at = now + min(e.reap_ms / 1000, self.config.reap_interval)
        new = Entry(e.table, e.key, e.value, e.owner, e.ltime, e.deleted, reap_at)
        self._apply(new)
        self._counters["applied"] += 1
        if gossip:
            self._queue.push((e.table, e.key), codec.encode_entry(self._to_wire(new, now)))

    def _merge_own_claim(self, e: WireEntry, cur: Entry | None, now: float) -> None:
        """Someone tells us about an entry owned by us: republish or retract."""
        mine = cur if cur is not None and cur.owner == self.node else None
        if mine is None:
            if cur is not None and _rank(e) <= cur.rank():
                return  # stale: the key has moved on to another owner
            # A live entry of ours that we do not hold (from before a restart, or
            # resurrected after our tombstone was reaped): retract it.
            self._clock = max(self._clock, e.ltime) + 1
            self._counters["retracted"] += 1
            stub = Entry(e.table, e.key, b"", self.node, self._clock)
            self._publish(self._tombstone_of(stub, self._clock, now), now)
            return
        if e.ltime < mine.ltime:
            return  # old news
        if e.ltime == mine.ltime and e.deleted == mine.deleted and e.value == mine.value:
            return  # our own entry echoed back
        if mine.deleted and e.deleted:
            return  # both deleted; nothing to defend
        self._clock = max(self._clock, e.ltime)
        if mine.deleted:  # a live copy of something we deleted: delete it again
            self._clock += 1
            self._counters["redeleted"] += 1
            self._publish(self._tombstone_of(mine, self._clock, now), now)
            return
        # A peer holds a tombstone of a live entry of ours (it saw us down, and then
        # removed all our entries) or an other version of it (from before our
        # restart). Either way our other entries are stale there too: re-put all of
        # them above everything seen, so they win everywhere.
        self._republish_all(now)

    def _republish_all(self, now: float) -> None:
        """Re-put our node-scoped entries above everything seen. Not the cluster-scoped
        ones: peers never removed those when we went down, and re-putting them would
        undo deletes other nodes made meanwhile (say, on the other side of a partition)."""
        scoped = self.config.cluster_tables
        own = [
            e
            for table, rows in self._store.items()
            if table not in scoped
            for e in rows.values()
            if e.owner == self.node and not e.deleted
        ]
        self._counters["republish_all"] += 1
        self._counters["republished"] += len(own)
        for e in own:
            self._clock += 1
            self._publish(Entry(e.table, e.key, e.value, self.node, self._clock), now)

    def _nudge(self, node: str, down: _Down, now: float) -> None:
        """Tell a returning node a few of the tombstones we made when it went down.

        One is enough for it to republish everything (see ``_merge_own_claim``); a
        few cover keys it has deleted since. About 40 bytes each, so every node can
        afford to send this to every returning node, unlike a full push/pull.
        """
        tombs = []
        for table, key in down.removed:
            cur = self._entry(table, key)
            if cur is not None and cur.deleted and cur.owner == node:
                tombs.append(cur)
        tombs.sort(key=lambda e: e.ltime, reverse=True)
        if tombs:
            self._counters["nudges_sent"] += 1
            blobs = [codec.encode_entry(self._to_wire(e, now)) for e in tombs[:_NUDGE_MAX]]
            self._send_gossip(node, blobs)

    def _hold(self, down: _Down, e: WireEntry, gossip: bool) -> None:
        ident = (e.table, e.key)
        cur = self._entry(e.table, e.key)
        if cur is not None and e.ltime <= cur.ltime:
            # A copy from before the node went down (say, a push/pull that was in
            # flight). Held and released, it would beat our owner-down tombstone at
            # the same ltime and resurrect what the node may no longer have.
            self._counters["stale_for_down_owner"] += 1
            return
        held = down.held.get(ident)
        if held is not None and _rank(held[0]) >= _rank(e):
            return
        if held is None and len(down.held) >= self.config.held_per_down_node:
            self._counters["dropped_held_overflow"] += 1
            return
        down.held[ident] = (e, gossip)
        self._counters["held_owner_down"] += 1

    def _reap_tombstones(self, now: float) -> None:
        heap = self._reap
        while heap and heap[0][0] <= now:
            reap_at, table, key = heapq.heappop(heap)
            rows = self._store.get(table)
            cur = rows.get(key) if rows else None
            if cur is not None and cur.deleted and cur.reap_at == reap_at:
                del rows[key]
                if self.track_dirty:
                    self._dirty[(table, key)] = None
                if not rows:
                    del self._store[table]
                self._counters["reaped"] += 1

    # --- internals: sending ---------------------------------------------------------

    def _push_pull_period(self) -> float:
        # Like memberlist: above 32 nodes, stretch the period so the cluster-wide
        # push/pull rate grows with log(n) rather than n.
        n = len(self._up.names) + 1
        scale = 1 if n <= 32 else math.ceil(math.log2(n) - math.log2(32)) + 1
        return self.config.push_pull_interval * scale

    def _retransmit_limit(self) -> int:
        n = len(self._up.names) + 1
        return self.config.retransmit_mult * max(1, math.ceil(math.log10(n + 1)))

    def _gossip_round(self) -> None:
        cfg = self.config
        k = min(cfg.fanout, len(self._up.names))
        limit = self._retransmit_limit()
        capacity = cfg.max_udp_size - codec.GOSSIP_OVERHEAD
        self._counters["gossip_rounds"] += 1
        for target in self._rng.sample(self._up.names, k):
            for _ in range(cfg.packets_per_target):
                blobs, oversize = self._queue.take(capacity, limit)
                for blob in oversize:
                    self._counters["sent_oversize_reliable"] += 1
                    self._send(target, codec.pack_gossip([blob]), reliable=True)
                if blobs:
                    self._send(target, codec.pack_gossip(blobs), reliable=False)
                if not self._queue or not blobs:
                    break

    def _send_gossip(self, node: str, blobs: list[bytes]) -> None:
        """Send blobs to one node in as few UDP packets as fit (corrections)."""
        capacity = self.config.max_udp_size - codec.GOSSIP_OVERHEAD
        batch: list[bytes] = []
        room = capacity
        for blob in blobs:
            if len(blob) > capacity:
                self._send(node, codec.pack_gossip([blob]), reliable=True)
                continue
            if len(blob) > room:
                self._send(node, codec.pack_gossip(batch), reliable=False)
                batch, room = [], capacity
            batch.append(blob)
            room -= len(blob)
        if batch:
            self._send(node, codec.pack_gossip(batch), reliable=False)

    def _state_messages(self, reply: bool, now: float) -> list[bytes]:
        blobs = (
            codec.encode_entry(self._to_wire(e, now))
            for rows in self._store.values()
            for e in rows.values()
        )
        return codec.chunk_push_pull(reply, blobs, self.config.max_reliable_size)

    def _sync_messages(self, reply: bool, owners: tuple[str, ...] | list[str],
                       now: float) -> list[bytes]:
        wanted = set(owners)
        blobs = (
            codec.encode_entry(self._to_wire(e, now))
            for rows in self._store.values()
            for e in rows.values()
            if e.owner in wanted
        )
        return codec.chunk_sync(reply, list(owners), blobs, self.config.max_reliable_size)

    def _start_push_pull(self, node: str, now: float) -> None:
        self._counters["push_pull_started"] += 1
        for payload in self._state_messages(True, now):
            self._send(node, payload, reliable=True)

    def _send(self, node: str, payload: bytes, reliable: bool) -> None:
        if not reliable and len(payload) > self.config.max_udp_size:
            raise AssertionError(f"bug: {len(payload)}-byte UDP message")
        self._outbox.append(Outgoing(node, payload, reliable))
        self._counters["sent_msgs"] += 1
        self._counters["sent_bytes"] += len(payload)
        self._counters["sent_reliable" if reliable else "sent_unreliable"] += 1

    def _drop(self, reason: str, from_node: str, detail: str) -> None:
        self._counters["dropped_" + reason] += 1
        self._counters["dropped"] += 1
        level = logging.DEBUG if reason in self._logged else logging.WARNING
        self._logged.add(reason)
        log.log(level, "tables node=%s: dropped message from %s: %s", self.node, from_node, detail)
