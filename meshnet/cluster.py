"""The agent's view of the cluster: SWIM membership + replicated tables, wired together.

* Membership is :class:`meshnet.gossip.core.Memberlist` behind its asyncio adapter
  (memberlist wire protocol; serf agents are members too).
* Tables are :class:`meshnet.gossip.tables.Tables`. Table traffic goes only to members
  tagged ``mn`` (meshnet agents), as direct user messages (UDP, or TCP when large or
  reliable), never into the general broadcast queue, so serf peers never see it.
* Membership events drive the tables: a meshnet member that joins gets a push/pull; one
  that leaves (``meshnet leave``) has its entries removed (turned into local tombstones),
  as Docker's networkdb does. One that *fails* is only an agent that stopped answering:
  its host is asked directly (:mod:`meshnet.liveness`), and its entries stay while the
  host answers (the data plane outlives the agent); they go once it does not.
* Durable copy: the tables are journalled to ``STATE_DIR/tables.journal``
  (:mod:`meshnet.durable`) as changes are accepted, and loaded before the join.
* ``synced`` is set once the view is complete: the loaded copy merged with a peer's
  state, or the copy alone when no peer answered the first join (one host, or the whole
  cluster restarting). The data plane waits for it, so an agent never programs the
  kernel from a partial view. ``view`` says which it was.

This class is the ``TableBackend`` of the agent's :class:`~meshnet.store.Store`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from meshnet.config import GOSSIP_PORT, AgentConfig, parse_hostport
from meshnet.durable import TableJournal, to_entries
from meshnet.gossip.adapter import GossipAdapter
from meshnet.gossip.config import GossipConfig
from meshnet.gossip.core import Memberlist
from meshnet.gossip.events import (
    Event,
    MemberFailed,
    MemberJoin,
    MemberLeave,
    MemberUpdate,
    UserMessage,
)
from meshnet.gossip.member import MESHNET_TAG, MESHNET_TAG_VALUE, Member, encode_tags
from meshnet.gossip.security import Keyring
from meshnet.gossip.tables import Entry, TableConfig, Tables
from meshnet.join import join_some
from meshnet.liveness import host_answers

log = logging.getLogger("meshnet.gossip")

STATE_NAMES = {"dead": "failed"}  # serf's words, as `serf members` shows them
TABLE_MAGIC = ord("m")
#: tables whose entries outlive the node that wrote them (the rest are node-scoped)
CLUSTER_TABLES = frozenset({"networks", "services", "published", "keyring"})


class Cluster:
    emits_events = True  #: the Store need not notify for our puts: our events do

    def __init__(self, config: AgentConfig, on_change: Callable[[str, str], None],
                 rng: random.Random | None = None) -> None:
        self.config = config
        self.node = config.node_name
        self.addr = config.advertise_addr
        self.rng = rng or random.Random()
        preset = config.gossip_preset
        self.gossip_config = getattr(GossipConfig, preset)()
        self.table_config = replace(getattr(TableConfig, preset)(), cluster_tables=CLUSTER_TABLES)
        if config.tombstone_lifetime:
            self.table_config = replace(self.table_config,
                                        reap_interval=float(config.tombstone_lifetime))
        keyring = None
        if config.encrypt_key:
            keyring = Keyring.from_base64([config.encrypt_key])
        self.tags = {"role": "meshnet", MESHNET_TAG: MESHNET_TAG_VALUE, "vtep": self.addr}
        self.core = Memberlist(self.gossip_config, self.node, self.addr, config.bind_port,
                               encode_tags(self.tags), self.rng, keyring)
        self.adapter = GossipAdapter(self.core, bind=(config.bind, config.bind_port),
                                     on_event=self._on_event)
        self.tables: Tables | None = None
        #: how long an address claim must hold before it is used (a few gossip rounds)
        self.claim_wait = 6 * self.table_config.gossip_interval
        self.on_change = on_change
        self.synced = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._join_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.member_listeners: list[Callable[[str, str], None]] = []
        self.journal: TableJournal | None = None
        if config.state_dir:
            self.journal = TableJournal(f"{config.state_dir}/tables.journal")
        self._sync_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fsync")
        self._sync_timer: asyncio.TimerHandle | None = None
        #: what the first complete view was made of (``meshnet status``)
        self.view: dict[str, Any] = {"source": "joining", "copy_rows": 0, "copy_age": None}
        self._deferred: list[Entry] = []  #: rows of an old copy, used only if alone
        #: meshnet members whose host was found gone (their entries were removed)
        self.gone: set[str] = set()
        #: members whose agent is down while their host still answers
        self.answering: set[str] = set()
        self._checks: dict[str, asyncio.Task[None]] = {}
        fast = config.gossip_preset in ("fast", "swift")
        self.host_probe_timeout = 0.5 if fast else 1.0
        self.host_probe_interval = 1.0 if fast else 2.0  #: the first re-probe; doubles
        self.host_probe_max_interval = 8.0 if fast else 30.0

    def now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    # --- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.tables = Tables(self.node, self.table_config, self.rng, self.now())
        self._load_copy()
        await self.adapter.start()
        joins = [parse_hostport(j, GOSSIP_PORT, "join address") for j in self.config.join]
        joins = [j for j in joins if j != (self.addr, self.config.bind_port)]
        self._join_task = asyncio.create_task(self._join_loop(joins), name="gossip-join")
        self._pump()

    async def _join_loop(self, addrs: list[tuple[str, int]]) -> None:
        """Join like serf's retry-join: until one push/pull succeeds, every few seconds.

        The data plane may start after the first attempt in which nobody answered (we
        are the first node up); it must wait for a successful one when anybody did.
        """
        if not addrs:
            self._set_synced(peer=False)
            return
        attempt = 0
        while True:
            attempt += 1
            ok, errors = await join_some(
                lambda batch, left: self.adapter.join(batch, timeout=left), addrs, random.Random(),
                timeout=self.gossip_config.tcp_timeout * 3)
            if ok:
                log.info("joined the cluster (push/pull with %d peer(s) of %d addresses)", ok,
                         len(addrs))
                await self._wait_tables_synced()
                return
            if attempt == 1:
                log.info("no peer answered the join (%s); starting %s and retrying",
                         "; ".join(errors)[:200],
                         "from the local copy" if self.view["copy_rows"] else "alone")
                self._set_synced(peer=False)
            if self.core.num_alive() > 1:  # somebody joined us meanwhile
                return
            await asyncio.sleep(min(5.0, 0.5 * attempt))

    async def _wait_tables_synced(self, timeout: float = 5.0) -> None:
        """Joined: now wait for one full table state from a meshnet peer (push/pull),
        unless no other meshnet agent is alive. Only then is our view complete."""
        assert self.tables is not None
        end = self.now() + timeout
        while self.now() < end:
            others = [m for m in self.core.members()
                      if m.is_meshnet and m.name != self.node and m.state == "alive"]
            if not others or self.tables.metrics.get("recv_push_pull", 0) > 0:
                break
            await asyncio.sleep(0.01)
        else:
            log.warning("no table state from any peer within %.0fs; starting anyway", timeout)
        self._set_synced(peer=self.tables.metrics.get("recv_push_pull", 0) > 0)

    async def leave(self, timeout: float = 2.0) -> bool:
        return await self.adapter.leave(timeout)

    async def stop(self) -> None:
        if self._join_task:
            self._join_task.cancel()
        if self._timer:
            self._timer.cancel()
        if self._sync_timer:
            self._sync_timer.cancel()
        for task in list(self._checks.values()):
            task.cancel()
        await self.adapter.stop()
        self._persist()
        if self.journal is not None:
            self.journal.close()
        self._sync_pool.shutdown(wait=True)

    # --- the durable copy -----------------------------------------------------------

    def _load_copy(self) -> None:
        """Load the durable copy into the tables (before the join) and start the journal.

        A copy younger than the tombstone lifetime merges with peers by the conflict
        rule: whatever was deleted while we were away still has its tombstone there.
        An older one may hold entries whose tombstones are already reaped everywhere,
        so only our own node-scoped rows are taken now; the rest only if no peer answers
        (the whole cluster restarting), since then it is the best view there is.
        """
        tables = self.tables
        assert tables is not None
        journal = self.journal
        if journal is None:
            return
        parsed = journal.load()
        wall, mono = time.time(), self.now()
        if parsed is not None and parsed.rows:
            rows = to_entries(parsed, wall, mono, self.table_config.reap_interval)
            age = max(0.0, wall - parsed.saved_at)
            self.view.update(copy_rows=len(rows), copy_age=round(age, 3))
            now_rows = rows
            if age > self.table_config.reap_interval:
                scoped = self.table_config.cluster_tables
                now_rows, self._deferred = [], []
                for e in rows:
                    mine = e.owner == self.node and e.table not in scoped
                    (now_rows if mine else self._deferred).append(e)
            taken = tables.restore(now_rows, parsed.clock, mono)
            log.info("loaded the durable copy: %d rows (%d taken now), clock %d, %.0fs old",
                     len(rows), taken, parsed.clock, age)
        elif parsed is not None:
            tables.restore([], parsed.clock, mono)
        if parsed is not None and not self._deferred:
            journal.reopen(tables.rows(), wall, mono)  # append to the file just read
        else:
            journal.open(tables.rows(), tables.clock, wall, mono)
        tables.track_dirty = True

    def _set_synced(self, peer: bool) -> None:
        if self.synced.is_set():
            return
        tables = self.tables
        assert tables is not None
        copy = bool(self.view["copy_rows"])
        if self._deferred:
            if not peer:  # nobody else: the old copy is the best view there is
                tables.restore(self._deferred, 0, self.now())
                if self.journal is not None:
                    self.journal.compact(tables.rows(), tables.clock, time.time(), self.now())
            else:
                log.info("ignored %d rows of a copy older than the tombstone lifetime; "
                         "took the peer's", len(self._deferred))
            self._deferred = []
        self.view["source"] = ("local copy + peer" if copy and peer else "local copy"
                               if copy else "peer" if peer else "empty (first start)")
        log.info("cluster view complete: %s", self.view["source"])
        self.synced.set()
        self._pump()
        self._check_unknown_owners()

    def _persist(self) -> None:
        tables, journal = self.tables, self.journal
        if journal is None or tables is None or not tables.track_dirty:
            return
        dirty = tables.drain_dirty()
        if not dirty:
            return
        wall, mono = time.time(), self.now()
        journal.append(dirty, tables.clock, wall, mono)
        if journal.needs_compaction():
            journal.compact(tables.rows(), tables.clock, wall, mono)
        if self._sync_timer is None and self._loop is not None:
            self._sync_timer = self._loop.call_later(1.0, self._lazy_sync)

    def _lazy_sync(self) -> None:
        self._sync_timer = None
        if self.journal is not None and self.journal.unsynced and self._loop is not None:
            self._loop.run_in_executor(self._sync_pool, self._sync_journal)

    def _sync_journal(self) -> None:
        try:
            if self.journal is not None:
                self.journal.sync()
        except OSError as exc:  # the fd was replaced by a compaction (which synced)
            log.debug("journal sync: %s", exc)

    async def durable(self) -> None:
        """Return once every accepted change is on disk (fdatasync; the API awaits it).

        Always through the one sync thread, even when nothing looks unsynced: a lazy
        sync may be in its fdatasync right now, and this waits behind it."""
        self._persist()
        if self.journal is not None and self._loop is not None:
            await self._loop.run_in_executor(self._sync_pool, self._sync_journal)

    # --- agent down or host down --------------------------------------------------

    def _agent_down(self, name: str, addr: str, port: int) -> None:
        """A meshnet member's agent stopped answering: keep its entries while its host
        answers (:mod:`meshnet.liveness`), remove them once it does not."""
        assert self.tables is not None
        self.tables.member_unreachable(name)
        if name not in self._checks and self._loop is not None:
            self._checks[name] = asyncio.create_task(self._watch_host(name, addr, port),
                                                     name=f"host-check-{name}")

    def _state_of(self, name: str) -> str:
        for m in self.core.members():
            if m.name == name:
                return m.state
        return ""

    async def _watch_host(self, name: str, addr: str, port: int) -> None:
        wait = self.host_probe_interval
        try:
            while True:
                if self._state_of(name) == "alive":  # back (or never really gone)
                    self._agent_back(name)
                    self._pump()
                    return
                if not await host_answers(addr, port, self.host_probe_timeout):
                    log.info("host %s (%s) does not answer either: removing its entries",
                             name, addr)
                    self._host_gone(name, failed=True)
                    return
                if name not in self.answering:
                    self.answering.add(name)
                    log.info("agent on %s is down but its host answers at %s: keeping its "
                             "entries", name, addr)
                # every agent probes every failed member: back off, or a cluster whose
                # members are falsely failed under load (every one probing every one)
                # feeds its own overload
                await asyncio.sleep(wait)
                wait = min(wait * 2, self.host_probe_max_interval)
        finally:
            if self._checks.get(name) is asyncio.current_task():
                del self._checks[name]

    def _unwatch(self, name: str) -> None:
        """Stop watching a member's host (from inside the watch too)."""
        task = self._checks.pop(name, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        self.answering.discard(name)

    def _host_gone(self, name: str, failed: bool) -> None:
        assert self.tables is not None
        self._unwatch(name)
        self.gone.add(name)
        self.tables.member_down(name, self.now(), failed=failed)
        self._pump()

    def _agent_back(self, name: str) -> None:
        """The member is alive (again): stop watching its host, gossip to it."""
        assert self.tables is not None
        self._unwatch(name)
        self.gone.discard(name)
        self.tables.member_up(name, self.now())

    def _check_unknown_owners(self) -> None:
        """After start: owners of loaded entries that are not alive members may be
        agents still restarting (keep) or hosts gone while we were away (remove)."""
        tables = self.tables
        assert tables is not None
        known = {m.name for m in self.core.members() if m.state in ("alive", "suspect")}
        for owner in sorted(tables.owners() - known - {self.node} - set(self._checks)):
            addr, port = self._vtep_of(owner)
            if addr:
                self._agent_down(owner, addr, port)
            else:
                self._host_gone(owner, failed=True)

    def _vtep_of(self, node: str) -> tuple[str, int]:
        assert self.tables is not None
        raw = self.tables.get("vteps", node)
        try:
            data = json.loads(raw) if raw else {}
            return str(data["gossip_addr"]), int(data.get("gossip_port", GOSSIP_PORT))
        except (ValueError, KeyError, TypeError):
            return "", 0

    # --- membership ---------------------------------------------------------------

    def members(self) -> list[dict[str, Any]]:
        return [{
            "name": m.name, "addr": m.addr, "port": m.port,
            "state": STATE_NAMES.get(m.state, m.state), "incarnation": m.incarnation,
            "tags": dict(m.tags), "meshnet": m.is_meshnet,
            **({"host": "answering"} if m.name in self.answering else {}),
        } for m in sorted(self.core.members(), key=lambda m: m.name)]

    def gone_hosts(self) -> set[str]:
        """Hosts whose entries were removed: gone, or left (not merely agent down)."""
        return set(self.gone)

    def _on_event(self, ev: Event) -> None:
        assert self.tables is not None
        now = self.now()
        match ev:
            case MemberJoin(member=m) | MemberUpdate(member=m):
                if m.name != self.node and m.is_meshnet:
                    self._agent_back(m.name)
                self._member_event(m, "join" if isinstance(ev, MemberJoin) else "update")
            case MemberLeave(member=m):
                if m.name != self.node and m.is_meshnet:
                    self._host_gone(m.name, failed=False)
                self._member_event(m, "left")
            case MemberFailed(member=m):
                if m.name != self.node and m.is_meshnet:
                    self._agent_down(m.name, m.addr, m.port)
                self._member_event(m, "failed")
            case UserMessage(from_node=src, payload=payload):
                if payload[:1] == bytes([TABLE_MAGIC]) and src:
                    self.tables.handle_message(src, payload, now)
        self._pump()

    def _member_event(self, m: Member, what: str) -> None:
        log.info("member %s %s (%s:%d)", m.name, what, m.addr, m.port)
        for fn in self.member_listeners:
            fn(m.name, what)

    # --- tables: the agent's TableBackend -------------------------------------------

    def put(self, table: str, key: str, value: bytes, now: float) -> None:
        assert self.tables is not None
        self.tables.put(table, key, value, self.now())
        self._pump()

    def delete(self, table: str, key: str, now: float) -> None:
        assert self.tables is not None
        self.tables.delete(table, key, self.now())
        self._pump()

    def get(self, table: str, key: str) -> bytes | None:
        assert self.tables is not None
        return self.tables.get(table, key)

    def items(self, table: str) -> Iterator[tuple[str, bytes, str]]:
        assert self.tables is not None
        for e in self.tables.items(table):
            yield e.key, e.value, e.owner

    def owner(self, table: str, key: str) -> str | None:
        assert self.tables is not None
        e = self.tables.entry(table, key)
        return e.owner if e and not e.deleted else None

    # --- plumbing -------------------------------------------------------------------

    def _pump(self) -> None:
        """Send what the tables want sent, report their changes, re-arm their timer."""
        tables = self.tables
        if tables is None or self._loop is None:
            return
        for out in tables.drain_outbox():
            self.adapter.send_user(out.node, out.payload, out.reliable)
        self._persist()  # on disk (page cache) before anyone acts on the change
        for ev in tables.drain_events():
            self.on_change(ev.table, ev.key)
        deadline = tables.next_deadline()
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(max(deadline, self.now()), self._tick)

    def _tick(self) -> None:
        assert self.tables is not None
        self._timer = None
        self.tables.tick(self.now())
        self._pump()

    # --- keyring ----------------------------------------------------------------------

    def keyring(self) -> tuple[list[str], str] | None:
        """(installed keys, primary) as base64, or None when gossip is not encrypted."""
        from meshnet.gossip.security import encode_key

        ring = self.core.keyring
        if not ring:
            return None
        return [encode_key(k) for k in ring.keys], encode_key(ring.primary)

    def apply_keyring(self, keys: list[str], primary: str) -> None:
        """Make the live keyring exactly ``keys`` with ``primary`` first (idempotent)."""
        from meshnet.gossip.security import decode_key

        ring = self.core.keyring
        if ring is None:
            log.warning("keyring change ignored: this agent runs without encryption")
            return
        want = [decode_key(k) for k in keys]
        for k in want:
            ring.install(k)
        ring.use(decode_key(primary))
        for k in ring.keys:
            if k not in want:
                ring.remove(k)

    def metrics(self) -> dict[str, Any]:
        assert self.tables is not None
        return {"gossip": dict(self.core.metrics), "tables": dict(self.tables.metrics)}
