"""The overlay reconciler: tables -> desired overlay -> plan -> kernel (one worker thread)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

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


RunInKernel = Callable[[Callable[[], Any]], Awaitable[Any]]


class OverlayReconciler:
    def __init__(self, node: str, store: Store, kernel: OverlayKernelPort, prefix: str,
                 underlay_mtu: int, run: RunInKernel,
                 on_netns_gone: Callable[[list[str]], None] = lambda gone: None,
                 pending: set[str] | None = None) -> None:
        self.node = node
        self.store = store
        self.kernel = kernel
        self.prefix = prefix
        self.underlay_mtu = underlay_mtu
        self.run = run
        self.on_netns_gone = on_netns_gone
        self.pending = pending if pending is not None else set()  #: unconfirmed local claims
        self.last_plan: list[Op] = []
        self.ops_applied = 0

    def want(self) -> Overlay:
        vteps = {name: str(n.vtep_addr) for name, n in self.store.all("vteps").items()}
        eps = [e for k, e in self.store.endpoints().items()
               if not (e.host == self.node and k in self.pending)]
        from meshnet.services import mesh_networks

        return desired(self.node, self.store.networks(), eps, vteps, self.underlay_mtu,
                       self.prefix, everywhere=mesh_networks(self.store))

    async def sync(self, full: bool) -> None:
        want = self.want()
        have = await self.run(self.kernel.observe)
        ops = plan(want, have)
        self.last_plan = ops
        if not ops:
            return
        log.info("applying %d overlay change(s): %s", len(ops),
                 ", ".join(sorted({type(o).__name__ for o in ops})))
        gone = await self.run(lambda: self.kernel.apply(ops))
        self.ops_applied += len(ops)
        if gone:
            self.on_netns_gone(gone)
