"""The macvlan reconciler: tables -> desired ports and VLANs -> plan -> kernel."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from meshnet.hostport import Claim
from meshnet.macvlan.kernel import MacvlanKernel
from meshnet.macvlan.state import MacvlanState, Op, desired, plan, shim_endpoint_name
from meshnet.model import Endpoint, Network
from meshnet.reconcile import Reconciler, RunInKernel
from meshnet.store import Store
from meshnet.vxlan.state import mac_for

log = logging.getLogger("meshnet.macvlan")


class MacvlanReconciler(Reconciler):
    what = "macvlan"
    log = log

    def __init__(self, node: str, store: Store, kernel: MacvlanKernel, run: RunInKernel,
                 parent_of: Callable[[Network], str],
                 on_netns_gone: Callable[[list[str]], None] = lambda gone: None,
                 pending: set[str] | None = None, claim: Claim | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        """``claim``: with it, every macvlan network with a local container gets a shim
        (an address of the network for this host; see ``state.Shim``)."""
        super().__init__(kernel, run, on_netns_gone)
        self.node = node
        self.store = store
        self.parent_of = parent_of
        self.claim = claim
        self.clock = clock
        self.pending = pending if pending is not None else set()
        self.known: set[str] = set()  #: namespaces that had a port (to find removals)
        self.idle = False  #: the last sync found nothing of macvlan, wanted or present

    def want(self) -> MacvlanState:
        eps = [e for k, e in self.store.endpoints().items()
               if not (e.host == self.node and k in self.pending)]
        return desired(self.node, self.store.networks(), eps, self.parent_of)

    def plan(self, want: MacvlanState, have: MacvlanState) -> list[Op]:
        return plan(want, have)

    async def _shim_addresses(self) -> None:
        """Claim a shim address on each macvlan network with a local container; release it
        when the last one goes."""
        name = shim_endpoint_name(self.node)
        nets = {n: net for n, net in self.store.networks().items() if net.macvlan}
        mine = [e for e in self.store.endpoints().values()
                if e.host == self.node and e.network in nets]
        have = {e.network: e for e in mine if not e.netns and e.name == name}
        need = ({e.network for e in mine if e.netns and not e.docker}
                if self.claim is not None else set())  # shims off: release any left
        for net_name in sorted(need - set(have)):
            if self.claim is not None:  # (always, here: need is empty without it)
                ep = await self.claim(nets[net_name], None, lambda ip, n=net_name: Endpoint(
                    network=n, ip=ip, mac=mac_for(ip), host=self.node, name=name))
                log.info("macvlan shim address %s on %s", ep.ip, net_name)
        for net_name in sorted(set(have) - need):
            self.store.delete("endpoints", have[net_name].key, self.clock())

    async def sync(self, full: bool) -> None:
        await self._shim_addresses()
        want = self.want()
        if self.idle and not full and not (want.ports or want.vlans or want.shims):
            return  # no macvlan network in use: leave the kernel thread to the others
        look = self.known | {ns for ns, _ in want.ports}
        have = await self.run(lambda: self.kernel.observe(look))
        ops = self.plan(want, have)
        self.last_plan = ops
        self.known = {ns for ns, _ in want.ports}
        self.idle = not (want.ports or want.vlans or want.shims or have.ports or have.vlans
                         or have.shims)
        if not ops:
            return
        self.log.info("applying %d macvlan change(s): %s", len(ops),
                      ", ".join(sorted({self.kind(o) for o in ops})))
        gone = await self.run(lambda: self.kernel.apply(ops))
        self.ops_applied += len(ops)
        if gone:
            self.on_netns_gone(gone)
