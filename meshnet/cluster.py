"""The agent's view of the cluster: SWIM membership + replicated tables, wired together.

* Membership is :class:`meshnet.gossip.core.Memberlist` behind its asyncio adapter
  (memberlist wire protocol; serf agents are members too).
* Tables are :class:`meshnet.gossip.tables.Tables`. Table traffic goes only to members
  tagged ``mn`` (meshnet agents), as direct user messages (UDP, or TCP when large or
  reliable), never into the general broadcast queue, so serf peers never see it.
* Membership events drive the tables: a meshnet member that joins gets a push/pull; one
  that fails or leaves has its entries removed (turned into local tombstones), as
  Docker's networkdb does.
* ``synced`` is set once the first join completed (or there was nobody to join): the data
  plane waits for it, so a restarted agent never programs the kernel from a partial view.

This class is the ``TableBackend`` of the agent's :class:`~meshnet.store.Store`.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from meshnet.config import GOSSIP_PORT, AgentConfig, parse_hostport
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
from meshnet.gossip.security import Keyring
from meshnet.gossip.state import MESHNET_TAG, MESHNET_TAG_VALUE, Member, encode_tags
from meshnet.gossip.tables import TableConfig, Tables

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
        fast = config.gossip_preset == "fast"
        self.gossip_config = GossipConfig.fast() if fast else GossipConfig.lan()
        self.table_config = replace(TableConfig.fast() if fast else TableConfig.lan(),
                                    cluster_tables=CLUSTER_TABLES)
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

    def now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    # --- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.tables = Tables(self.node, self.table_config, self.rng, self.now())
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
            self.synced.set()
            return
        attempt = 0
        while True:
            attempt += 1
            try:
                res = await self.adapter.join(addrs, timeout=self.gossip_config.tcp_timeout * 3)
                ok, errors = res.ok, res.errors
            except TimeoutError:
                ok, errors = 0, ("timed out",)
            if ok:
                log.info("joined the cluster through %d of %d peer(s)", ok, len(addrs))
                await self._wait_tables_synced()
                return
            if attempt == 1:
                log.info("no peer answered the join (%s); starting alone and retrying",
                         "; ".join(errors)[:200])
                self.synced.set()
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
        self.synced.set()

    async def leave(self, timeout: float = 2.0) -> bool:
        return await self.adapter.leave(timeout)

    async def stop(self) -> None:
        if self._join_task:
            self._join_task.cancel()
        if self._timer:
            self._timer.cancel()
        await self.adapter.stop()

    # --- membership ---------------------------------------------------------------

    def members(self) -> list[dict[str, Any]]:
        return [{
            "name": m.name, "addr": m.addr, "port": m.port,
            "state": STATE_NAMES.get(m.state, m.state), "incarnation": m.incarnation,
            "tags": dict(m.tags), "meshnet": m.is_meshnet,
        } for m in sorted(self.core.members(), key=lambda m: m.name)]

    def _on_event(self, ev: Event) -> None:
        assert self.tables is not None
        now = self.now()
        match ev:
            case MemberJoin(member=m) | MemberUpdate(member=m):
                if m.name != self.node and m.is_meshnet:
                    self.tables.member_up(m.name, now)
                self._member_event(m, "join" if isinstance(ev, MemberJoin) else "update")
            case MemberLeave(member=m) | MemberFailed(member=m):
                failed = isinstance(ev, MemberFailed)
                if m.name != self.node and m.is_meshnet:
                    self.tables.member_down(m.name, now, failed=failed)
                self._member_event(m, "failed" if failed else "left")
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
