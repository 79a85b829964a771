"""The overlay reconciler: tables -> desired overlay -> plan -> kernel (one worker thread)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from meshnet.reconcile import Reconciler, RunInKernel
from meshnet.store import Store
from meshnet.vxlan.plan import Op, plan
from meshnet.vxlan.state import Overlay, desired

log = logging.getLogger("meshnet.vxlan")


class OverlayKernelPort(Protocol):
    def observe(self) -> Overlay: ...
    def apply(self, ops: list[Op]) -> list[str]: ...
    def netns_exists(self, name: str) -> bool: ...
    def free_ifname(self, name: str, also_taken: Any = ()) -> str: ...
    def underlay_mtu(self, address: str) -> int | None: ...




class OverlayReconciler(Reconciler):
    what = "overlay"
    log = log

    def __init__(self, node: str, store: Store, kernel: OverlayKernelPort, prefix: str,
                 underlay_mtu: int, run: RunInKernel,
                 on_netns_gone: Callable[[list[str]], None] = lambda gone: None,
                 pending: set[str] | None = None) -> None:
        super().__init__(kernel, run, on_netns_gone)
        self.node = node
        self.store = store
        self.prefix = prefix
        self.underlay_mtu = underlay_mtu
        self.pending = pending if pending is not None else set()  #: unconfirmed local claims

    def want(self) -> Overlay:
        from meshnet.services import mesh_networks

        vteps = {name: str(n.vtep_addr) for name, n in self.store.all("vteps").items()}
        eps = [e for k, e in self.store.endpoints().items()
               if not (e.host == self.node and k in self.pending)]
        return desired(self.node, self.store.networks(), eps, vteps, self.underlay_mtu,
                       self.prefix, everywhere=mesh_networks(self.store))

    def plan(self, want: Overlay, have: Overlay) -> list[Op]:
        return plan(want, have)
