"""The plugin's calls, over a narrow port of the agent (:class:`DockerHost`).

Call order as dockerd 20.10 sends it (docs/docker.md):

* ``network create``: RequestPool -> (RequestAddress gateway: not sent, the pool's Data
  carries the gateway) -> CreateNetwork;
* ``run``/``network connect``: RequestAddress -> CreateEndpoint -> Join ->
  ProgramExternalConnectivity (only if ours were the gateway endpoint: never, see Join);
* ``stop``/``rm``/``disconnect``: Revoke.. -> Leave -> DeleteEndpoint -> ReleaseAddress.

RequestAddress claims the address cluster-wide (an endpoint row with ``netns`` =
``docker:``, no kernel object); CreateEndpoint binds it to Docker's EndpointID, which
makes the overlay create the veth (container side ``mn-dkXXXXXXXX`` in the host
namespace) before the answer, so Join only names it. Every handler is idempotent:
dockerd repeats Leave/DeleteEndpoint/ReleaseAddress after its own crash, and an unknown
ID is success.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import zlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any, Protocol

from meshnet.dns.programmer import DOCKER_UPSTREAM as DNS_UPSTREAM
from meshnet.dockerplugin import protocol as p
from meshnet.dockerplugin.state import NetworkBinding, PluginState, StateFile
from meshnet.errors import UserError
from meshnet.model import DOCKER_NETNS, Endpoint, IPAddress, Network, check_name, parse_ip
from meshnet.vxlan.state import docker_peer_name

log = logging.getLogger("meshnet.docker")

AUTO_POOLS = ipaddress.ip_network("10.96.0.0/11")  #: subnets for networks without --subnet
AUTO_PREFIX = 24
NAME_WAIT = 15.0  #: how long a call waits for a network's name to be learned


def _address(text: str) -> IPAddress:
    """An address as Docker sends it ("10.0.0.2" or "10.0.0.2/24")."""
    try:
        return parse_ip(text.partition("/")[0])
    except UserError:
        raise p.PluginError(f"invalid address {text!r}") from None


class DockerHost(Protocol):
    """What the plugin uses of the agent."""

    node: str

    def docker_networks(self) -> Mapping[str, Network]: ...

    def docker_endpoint(self, key: str) -> Endpoint | None: ...

    async def create_network(self, body: dict[str, Any]) -> Network: ...

    async def docker_claim(self, net: Network, static: str | None) -> Endpoint: ...

    async def docker_put(self, ep: Endpoint) -> None: ...

    async def docker_remove(self, key: str) -> None: ...

    async def durable(self) -> None: ...


Namer = Callable[[str], Awaitable[str | None]]  #: Docker NetworkID -> its Docker name


class Driver:
    def __init__(self, host: DockerHost, state_file: StateFile) -> None:
        self.host = host
        self.file = state_file
        self.state: PluginState = state_file.load()
        self.namer: Namer | None = None  #: set once the Docker Engine API is reachable
        self._named: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Task] = set()
        self.calls: dict[str, int] = {}
        self.errors = 0
        for nid, b in self.state.networks.items():
            if not b.name:  # the agent stopped before it learned the name
                self._learn_name(nid)

    # --- entry point -------------------------------------------------------------

    async def handle(self, method: str, body: bytes) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON answer) of one call; never raises."""
        self.calls[method] = self.calls.get(method, 0) + 1
        try:
            return 200, await self._call(method, body)
        except p.EmptyBody as exc:
            self.errors += 1
            return 400, {"Err": str(exc)}
        except UserError as exc:
            self.errors += 1
            log.info("docker %s refused: %s", method, exc)
            return 500, {"Err": str(exc)}
        except Exception as exc:  # a bug: answered, logged, never a dropped connection
            self.errors += 1
            log.exception("docker %s failed", method)
            return 500, {"Err": f"meshnet internal error: {exc}"}

    async def _call(self, method: str, body: bytes) -> dict[str, Any]:
        match method:
            case "Plugin.Activate":
                return p.ACTIVATE
            case "NetworkDriver.GetCapabilities":
                return p.NET_CAPS
            case "IpamDriver.GetCapabilities":
                return p.IPAM_CAPS
            case "IpamDriver.GetDefaultAddressSpaces":
                return p.ADDRESS_SPACES
        req = p.parse(method, body)
        match req:
            case p.RequestPool():
                return self.request_pool(req)
            case p.ReleasePool(pool_id=pid):
                if self.state.pools.pop(pid, None) is not None:
                    self._save()
                return {}
            case p.RequestAddress():
                return await self.request_address(req)
            case p.ReleaseAddress():
                await self.release_address(req)
                return {}
            case p.CreateNetwork():
                return await self.create_network(req)
            case p.NetworkRef(network_id=nid):
                if method.endswith("DeleteNetwork") and self.state.networks.pop(nid, None):
                    self._save()
                return {}
            case p.CreateEndpoint():
                return await self.create_endpoint(req)
            case p.Join():
                return await self.join(req)
            case p.EndpointRef(endpoint_id=eid):
                if method.endswith("DeleteEndpoint"):
                    await self.delete_endpoint(eid)
                elif method.endswith("Leave"):
                    if self.state.joined.pop(eid, None) is not None:
                        self._save()
                elif method.endswith("EndpointOperInfo"):
                    return {"Value": {}}
                return {}
        if method == "NetworkDriver.AllocateNetwork":
            return {"Options": {}}
        return {}  # DiscoverNew / DiscoverDelete: meshnet has its own membership

    def _save(self) -> None:
        self.file.save(self.state)

    # --- IPAM --------------------------------------------------------------------

    def request_pool(self, req: p.RequestPool) -> dict[str, Any]:
        if req.v6:
            raise p.PluginError("meshnet's IPAM has no IPv6 pools: leave out --ipv6")
        if req.sub_pool:
            raise p.PluginError("meshnet's IPAM does not support --ip-range")
        if req.address_space and req.address_space != p.ADDRESS_SPACE:
            raise p.PluginError(f"unknown address space {req.address_space!r}")
        if req.pool:
            try:
                subnet = ipaddress.ip_network(req.pool, strict=False)
            except ValueError:
                raise p.PluginError(f"invalid subnet {req.pool!r}") from None
            if subnet.version != 4 or subnet.prefixlen > 30:
                raise p.PluginError(f"subnet {subnet}: meshnet needs an IPv4 subnet of /30 "
                                    "or larger")
            taken = [pid for pid, s in self.state.pools.items() if s == str(subnet)]
            if taken:
                raise p.PluginError(f"subnet {subnet} is already used by another Docker network "
                                    "on this host")
        else:
            subnet = self._auto_subnet()
        pid = f"{p.ADDRESS_SPACE}-{subnet}"
        self.state.pools[pid] = str(subnet)
        self._save()
        gw = subnet.network_address + 1
        return {"PoolID": pid, "Pool": str(subnet),
                "Data": {p.GATEWAY_KEY: f"{gw}/{subnet.prefixlen}"}}

    def _auto_subnet(self) -> ipaddress.IPv4Network:
        """A /24 of AUTO_POOLS no meshnet network and no held pool overlaps (each host
        starts its search elsewhere: concurrent creates on two hosts rarely collide)."""
        used = [n.subnet for n in self.host.docker_networks().values()]
        used += [ipaddress.ip_network(s) for s in self.state.pools.values()]
        count = 1 << (AUTO_PREFIX - AUTO_POOLS.prefixlen)
        start = zlib.crc32(self.host.node.encode()) % count
        base = int(AUTO_POOLS.network_address)
        for i in range(count):
            net = ipaddress.ip_network(
                (base + ((start + i) % count) * (1 << (32 - AUTO_PREFIX)), AUTO_PREFIX))
            if not any(net.overlaps(u) for u in used):
                return net  # type: ignore[return-value]
        raise p.PluginError(f"no free /{AUTO_PREFIX} left in {AUTO_POOLS}: give --subnet")

    async def request_address(self, req: p.RequestAddress) -> dict[str, Any]:
        subnet_text = self.state.pools.get(req.pool_id)
        if subnet_text is None:
            raise p.PluginError(f"unknown pool {req.pool_id!r}")
        subnet = ipaddress.ip_network(subnet_text)
        gw = subnet.network_address + 1
        if req.gateway:
            if req.address and ipaddress.ip_address(req.address) != gw:
                raise p.PluginError(f"meshnet networks use the first address ({gw}) as the "
                                    "gateway")
            return {"Address": f"{gw}/{subnet.prefixlen}", "Data": {}}
        net = await self._network_of_pool(req.pool_id)
        ep = await self.host.docker_claim(net, req.address or None)
        await self.host.durable()
        return {"Address": f"{ep.ip}/{subnet.prefixlen}", "Data": {}}

    async def release_address(self, req: p.ReleaseAddress) -> None:
        bound = self.state.network_of_pool(req.pool_id)
        if bound is None or not bound[1].name:
            return
        ip = _address(req.address)
        key = f"{bound[1].name}/{ip}"
        ep = self.host.docker_endpoint(key)
        if ep is not None and ep.docker and ep.host == self.host.node:
            await self.host.docker_remove(key)
            await self.host.durable()

    # --- networks ------------------------------------------------------------------

    async def create_network(self, req: p.CreateNetwork) -> dict[str, Any]:
        if req.ipv6:
            raise p.PluginError("meshnet networks in Docker are IPv4 only: leave out --ipv6")
        if not req.ipv4 or req.ipv4[0].address_space != p.ADDRESS_SPACE:
            raise p.PluginError("meshnet networks need meshnet's IPAM (addresses unique "
                                "across hosts): add --ipam-driver meshnet")
        if len(req.ipv4) > 1:
            raise p.PluginError("a meshnet network has one subnet")
        subnet = ipaddress.ip_network(req.ipv4[0].pool)
        pid = next((k for k, v in self.state.pools.items() if v == str(subnet)), None)
        if pid is None:
            raise p.PluginError(f"pool {subnet} was not allocated by meshnet's IPAM")
        name = req.generic.get(p.OPT_NETWORK, "")
        nets = self.host.docker_networks()
        if name:
            check_name(name, "meshnet network name")
            net = nets.get(name)
            if net is None:
                await self.host.create_network({"name": name, "subnet": str(subnet),
                                          "internal": req.internal})
                await self.host.durable()
            elif net.subnet != subnet:
                raise p.PluginError(f"meshnet network {name} has subnet {net.subnet}: create "
                                    f"it with --subnet {net.subnet}")
            elif net.macvlan:
                raise p.PluginError(f"meshnet network {name} is macvlan: the plugin serves "
                                    "overlay networks (Docker's own macvlan driver serves "
                                    "the LAN)")
        else:
            name = next((n.name for n in nets.values()
                         if n.subnet == subnet and not n.macvlan), "")
        self.state.networks[req.network_id] = NetworkBinding(name, pid, req.internal)
        if name:
            self.state.ensured.add(name)  # has a Docker network here: never re-made for it
        self._save()
        if not name:
            self._learn_name(req.network_id)
        log.info("docker network %s -> meshnet network %s (%s)", req.network_id[:12],
                 name or "(name from Docker, after the call)", subnet)
        return {}

    def _learn_name(self, nid: str) -> None:
        self._named[nid] = asyncio.Event()
        try:
            task = asyncio.get_running_loop().create_task(self._name_network(nid))
        except RuntimeError:
            return  # no loop (state loaded outside the agent); named on the next start
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _name_network(self, nid: str) -> None:
        """After CreateNetwork has been answered: ask Docker for the network's name (it is
        in Docker's store only then), create or join the meshnet network of that name."""
        name = None
        for _ in range(40):
            if self.namer is not None:
                try:
                    name = await self.namer(nid)
                except Exception as exc:  # Docker unreachable for now
                    log.debug("naming %s: %s", nid[:12], exc)
                if name:
                    break
            await asyncio.sleep(0.25)
        b = self.state.networks.get(nid)
        if b is None:  # deleted meanwhile
            self._named.pop(nid).set()
            return
        subnet = ipaddress.ip_network(self.state.pools.get(b.pool, "0.0.0.0/32"))
        try:
            name = check_name(name or "", "network name")
        except UserError:
            name = f"docker-{nid[:12]}"
        net = self.host.docker_networks().get(name)
        if net is not None and net.subnet != subnet:
            log.warning("docker network %s: meshnet network %s exists with subnet %s; "
                        "using the name docker-%s", nid[:12], name, net.subnet, nid[:12])
            name, net = f"docker-{nid[:12]}", None
        if net is None and name not in self.host.docker_networks():
            try:
                await self.host.create_network({"name": name, "subnet": str(subnet),
                                          "internal": b.internal})
                await self.host.durable()
            except UserError as exc:
                log.warning("docker network %s: %s", nid[:12], exc)
        b.name = name
        self.state.ensured.add(name)
        self._save()
        log.info("docker network %s is meshnet network %s", nid[:12], name)
        self._named.pop(nid).set()

    async def _binding(self, nid: str) -> NetworkBinding:
        b = self.state.networks.get(nid)
        if b is None:
            raise p.PluginError(f"network {nid[:12]} is not a meshnet network on this host")
        if not b.name:
            ev = self._named.get(nid)
            if ev is not None:
                try:
                    await asyncio.wait_for(ev.wait(), NAME_WAIT)
                except TimeoutError:
                    pass
            if not b.name:
                raise p.PluginError(f"network {nid[:12]}: its name is still being learned "
                                    "from Docker; try again")
        return b

    async def _network_of_pool(self, pid: str) -> Network:
        bound = self.state.network_of_pool(pid)
        if bound is None:
            raise p.PluginError(f"pool {pid!r} belongs to no Docker network")
        b = await self._binding(bound[0])
        return self._network(b.name)

    def _network(self, name: str) -> Network:
        net = self.host.docker_networks().get(name)
        if net is None:
            raise p.PluginError(f"meshnet network {name} no longer exists (removed with "
                                "`meshnet network rm`?)")
        return net

    # --- endpoints -----------------------------------------------------------------

    async def create_endpoint(self, req: p.CreateEndpoint) -> dict[str, Any]:
        b = await self._binding(req.network_id)
        net = self._network(b.name)
        ip = _address(req.address)
        key = f"{net.name}/{ip}"
        ep = self.host.docker_endpoint(key)
        if ep is None:  # not claimed through our RequestAddress (an agent restart between)
            ep = await self.host.docker_claim(net, str(ip))
        elif ep.host != self.host.node or not ep.docker:
            raise p.PluginError(f"address {ip} is already in use on network {net.name}")
        elif ep.docker_id and ep.docker_id != req.endpoint_id:
            raise p.PluginError(f"address {ip} belongs to another Docker endpoint")
        mac = req.mac.lower() if req.mac else ep.mac
        name = ep.name if ep.docker_id else f"ep-{req.endpoint_id[:12]}"
        new = replace(ep, mac=mac, name=name, netns=DOCKER_NETNS + req.endpoint_id)
        self.state.endpoints[req.endpoint_id] = key
        self._save()
        await self.host.docker_put(new)
        await self.host.durable()
        return {} if req.mac else {"Interface": {"MacAddress": mac}}

    def _endpoint(self, eid: str) -> Endpoint:
        key = self.state.endpoints.get(eid)
        ep = self.host.docker_endpoint(key) if key else None
        if ep is None:
            raise p.PluginError(f"endpoint {eid[:12]} is not known to meshnet")
        return ep

    async def join(self, req: p.Join) -> dict[str, Any]:
        ep = self._endpoint(req.endpoint_id)
        await self.host.docker_put(ep)  # the veth exists (again, after a restart)
        first = not any(s == req.sandbox_key and e != req.endpoint_id
                        for e, s in self.state.joined.items())
        self.state.joined[req.endpoint_id] = req.sandbox_key
        self._save()
        routes = ([{"Destination": f"{DNS_UPSTREAM}/32", "RouteType": 1}]
                  if first and req.sandbox_key else [])
        return {"InterfaceName": {"SrcName": docker_peer_name(ep.key), "DstPrefix": "eth"},
                "StaticRoutes": routes, "DisableGatewayService": False}

    async def delete_endpoint(self, eid: str) -> None:
        key = self.state.endpoints.pop(eid, None)
        self.state.joined.pop(eid, None)
        self._save()
        if key is None:
            return
        ep = self.host.docker_endpoint(key)
        if ep is not None and ep.docker_id == eid and ep.host == self.host.node:
            await self.host.docker_remove(key)
            await self.host.durable()

    # --- names from Docker -----------------------------------------------------------

    async def name_endpoint(self, eid: str, name: str, aliases: tuple[str, ...],
                            service: str) -> bool:
        """A container's name, aliases and meshnet.service label for its endpoint (from the
        Docker API, after the start). True if the endpoint changed."""
        key = self.state.endpoints.get(eid)
        ep = self.host.docker_endpoint(key) if key else None
        if ep is None or ep.docker_id != eid:
            return False
        new = replace(ep, name=name, aliases=aliases, service=service)
        if new == ep:
            return False
        await self.host.docker_put(new)
        return True

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
