"""The gateway-bridge reconciler: tables + local allocations -> desired -> plan -> kernel."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Mapping

from meshnet.gwbridge.state import Allocation, GwState, Op, desired, plan
from meshnet.store import Store
from meshnet.vxlan.reconciler import RunInKernel

log = logging.getLogger("meshnet.gwbridge")


class GwReconciler:
    def __init__(self, node: str, store: Store, kernel, subnet: str,
                 allocations: Mapping[str, Allocation], run: RunInKernel,
                 on_netns_gone: Callable[[list[str]], None] = lambda gone: None,
                 pending: set[str] | None = None) -> None:
        self.node = node
        self.store = store
        self.kernel = kernel
        self.subnet = ipaddress.ip_network(subnet)
        self.allocations = allocations
        self.run = run
        self.on_netns_gone = on_netns_gone
        self.pending = pending if pending is not None else set()
        self.last_plan: list[Op] = []
        self.ops_applied = 0

    def want(self) -> GwState:
        eps = [e for k, e in self.store.endpoints().items() if k not in self.pending]
        return desired(self.node, eps, self.store.networks(), self.allocations, self.subnet)

    async def sync(self, full: bool) -> None:
        want = self.want()
        have = await self.run(self.kernel.observe)
        ops = plan(want, have)
        self.last_plan = ops
        if not ops:
            return
        log.info("applying %d gateway change(s): %s", len(ops),
                 ", ".join(sorted({o.kind for o in ops})))
        gone = await self.run(lambda: self.kernel.apply(ops))
        self.ops_applied += len(ops)
        if gone:
            self.on_netns_gone(gone)
