"""The gateway-bridge reconciler: tables + local allocations -> desired -> plan -> kernel."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Mapping

from meshnet.gwbridge.state import Allocation, GwState, Op, desired, plan
from meshnet.reconcile import Reconciler, RunInKernel
from meshnet.store import Store

log = logging.getLogger("meshnet.gwbridge")


class GwReconciler(Reconciler):
    what = "gateway"
    log = log

    def __init__(self, node: str, store: Store, kernel, subnet: str,
                 allocations: Mapping[str, Allocation], run: RunInKernel,
                 on_netns_gone: Callable[[list[str]], None] = lambda gone: None,
                 pending: set[str] | None = None) -> None:
        super().__init__(kernel, run, on_netns_gone)
        self.node = node
        self.store = store
        self.subnet = ipaddress.ip_network(subnet)
        self.allocations = allocations
        self.pending = pending if pending is not None else set()

    def want(self) -> GwState:
        eps = [e for k, e in self.store.endpoints().items() if k not in self.pending]
        return desired(self.node, eps, self.store.networks(), self.allocations, self.subnet)

    def plan(self, want: GwState, have: GwState) -> list[Op]:
        return plan(want, have)

    @staticmethod
    def kind(op: Op) -> str:
        return op.kind
