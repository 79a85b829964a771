"""Load balancing inside the agent: one sync that plans from the tables and programs
iptables/IPVS, the LB kernel objects and port reservations, plus local health checks.

Order of one sync: wait for the overlay to settle (sandboxes exist), make sure this host
has an LB address on every routing-mesh network (an endpoint without a namespace, so
every host programs its FDB/neighbour entries), plan and apply the backend, the kernel
objects (``netobjects``) and the port reservations, then refresh the health targets.

Everything a sync reads from the tables comes from the reconciler's incremental planner
(its rows are brought up to date first: only the changed ones on a partial sync), never
from decoding the whole store, so a one-task change costs O(that change) end to end.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from meshnet.hostport import HostPort
from meshnet.ipvs.backend import choose_backend
from meshnet.ipvs.health import targets
from meshnet.ipvs.health_driver import HealthChecker
from meshnet.ipvs.netobjects import LbNetKernel, net_key
from meshnet.ipvs.reconciler import LbReconciler
from meshnet.ipvs.reserve import PortReservations
from meshnet.model import Endpoint, IPAddress, TaskHealth
from meshnet.vxlan.state import mac_for

log = logging.getLogger("meshnet.ipvs")
TABLES = frozenset({"networks", "endpoints", "services", "published", "health"})


class LoadBalancing:
    def __init__(self, host: HostPort, mode: str = "auto", backend: Any = None,
                 net: Any = None, probe: tuple[bool, str] | None = None) -> None:
        """``mode``: the ``--lb`` choice. ``probe``: the result of ``ipvs_available()``,
        run on the kernel thread (it uses pyroute2, which must not run on the event
        loop)."""
        self.host = host
        self.ipvs_ok, self.ipvs_reason = probe or (False, "not probed")
        if backend is None:
            backend, self.why = choose_backend(mode, host.prefix,  # type: ignore[arg-type]
                                               probe=lambda: (self.ipvs_ok, self.ipvs_reason))
            if mode == "ipvs":
                log.warning("load balancer: %s", self.why)
        else:
            self.why = "injected"
        self.backend = backend
        self.rec = LbReconciler(host.node, host.store, self.backend, host.prefix,
                                host.in_kernel, lb_ips=self.lb_ips, down_hosts=self.down_hosts)
        self.net = net or LbNetKernel(host.prefix)
        self.reservations = PortReservations()
        self.health = HealthChecker(emit=self._health_changed)
        self.health_written: set[str] = set()
        self.not_ready: list[str] = []
        self._net_done: tuple | None = None  #: net_key of the last complete net apply

    @property
    def lb_name(self) -> str:
        return f"lb-{self.host.node}"

    def start(self) -> None:
        # results written before a restart (loaded with the durable tables) are ours to
        # retract if their task is gone
        self.health_written = {key for key, _, owner in self.host.store.backend.items("health")
                               if owner == self.host.node}
        self.health.start()

    async def stop(self) -> None:
        await self.health.stop()
        self.reservations.close()

    def lb_endpoints(self) -> dict[str, Endpoint]:
        """This host's LB addresses (as of the planner's rows: refreshed each sync)."""
        return {e.network: e for e in self.rec.planner.local_endpoints()
                if not e.netns and e.name == self.lb_name}

    def lb_ips(self) -> dict[str, IPAddress]:
        return {net: e.ip for net, e in self.lb_endpoints().items()}

    def down_hosts(self) -> set[str]:
        """Hosts found gone (or left); a host whose agent is merely down keeps its tasks,
        with the health they last had."""
        return self.host.gone_hosts()

    async def _ensure_lb_addresses(self) -> None:
        planner = self.rec.planner
        need = planner.mesh_networks()
        have = self.lb_endpoints()
        networks = planner.networks
        for name in sorted(need - set(have)):
            if name in networks:
                ep = await self.host.claim(networks[name], None, lambda ip, n=name: Endpoint(
                    network=n, ip=ip, mac=mac_for(ip), host=self.host.node,
                    name=self.lb_name))
                log.info("load-balancer address %s on %s", ep.ip, name)
        for name in sorted(set(have) - need):
            self.host.store.delete("endpoints", have[name].key, self.host.clock())

    async def sync(self, full: bool) -> None:
        host = self.host
        await host.overlay_settled(30)
        self.rec.refresh(full)
        await self._ensure_lb_addresses()
        await self.rec.sync(full)
        state = self.rec.last_state
        key = net_key(state)
        if full or key != self._net_done or self.not_ready:
            self._net_done = None
            self.not_ready = await host.in_kernel(lambda: self.net.apply(state))
            if not self.not_ready:
                self._net_done = key
        self.reservations.sync(set(state.host.reserved))
        store = host.store
        planner = self.rec.planner
        tgts = targets(host.node, planner.networks, planner.services,
                       planner.local_endpoints(), host.prefix)
        self.health.set_targets(tgts)
        live = {t.key for t in tgts}
        for key in sorted(self.health_written - live):  # tasks gone or check removed
            store.delete("health", key, host.clock())
            self.health_written.discard(key)
        if self.not_ready or self.rec.skipped:
            # a sandbox the overlay has not made (yet, or any more: a namespace that
            # vanished mid-attach): nothing to program there now. Try again shortly, but
            # do not fail this run, so attach/detach (which wait for every runner to
            # settle) are never held up by it.
            log.debug("sandboxes not ready: %s", self.not_ready or self.rec.skipped)
            asyncio.get_running_loop().call_later(0.5, self.host.kick, "lb")

    def _health_changed(self, th: TaskHealth) -> None:
        key = f"{th.network}/{th.ip}"
        self.health_written.add(key)
        self.host.store.put("health", key, th, self.host.clock())
        log.info("task %s of %s is %s%s", th.ip, th.service,
                 "healthy" if th.healthy else "unhealthy",
                 f" ({th.reason})" if th.reason else "")

    def status(self) -> dict[str, Any]:
        state = self.rec.last_state
        return {
            "backend": self.backend.name, "why": self.why,
            "ipvs": {"available": self.ipvs_ok, "reason": self.ipvs_reason},
            "virtual_services": len(state.services()),
            "published": [p.key for p in state.host.published],
            "reservation_failures": dict(self.reservations.failed),
            "backends": {h: sum(c[h] for c in self.backend_counts().values())
                         for h in ("healthy", "unhealthy")},
        }

    def backend_counts(self) -> dict[str, dict[str, int]]:
        """Backends by health per service (for metrics)."""
        store = self.host.store
        health = store.all("health")
        out: dict[str, dict[str, int]] = {}
        for key, e in store.endpoints().items():
            if not e.service:
                continue
            th = health.get(key)
            ok = not (isinstance(th, TaskHealth) and not th.healthy)
            c = out.setdefault(e.service, {"healthy": 0, "unhealthy": 0})
            c["healthy" if ok else "unhealthy"] += 1
        return out
