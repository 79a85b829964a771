"""The load-balancing reconciler: tables -> LbState -> backend plan -> kernel.

Runs under one :class:`meshnet.syncer.SyncRunner`. A *partial* sync plans against the
state this reconciler last applied (cheap: a one-backend change rewrites one chain); a
*full* sync re-observes the kernel and rewrites everything meshnet owns. The first sync
after a start observes and adopts what is there (chains whose digests match are left
alone, so an agent restart changes nothing and established connections keep their NAT).
After a sync, conntrack entries of UDP backends that went away are deleted (UDP has no
close: without this a client keeps hitting a dead task until the entry times out).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

from meshnet.ipvs.backend import LbBackend
from meshnet.ipvs.iptables import conntrack_delete, conntrack_flush_args
from meshnet.ipvs.planner import desired
from meshnet.ipvs.state import LbState
from meshnet.model import IPAddress
from meshnet.store import Store

log = logging.getLogger("meshnet.ipvs")

RunInKernel = Callable[[Callable[[], Any]], Awaitable[Any]]


def removed_udp_backends(old: LbState, new: LbState) -> list[tuple[str, str, int, str]]:
    """(sandbox ns, vip, port, backend ip) of UDP backends in old and gone in new, in
    sandboxes that stay."""
    now = {(ns, vs.key): {b.ip for b in vs.backends} for ns, vs in new.services()}
    kept = {sb.ns for sb in new.sandboxes}  # a sandbox going away takes its conntrack along
    out = []
    for ns, vs in old.services():
        if vs.protocol != "udp" or ns not in kept:
            continue
        keep = now.get((ns, vs.key), set())
        out += [(ns, str(vs.vip), vs.port, str(b.ip)) for b in vs.backends if b.ip not in keep]
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

    def want(self) -> LbState:
        s = self.store
        return desired(self.node, s.networks(), s.services(), s.endpoints().values(),
                       s.all("health"), s.all("published").values(),  # type: ignore[arg-type]
                       self.prefix, self.lb_ips(), self.down_hosts())

    async def sync(self, full: bool) -> None:
        want = self.want()
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
