"""What the plugin learns from the Docker Engine API after its calls (never during one:
dockerd may hold a lock while it waits for the plugin's answer).

* the Docker name of a network created without ``-o meshnet.network`` (``Driver.namer``);
* container names, ``--network-alias`` aliases and the ``meshnet.service`` label, for the
  container's endpoints (on every container ``start`` and network ``connect`` event, and
  in a full pass on every
  (re)connect and every ``FULL_INTERVAL``), so other hosts resolve them;
* stale endpoints: one dockerd no longer lists (it stopped a container while the agent
  was down, so Leave/DeleteEndpoint never came) is removed after two passes;
* the Docker network of every meshnet network on this host (``docker network create -d
  meshnet --ipam-driver meshnet --subnet S -o meshnet.network=NAME NAME``), once per
  network and host: a network made with ``meshnet network create`` or on another host
  is usable with ``docker run --network NAME`` here too. A user who then removes it with
  ``docker network rm`` is not overruled.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from meshnet.dockerplugin import protocol as p
from meshnet.dockerplugin.driver import Driver
from meshnet.errors import UserError
from meshnet.model import check_name
from meshnet.runtime.containers import LABEL_SERVICE
from meshnet.runtime.docker import DockerClient, DockerError, DockerUnavailable

log = logging.getLogger("meshnet.docker")
FULL_INTERVAL = 30.0
STALE_AFTER = 20.0  #: an endpoint dockerd has not listed for this long is stale
ENSURE_INTERVAL = 1.0


def endpoint_names(inspect: dict[str, Any]) -> list[tuple[str, str, tuple[str, ...], str]]:
    """(EndpointID, container name, aliases, service) per network of one container
    (pure). Names Docker adds on its own (the short ID) are left out; an alias meshnet
    cannot use as a DNS name is dropped."""
    name = str(inspect.get("Name") or "").lstrip("/")
    cid = str(inspect.get("Id") or "")
    labels = (inspect.get("Config") or {}).get("Labels") or {}
    service = str(labels.get(LABEL_SERVICE, "") if isinstance(labels, dict) else "")
    nets = (inspect.get("NetworkSettings") or {}).get("Networks") or {}
    out = []
    if not isinstance(nets, dict):
        return out
    for info in nets.values():
        if not isinstance(info, dict) or not info.get("EndpointID"):
            continue
        aliases = []
        for a in info.get("Aliases") or ():
            if not isinstance(a, str) or a == name or (cid and cid.startswith(a)):
                continue
            try:
                aliases.append(check_name(a))
            except UserError:
                continue
        try:
            check_name(name)
            if service:
                check_name(service)
        except UserError:
            continue
        out.append((str(info["EndpointID"]), name, tuple(dict.fromkeys(aliases)), service))
    return out


class DockerNames:
    def __init__(self, driver: Driver, client: DockerClient) -> None:
        self.driver = driver
        self.client = client
        self._tasks: list[asyncio.Task] = []
        self._missing: dict[str, float] = {}  #: EndpointID -> when dockerd first lacked it
        driver.namer = self._network_name

    async def _network_name(self, nid: str) -> str | None:
        info = await self.client.network(nid)
        return str(info.get("Name") or "") if info else None

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._follow(), name="docker-names"),
                       asyncio.create_task(self._ensure_loop(), name="docker-networks")]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- container names ---------------------------------------------------------------

    async def name_container(self, cid: str) -> None:
        info = await self.client.inspect(cid)
        if not info:
            return
        for eid, name, aliases, service in endpoint_names(info):
            if await self.driver.name_endpoint(eid, name, aliases, service):
                log.info("docker endpoint %s is %s%s", eid[:12], name,
                         f" (aliases {','.join(aliases)})" if aliases else "")

    async def full_pass(self) -> None:
        if not self.driver.state.endpoints:
            return
        for c in await self.client.containers():
            await self.name_container(str(c.get("Id", "")))
        await self.reap_stale()

    async def reap_stale(self, now: float | None = None) -> list[str]:
        """Endpoints Docker no longer has (it could not tell us: the agent was down when a
        container stopped, or dockerd crashed and lost them) are removed, once Docker has
        not listed them on two passes at least STALE_AFTER apart."""
        now = time.monotonic() if now is None else now
        known: set[str] = set()
        for nid in list(self.driver.state.networks):
            info = await self.client.network(nid)
            for c in ((info or {}).get("Containers") or {}).values():
                if isinstance(c, dict) and c.get("EndpointID"):
                    known.add(str(c["EndpointID"]))
        gone = []
        for eid in list(self.driver.state.endpoints):
            if eid in known:
                self._missing.pop(eid, None)
                continue
            first = self._missing.setdefault(eid, now)
            if now - first >= STALE_AFTER:
                log.info("docker endpoint %s is unknown to dockerd: removing it", eid[:12])
                await self.driver.delete_endpoint(eid)
                self._missing.pop(eid, None)
                gone.append(eid)
        return gone

    async def _follow(self) -> None:
        delay = 0.1
        while True:
            try:
                stream = await self.client.events({"type": ["container", "network"],
                                                   "event": ["start", "connect"]})
            except (DockerUnavailable, DockerError):
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.1
            full = asyncio.create_task(self._periodic())
            try:
                await self.full_pass()
                async for event in stream:
                    actor = event.get("Actor") or {}
                    if event.get("Type") == "network":  # connect: the container's ID
                        cid = str((actor.get("Attributes") or {}).get("container") or "")
                    else:
                        cid = str(actor.get("ID") or event.get("id") or "")
                    if cid:
                        try:
                            await self.name_container(cid)
                        except DockerError as exc:
                            log.debug("inspect %s: %s", cid[:12], exc)
            except DockerUnavailable:
                pass
            finally:
                full.cancel()
                await stream.close()

    async def _periodic(self) -> None:
        while True:
            await asyncio.sleep(FULL_INTERVAL)
            try:
                await self.full_pass()
            except (DockerUnavailable, DockerError) as exc:
                log.debug("docker names: %s", exc)

    # --- a Docker network for every meshnet network ----------------------------------

    async def _ensure_loop(self) -> None:
        while True:
            try:
                await self.ensure_networks()
            except (DockerUnavailable, DockerError) as exc:
                log.debug("docker networks: %s", exc)
            await asyncio.sleep(ENSURE_INTERVAL)

    async def ensure_networks(self) -> None:
        state = self.driver.state
        nets = self.driver.host.docker_networks()
        if state.ensured - set(nets):  # removed cluster-wide: may be made again later
            state.ensured &= set(nets)
            self.driver.file.save(state)
        bound = {b.name for b in state.networks.values()}
        todo = [n for name, n in sorted(nets.items())
                if name not in state.ensured and name not in bound and not n.macvlan]
        if not todo:
            return
        have = {str(n.get("Name")): n for n in await self.client.networks()}
        for net in todo:
            if net.name not in have:
                try:
                    await self.client.post_json("/networks/create", {
                        "Name": net.name, "Driver": "meshnet", "CheckDuplicate": True,
                        "Internal": net.internal,
                        "IPAM": {"Driver": "meshnet",
                                 "Config": [{"Subnet": str(net.subnet)}]},
                        "Options": {p.OPT_NETWORK: net.name}})
                    log.info("docker network %s created for meshnet network %s",
                             net.name, net.name)
                except DockerError as exc:
                    log.warning("docker network %s: %s", net.name, exc)
            state.ensured.add(net.name)
        self.driver.file.save(state)
