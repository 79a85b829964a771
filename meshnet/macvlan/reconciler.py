"""The macvlan reconciler: tables -> desired ports and VLANs -> plan -> kernel."""

from __future__ import annotations

import logging
from collections.abc import Callable

from meshnet.macvlan.kernel import MacvlanKernel
from meshnet.macvlan.state import MacvlanState, Op, desired, plan
from meshnet.model import Network
from meshnet.reconcile import Reconciler, RunInKernel
from meshnet.store import Store

log = logging.getLogger("meshnet.macvlan")


class MacvlanReconciler(Reconciler):
    what = "macvlan"
    log = log

    def __init__(self, node: str, store: Store, kernel: MacvlanKernel, run: RunInKernel,
                 parent_of: Callable[[Network], str],
                 on_netns_gone: Callable[[list[str]], None] = lambda gone: None,
                 pending: set[str] | None = None) -> None:
        super().__init__(kernel, run, on_netns_gone)
        self.node = node
        self.store = store
        self.parent_of = parent_of
        self.pending = pending if pending is not None else set()
        self.known: set[str] = set()  #: namespaces that had a port (to find removals)

    def want(self) -> MacvlanState:
        eps = [e for k, e in self.store.endpoints().items()
               if not (e.host == self.node and k in self.pending)]
        return desired(self.node, self.store.networks(), eps, self.parent_of)

    def plan(self, want: MacvlanState, have: MacvlanState) -> list[Op]:
        return plan(want, have)

    async def sync(self, full: bool) -> None:
        want = self.want()
        look = self.known | {ns for ns, _ in want.ports}
        have = await self.run(lambda: self.kernel.observe(look))
        ops = self.plan(want, have)
        self.last_plan = ops
        self.known = {ns for ns, _ in want.ports}
        if not ops:
            return
        self.log.info("applying %d macvlan change(s): %s", len(ops),
                      ", ".join(sorted({self.kind(o) for o in ops})))
        gone = await self.run(lambda: self.kernel.apply(ops))
        self.ops_applied += len(ops)
        if gone:
            self.on_netns_gone(gone)
