"""The per-host agent: one asyncio process that owns this host's part of the mesh.

Data flow (see docs/architecture.md): API requests and gossip write the replicated
tables (:class:`~meshnet.store.Store`); table changes kick the reconcilers, which compute
the desired kernel state from the tables and apply the difference. The agent object holds
them together and answers the API; it has no protocol logic of its own.

Signals: SIGTERM and SIGINT stop the agent gracefully (leave the cluster, close the API,
keep the data plane in place for the next start).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

from meshnet import __version__
from meshnet.config import AgentConfig
from meshnet.errors import Conflict, NotFound, UserError
from meshnet.model import VNI_MAX, Network
from meshnet.store import LocalTables, Store

log = logging.getLogger("meshnet.agent")

VNI_AUTO_MIN = 4096  # as Docker: keep clear of 802.1Q VLAN IDs
NETWORK_FIELDS = {"name", "subnet", "vni", "mtu", "internal"}


def pick_vni(name: str, taken: set[int]) -> int:
    """A VNI for a new network: a hash of its name, probed linearly past any taken VNI.

    Deterministic, so two hosts creating the same network name at once pick the same VNI.
    """
    span = VNI_MAX - VNI_AUTO_MIN + 1
    start = zlib.crc32(name.encode()) % span
    for i in range(span):
        vni = VNI_AUTO_MIN + (start + i) % span
        if vni not in taken:
            return vni
    raise Conflict("no free VNI left")


class Agent:
    def __init__(self, config: AgentConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.node = config.node_name
        self.clock = clock
        self.started = clock()
        self.store = Store(LocalTables(self.node))
        self._stop = asyncio.Event()
        self._api = None

    # --- lifecycle -----------------------------------------------------------------

    async def run(self) -> None:
        from meshnet.api.server import ApiServer

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        self._api = ApiServer(self, self.config.api)
        await self._api.start()
        log.info("agent %s up (pid %d, version %s)", self.node, os.getpid(), __version__)
        try:
            await self._stop.wait()
        finally:
            log.info("agent %s stopping", self.node)
            await self._api.stop()
            log.info("agent %s stopped", self.node)

    def stop(self) -> None:
        self._stop.set()

    def extra_routes(self) -> list[tuple[tuple[str, str], Callable[[Any], Awaitable[Any]]]]:
        return []

    # --- queries ---------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "state": "up",
            "version": __version__,
            "pid": os.getpid(),
            "uptime": round(self.clock() - self.started, 3),
            "api": self.config.api,
            "advertise": self.config.advertise_addr,
            "gossip": {"bind": f"{self.config.bind}:{self.config.bind_port}",
                       "preset": self.config.gossip_preset},
            "members": {"alive": len(self.members())},
            "networks": len(self.store.networks()),
            "endpoints": len(self.store.endpoints()),
            "services": len(self.store.services()),
        }

    def members(self) -> list[dict[str, Any]]:
        return [{
            "name": self.node,
            "addr": self.config.advertise_addr,
            "port": self.config.bind_port,
            "state": "alive",
            "incarnation": 0,
            "tags": {"role": "meshnet"},
        }]

    def list_networks(self) -> list[Network]:
        return sorted(self.store.networks().values(), key=lambda n: n.name)

    # --- commands ----------------------------------------------------------------

    def create_network(self, body: dict[str, Any]) -> Network:
        unknown = set(body) - NETWORK_FIELDS
        if unknown:
            raise UserError(f"unknown network field(s): {', '.join(sorted(unknown))}")
        if "name" not in body or "subnet" not in body:
            raise UserError("a network needs a name and a subnet")
        existing = self.store.networks()
        name = body["name"]
        if name in existing:
            raise Conflict(f"network {name} already exists")
        taken = {n.vni for n in existing.values()}
        vni = body.get("vni")
        if vni is None:
            vni = pick_vni(str(name), taken)
        net = Network(
            name=name, vni=vni, subnet=body["subnet"], mtu=body.get("mtu", 0),
            internal=body.get("internal", False),
        )
        clash = [n.name for n in existing.values() if n.vni == net.vni]
        if clash:
            raise Conflict(f"VNI {net.vni} is already used by network {clash[0]}")
        self.store.put("networks", net.name, net, self.clock())
        log.info("network %s created (vni %d, subnet %s)", net.name, net.vni, net.subnet)
        return net

    def remove_network(self, name: str) -> None:
        if name not in self.store.networks():
            raise NotFound(f"no network named {name}")
        users = [e.name for e in self.store.endpoints().values() if e.network == name]
        if users:
            raise Conflict(f"network {name} is in use by {', '.join(sorted(users)[:5])}")
        self.store.delete("networks", name, self.clock())
        log.info("network %s removed", name)
