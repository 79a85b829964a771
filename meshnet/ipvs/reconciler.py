"""The load-balancing reconciler: tables -> LbState -> backend plan -> kernel.

Runs under one :class:`meshnet.syncer.SyncRunner`. A *partial* sync plans against the
state this reconciler last applied (cheap: a one-backend change rewrites one chain); a
*full* sync re-observes the kernel and rewrites everything meshnet owns. The first sync
after a start observes and adopts what is there (chains whose digests match are left
alone, so an agent restart changes nothing and established connections keep their NAT).
After a sync, conntrack entries of UDP backends that went away are deleted (UDP has no
close: without this a client keeps hitting a dead task until the entry times out).

The desired state comes from an :class:`~meshnet.ipvs.incremental.IncrementalPlanner`,
not from the store's full tables: the reconciler listens to the store's change notices
and records the changed keys; a partial sync reads (decodes) only those rows and
recomputes only the services they touch, so one task changing costs the same at 100 and
at 1,000 services (decoding every row costs ~0.7 s at 1,000 services x 10 tasks). A full
sync reloads every row, which also repairs anything a missed notice left stale.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

from meshnet.ipvs.backend import LbBackend
from meshnet.ipvs.incremental import TABLES, IncrementalPlanner
from meshnet.ipvs.iptables import conntrack_delete, conntrack_flush_args
from meshnet.ipvs.state import LbState
from meshnet.model import IPAddress
from meshnet.store import Store

log = logging.getLogger("meshnet.ipvs")

RunInKernel = Callable[[Callable[[], Any]], Awaitable[Any]]


def removed_udp_backends(old: LbState, new: LbState) -> list[tuple[str, str, int, str]]:
    """(sandbox ns, vip, port, backend ip) of UDP backends in old and gone in new, in
    sandboxes that stay. Sandboxes and services that are the same objects in both (what
    the incremental planner hands over when nothing changed) are skipped unread."""
    new_sb = {sb.ns: sb for sb in new.sandboxes}
    out = []
    for osb in old.sandboxes:
        nsb = new_sb.get(osb.ns)  # a sandbox going away takes its conntrack along
        if nsb is None or nsb is osb:
            continue
        hinted = nsb.delta.of(osb) if nsb.delta is not None else None
        if hinted is not None:  # only these positions changed, each keeping its service
            for i in hinted:
                vs, now_vs = osb.services[i], nsb.services[i]
                if vs.protocol == "udp" and vs is not now_vs:
                    keep = {b.ip for b in now_vs.backends}
                    out += [(osb.ns, str(vs.vip), vs.port, str(b.ip)) for b in vs.backends
                            if b.ip not in keep]
            continue
        same: set[int] | None = None
        now: dict[str, set] | None = None
        for vs in osb.services:
            if vs.protocol != "udp":
                continue
            if same is None:
                same = {id(v) for v in nsb.services}
            if id(vs) in same:  # both alive, so the same id is the same object
                continue
            if now is None:
                now = {v.key: {b.ip for b in v.backends} for v in nsb.services}
            keep = now.get(vs.key, set())
            out += [(osb.ns, str(vs.vip), vs.port, str(b.ip)) for b in vs.backends
                    if b.ip not in keep]
    return sorted(out)


class LbReconciler:
    def __init__(self, node: str, store: Store, backend: LbBackend, prefix: str,
                 run: RunInKernel,
                 lb_ips: Callable[[], Mapping[str, IPAddress]] = dict,
                 down_hosts: Callable[[], Collection[str]] = tuple,
                 conntrack: Callable[[str, list[str]], int] = conntrack_delete) -> None:
        self.node = node
        self.store = store
        self.backend = backend
        self.prefix = prefix
        self.run = run
        self.lb_ips = lb_ips
        self.down_hosts = down_hosts
        self.conntrack = conntrack
        self.have: Any = None
        self.last_state = LbState()
        self.last_plan: Any = None
        self.skipped: list[str] = []
        self.planner = IncrementalPlanner(node, prefix)
        self._changed: set[tuple[str, str]] = set()
        self._loaded = False  #: the planner holds every row (a full reload happened)
        self._fresh = False  #: reloaded by ``refresh(full=True)`` since the last sync
        store.listeners.append(self.note)

    def note(self, table: str, key: str) -> None:
        """Store listener: remember a changed row (read at the next sync)."""
        if table in TABLES:
            self._changed.add((table, key))

    def refresh(self, full: bool = False) -> None:
        """Bring the planner's rows up to date with the store: every row if ``full`` (or
        never loaded), else only the rows noted as changed."""
        s = self.store
        if full or not self._loaded:
            self._changed = set()
            self.planner.reset({t: s.all(t) for t in TABLES})
            self._loaded = self._fresh = True
            return
        changed, self._changed = self._changed, set()
        for table, key in sorted(changed):
            self.planner.change(table, key, s.get(table, key))

    def want(self, full: bool = False) -> LbState:
        self.refresh(full)
        return self.planner.state(self.lb_ips(), self.down_hosts())

    async def sync(self, full: bool) -> None:
        want = self.want(full and not self._fresh)
        self._fresh = False
        first = self.have is None
        if full or first:
            self.have = await self.run(self.backend.observe)
        ops = self.backend.plan(want, self.have, full and not first)
        self.last_plan = ops
        if ops:
            self.have, self.skipped = await self.run(lambda: self.backend.apply(ops, self.have))
            if self.skipped:  # not there yet: do not believe we programmed them
                self.have = None
        for ns, vip, port, ip in removed_udp_backends(self.last_state, want):
            try:
                args = conntrack_flush_args(vip, port, ip)
                await self.run(functools.partial(self.conntrack, ns, args))
            except Exception as exc:  # best effort; entries also time out
                log.warning("conntrack cleanup of %s in %s failed: %s", ip, ns, exc)
        for w in set(want.warnings) - set(self.last_state.warnings):
            log.warning("load balancing: %s", w)
        self.last_state = want
