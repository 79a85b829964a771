"""The per-host agent: one asyncio process that owns this host's part of the mesh.

Data flow (see docs/architecture.md): API requests and gossip write the replicated
tables (:class:`~meshnet.store.Store`); table changes kick the reconcilers, which compute
the desired kernel state from the tables and apply the difference. The agent object holds
them together and answers the API; it has no protocol logic of its own.

Signals: SIGTERM and SIGINT stop the agent for a restart: the data plane stays in the
kernel, the tables stay on disk, and the agent does not leave the cluster (peers see it
failed, ask its host, find it answering and keep its entries). ``meshnet leave`` (or
``leave-on-terminate``) is the decommission: the node leaves, its entries go everywhere.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import signal
import time
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from meshnet import __version__
from meshnet.cluster import Cluster
from meshnet.config import AgentConfig
from meshnet.dns.config import DnsConfig
from meshnet.dns.forwarder import parse_upstream
from meshnet.dns.programmer import DnsProgrammer
from meshnet.dns.sandbox import read_host_upstreams
from meshnet.dns.server import DnsServer
from meshnet.errors import Conflict, NotFound, UserError
from meshnet.gwbridge.kernel import GwKernel
from meshnet.gwbridge.reconciler import GwReconciler
from meshnet.gwbridge.state import Allocation
from meshnet.hostport import HostPort
from meshnet.ipvs.agentlb import TABLES as LB_TABLES
from meshnet.ipvs.agentlb import LoadBalancing
from meshnet.ipvs.ipvs import ipvs_available
from meshnet.ipvs.reserve import port_free
from meshnet.keys import decode_key
from meshnet.macvlan.kernel import MacvlanKernel
from meshnet.macvlan.reconciler import MacvlanReconciler
from meshnet.model import DOCKER_NETNS, VNI_MAX, Endpoint, IPAddress, KeyringSpec, Network, Node
from meshnet.services import create_service, publish_port, remove_service, unpublish_port
from meshnet.store import LocalTables, Store
from meshnet.syncer import SyncRunner
from meshnet.systemd import Notifier
from meshnet.trace.service import Tracer
from meshnet.vxlan.ipam import allocate, check_static
from meshnet.vxlan.kernel import OverlayKernel
from meshnet.vxlan.reconciler import OverlayKernelPort, OverlayReconciler
from meshnet.vxlan.state import mac_for

log = logging.getLogger("meshnet.agent")

VNI_AUTO_MIN = 4096  # as Docker: keep clear of 802.1Q VLAN IDs
NETWORK_FIELDS = {"name", "subnet", "vni", "mtu", "internal", "driver", "gateway", "ip_range",
                  "parent", "macvlan_mode"}
ATTACH_FIELDS = {"netns", "network", "name", "service", "aliases", "ip"}
DOCKER_SETTLE = frozenset({"vxlan", "dns"})
DOCKER_WAIT = 60.0  #: how long a Docker plugin call waits for the data plane to start


async def _trim_memory(period: float = 20.0) -> None:
    """Hand freed heap back to the system now and then (glibc malloc_trim): syncs decode
    whole tables, and without this the high-water mark of those short-lived objects stays
    resident after churn."""
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    while True:
        await asyncio.sleep(period)
        libc.malloc_trim(0)


def _ns_identity(ns: str) -> str:
    """device:inode of a namespace (name or path), "" if it is gone."""
    from meshnet.netns import path_of

    try:
        st = os.stat(path_of(ns))
    except OSError:
        return ""
    return f"{st.st_dev}:{st.st_ino}"


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
    def __init__(self, config: AgentConfig, clock: Callable[[], float] = time.time,
                 overlay_kernel: OverlayKernelPort | None = None,
                 gw_kernel: Any = None, notifier: Notifier | None = None,
                 lb_factory: Callable[..., LoadBalancing] = LoadBalancing,
                 macvlan_kernel: Any = None) -> None:
        self.config = config
        self.node = config.node_name
        self.clock = clock
        self.started = clock()
        self.store = Store(LocalTables(self.node))
        self.prefix = config.netns_prefix or "mn-"
        self.vtep = config.advertise_addr
        self._stop = asyncio.Event()
        # every kernel call runs on this one thread (pyroute2 is synchronous)
        self._kernel_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kernel")
        self.overlay_kernel = overlay_kernel or OverlayKernel(self.prefix)
        self.macvlan_kernel = macvlan_kernel or MacvlanKernel()
        self.overlay: OverlayReconciler | None = None
        self.gw_kernel = gw_kernel or GwKernel()
        self.gw_allocs: dict[str, Allocation] = {}
        self.runners: dict[SyncRunner, frozenset[str]] = {}
        self.dns: DnsProgrammer | None = None
        self.lb: LoadBalancing | None = None
        self._lb_factory = lb_factory
        self.notifier = notifier or Notifier(None)
        self.cluster: Cluster | None = None
        self.underlay_mtu = config.underlay_mtu or 1500
        self.overlay_sync: SyncRunner | None = None
        self._attach_lock = asyncio.Lock()
        self._vtep_link = ""  #: the interface holding the VTEP address (macvlan's parent)
        self._dataplane_up = asyncio.Event()  #: the reconcilers run (Docker calls wait)
        self._leaving = False
        self._claims: set[str] = set()  #: endpoint keys published but not yet confirmed
        self._state_file = Path(config.state_dir) / "local.json"
        #: what the services inside the agent (load balancing, trace) may use of it
        self.host = HostPort(node=self.node, prefix=self.prefix, vtep=self.vtep,
                             store=self.store, clock=self.clock, in_kernel=self.in_kernel,
                             gone_hosts=self.gone_hosts, claim=self._claim,
                             overlay_settled=self._overlay_settled, kick=self._kick_runner,
                             macvlan_parent=self.macvlan_parent)
        # serves peers' capture orders from the start; the API calls it for `trace`
        self.tracer = Tracer(self.host)

    async def in_kernel(self, fn: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._kernel_pool, fn)

    # --- lifecycle -----------------------------------------------------------------

    async def start_dataplane(self) -> None:
        """Publish our VTEP and restore local endpoints (into the tables), then start the
        reconcilers. With gossip, ``run`` calls the two halves around the cluster join."""
        await self.prepare_dataplane()
        await self.start_reconcilers()

    async def prepare_dataplane(self) -> None:
        mtu = self.config.underlay_mtu or await self.in_kernel(
            lambda: self.overlay_kernel.underlay_mtu(self.vtep)) or 1500
        self.underlay_mtu = mtu
        self._vtep_link = await self.in_kernel(
            lambda: self.macvlan_kernel.link_of(self.vtep)) or ""
        self.store.put("vteps", self.node, Node(name=self.node, gossip_addr=self.vtep,
                                                vtep_addr=self.vtep,
                                                gossip_port=self.config.bind_port), self.clock())
        await self._restore_endpoints()

    async def start_reconcilers(self) -> None:
        """One sync runner per kernel programmer, each kicked by the tables it reads."""
        self.overlay = OverlayReconciler(self.node, self.store, self.overlay_kernel, self.prefix,
                                         self.underlay_mtu, self.in_kernel, self._netns_gone,
                                         pending=self._claims)
        self.overlay_sync = SyncRunner("vxlan", self.overlay.sync, min_interval=0.02,
                                       full_interval=30.0)
        self.gw = GwReconciler(self.node, self.store, self.gw_kernel,
                               self.config.gwbridge_subnet, self.gw_allocs, self.in_kernel,
                               self._netns_gone, pending=self._claims)
        gw_sync = SyncRunner("gwbridge", self.gw.sync, min_interval=0.02, full_interval=30.0)
        self.macvlan = MacvlanReconciler(
            self.node, self.store, self.macvlan_kernel, self.in_kernel, self.macvlan_parent,
            self._netns_gone, pending=self._claims,
            claim=self._claim if self.config.macvlan_shim else None, clock=self.clock)
        mv_sync = SyncRunner("macvlan", self.macvlan.sync, min_interval=0.02,
                             full_interval=30.0)
        upstreams = ([parse_upstream(u) for u in self.config.dns_upstreams]
                     or read_host_upstreams())
        server = DnsServer(DnsConfig(), upstreams, view=None)
        await server.start()
        self.dns = DnsProgrammer(self.node, self.store, server, self.in_kernel, self._claims,
                                 prefix=self.prefix)
        dns_sync = SyncRunner("dns", self.dns.sync, min_interval=0.02, full_interval=30.0)
        self.lb = self._lb_factory(self.host, self.config.lb,
                                   probe=await self.in_kernel(ipvs_available))
        lb_sync = SyncRunner("lb", self.lb.sync, min_interval=0.02, full_interval=30.0,
                             retry_interval=0.3)
        mesh = frozenset({"published", "services"})  # routing-mesh networks need sandboxes
        self.runners = {
            self.overlay_sync: frozenset({"networks", "endpoints", "vteps"}) | mesh,
            gw_sync: frozenset({"networks", "endpoints"}),
            mv_sync: frozenset({"networks", "endpoints"}),
            dns_sync: frozenset({"networks", "endpoints", "services", "health"}),
            lb_sync: LB_TABLES,
        }
        self.lb.start()
        self.store.listeners.append(self._table_changed)
        for runner in self.runners:
            runner.start()
            runner.kick(full=True)
        self._dataplane_up.set()

    async def stop_dataplane(self) -> None:
        for runner in self.runners:
            await runner.stop()
        if self.dns is not None:
            await self.dns.close()
        if self.lb is not None:
            await self.lb.stop()
        self._kernel_pool.shutdown(wait=True)

    def _table_changed(self, table: str, key: str) -> None:
        for runner, tables in self.runners.items():
            if table in tables:
                runner.kick()

    def _kick_runner(self, name: str) -> None:
        for runner in self.runners:
            if runner.name == name:
                runner.kick()

    async def _overlay_settled(self, timeout: float) -> None:
        if self.overlay_sync is not None:
            await self.overlay_sync.settled(timeout=timeout)

    async def run(self, fronts: Sequence[Callable[[Agent], Any]] = ()) -> None:
        """Run until stopped. ``fronts`` make what serves the agent (the API, metrics:
        objects with async ``start``/``stop``), started once the tables are loaded."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        self.cluster = Cluster(self.config, on_change=self.store.notify)
        self.store.backend = self.cluster
        self.store.listeners.append(self._keyring_changed)
        await self.cluster.start()
        await self.prepare_dataplane()
        served = [make(self) for make in fronts]
        for front in served:
            await front.start()
        log.info("agent %s up (pid %d, version %s, vtep %s, underlay mtu %d)", self.node,
                 os.getpid(), __version__, self.vtep, self.underlay_mtu)
        self.notifier.notify(f"STATUS=joining the cluster as {self.node}")
        self.notifier.start_watchdog()
        trimmer = asyncio.create_task(_trim_memory(), name="trim-memory")
        docker = None  # the Docker runtime's watcher (meshnet.runtime), if enabled
        try:
            # program the kernel only from a full view of the cluster (after the join)
            stop = asyncio.ensure_future(self._stop.wait())
            await asyncio.wait([stop, asyncio.ensure_future(self.cluster.synced.wait())],
                               return_when=asyncio.FIRST_COMPLETED)
            if not self._stop.is_set():
                await self.start_reconcilers()
                if self.config.runtime == "docker":
                    from meshnet.runtime.docker import DockerClient
                    from meshnet.runtime.watcher import DockerWatcher

                    docker = DockerWatcher(self, DockerClient(self.config.docker_socket))
                    await docker.start()
                await self._settle()
                log.info("cluster view synced; data plane running")
                self.notifier.notify("READY=1", f"STATUS=running: {self._status_line()}")
            await stop
        finally:
            log.info("agent %s stopping", self.node)
            if docker is not None:
                await docker.stop()
            trimmer.cancel()
            self.notifier.notify("STOPPING=1")
            self.notifier.stop()
            for front in reversed(served):
                await front.stop()
            await self.stop_dataplane()
            how = "left the cluster" if self._leaving else "data plane and tables kept"
            if self.config.leave_on_terminate and not self._leaving:
                left = await self.cluster.leave(timeout=2.0)
                how = "left the cluster" if left else "leave not confirmed"
            await self.cluster.stop()
            log.info("agent %s stopped (%s)", self.node, how)

    def stop(self) -> None:
        self._stop.set()

    # --- gossip keyring (as `serf keys`) ----------------------------------------------

    def _keyring_changed(self, table: str, key: str) -> None:
        if table != "keyring" or self.cluster is None:
            return
        spec = self.store.get("keyring", "cluster")
        if isinstance(spec, KeyringSpec):
            self.cluster.apply_keyring(list(spec.keys), spec.primary)
            log.info("gossip keyring now has %d key(s)", len(spec.keys))

    def keys(self) -> dict[str, Any]:
        ring = self.cluster.keyring() if self.cluster else None
        if ring is None:
            return {"encrypted": False, "keys": [], "primary": None}
        return {"encrypted": True, "keys": ring[0], "primary": ring[1]}

    def change_keys(self, body: dict[str, Any]) -> dict[str, Any]:
        op, key = body.get("op"), body.get("key")
        if op not in ("install", "use", "remove") or not isinstance(key, str):
            raise UserError("keys: op must be install, use or remove, with a key")
        decode_key(key)
        ring = self.cluster.keyring() if self.cluster else None
        if ring is None:
            raise UserError("gossip encryption is not enabled on this agent (--encrypt-key)")
        keys, primary = ring
        if op == "install":
            keys = keys + [key] if key not in keys else keys
        elif key not in keys:
            raise NotFound("that key is not installed")
        elif op == "use":
            primary = key
        elif key == primary:
            raise Conflict("removing the primary key is not allowed (use another key first)")
        else:
            keys = [k for k in keys if k != key]
        self.store.put("keyring", "cluster", KeyringSpec(keys=tuple(keys), primary=primary),
                       self.clock())
        log.info("keyring %s of a key: %d key(s) installed", op, len(keys))
        return self.keys()

    def _status_line(self) -> str:
        m = self._member_counts()
        return (f"{m.get('alive', 0)} members alive, {len(self.store.networks())} networks, "
                f"{len(self.local_endpoints())} local endpoints")

    # --- services and published ports ------------------------------------------------

    def list_endpoints(self) -> list[Endpoint]:
        """Every endpoint of the cluster, by network and address."""
        return sorted(self.store.endpoints().values(), key=lambda e: (e.network, e.ip))

    def create_service(self, body: dict[str, Any]) -> Any:
        svc = create_service(self.store, body, self.clock())
        log.info("service %s created on %s (%s %s)", svc.name, svc.network, svc.mode,
                 svc.vip or "")
        return svc

    def list_services(self) -> list[Any]:
        return sorted(self.store.services().values(), key=lambda s: s.name)

    def remove_service(self, name: str) -> None:
        remove_service(self.store, name, self.clock())

    async def publish(self, body: dict[str, Any]) -> Any:
        port, proto = body.get("published"), body.get("protocol", "tcp")
        if f"{port}/{proto}" in self.store.all("published"):
            raise Conflict(f"port {port}/{proto} is already published")
        if isinstance(port, int) and not port_free(port, str(proto)):
            raise Conflict(f"port {port}/{proto} is in use on this host")
        pp = publish_port(self.store, body, self.clock())
        log.info("published %s -> %s:%d (%s%s)", pp.key, pp.service, pp.target, pp.mode,
                 ", local only" if pp.local_only else "")
        await self._settle()
        return pp

    async def unpublish(self, key: str) -> Any:
        pp = unpublish_port(self.store, key, self.clock())
        log.info("unpublished %s", pp.key)
        await self._settle()
        return pp

    def list_published(self) -> list[Any]:
        return list(self.store.all("published").values())

    def metrics(self) -> dict[str, Any]:
        """Counters of every subsystem (JSON; the Prometheus view is built from this)."""
        out: dict[str, Any] = {"members": self._member_counts()}
        if self.cluster is not None:
            out.update(self.cluster.metrics())
        out["reconcile"] = {
            r.name: {"runs": r.stats.runs, "full_runs": r.stats.full_runs,
                     "errors": r.stats.errors, "seconds_total": round(r.stats.total_duration, 6)}
            for r in self.runners}
        if self.dns is not None:
            out["dns"] = self.dns.server.snapshot()
        if self.lb is not None:
            out["lb_backends"] = self.lb.backend_counts()
        return out

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
            "members": self._member_counts(),
            "synced": bool(self.cluster is None or self.cluster.synced.is_set()),
            **({"view": dict(self.cluster.view)} if self.cluster is not None else {}),
            "networks": len(self.store.networks()),
            "endpoints": len(self.store.endpoints()),
            "services": len(self.store.services()),
            **({"dataplane": self.dataplane_status()} if self.overlay_sync else {}),
            **({"lb": self.lb.status()} if self.lb else {}),
        }

    def dataplane_status(self) -> dict[str, Any]:
        assert self.overlay_sync is not None and self.overlay is not None
        st = self.overlay_sync.stats
        return {
            "vtep": self.vtep,
            "underlay_mtu": self.underlay_mtu,
            "overlay": {"syncs": st.runs, "errors": st.errors, "last_error": st.last_error,
                        "ops_applied": self.overlay.ops_applied,
                        "last_sync_ms": round(st.last_duration * 1000, 2)},
            #: programmers with work pending (empty: the kernel has the tables as they are)
            "busy": sorted(r.name for r in self.runners if not r.idle),
        }

    def gone_hosts(self) -> set[str]:
        """Hosts whose entries were removed (found gone, or left): not those whose agent
        is merely down while their host still answers."""
        return self.cluster.gone_hosts() if self.cluster is not None else set()

    async def durable(self) -> None:
        """Wait until every accepted change is on disk (the API awaits it)."""
        if self.cluster is not None:
            await self.cluster.durable()

    async def leave(self) -> dict[str, Any]:
        """Decommission: leave the cluster (every node removes our entries), then exit."""
        if self.cluster is None:
            raise UserError("this agent is not in a cluster")
        self._leaving = True
        left = await self.cluster.leave(timeout=2.0)
        log.info("left the cluster (%s); stopping", "confirmed" if left else "not confirmed")
        asyncio.get_running_loop().call_later(0.05, self.stop)
        return {"node": self.node, "left": left}

    def _member_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for m in self.members():
            counts[m["state"]] = counts.get(m["state"], 0) + 1
        return counts

    def members(self) -> list[dict[str, Any]]:
        if self.cluster is not None:
            return self.cluster.members()
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

    async def create_network(self, body: dict[str, Any]) -> Network:
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
            internal=body.get("internal", False), driver=body.get("driver") or "overlay",
            gateway_ip=body.get("gateway") or "", ip_range=body.get("ip_range") or "",
            parent=body.get("parent") or "", macvlan_mode=body.get("macvlan_mode") or "",
        )
        clash = [n.name for n in existing.values() if n.vni == net.vni]
        if clash:
            raise Conflict(f"VNI {net.vni} is already used by network {clash[0]}")
        if net.macvlan:
            await self._check_macvlan(net)
            if net.name in self.store.networks():  # created meanwhile (we awaited)
                raise Conflict(f"network {name} already exists")
        self.store.put("networks", net.name, net, self.clock())
        log.info("network %s created (vni %d, subnet %s)", net.name, net.vni, net.subnet)
        return net

    async def _check_macvlan(self, net: Network) -> None:
        """Containers would get the addresses of hosts on that LAN: refused unless an
        --ip-range keeps the allocations clear of every host's address (each VTEP, and
        this host's own addresses); the parent must exist here (VLAN: its base)."""
        hosts = {str(n.vtep_addr): n.name for n in self.store.all("vteps").values()}
        own = await self.in_kernel(self.macvlan_kernel.host_addresses)
        hosts.update({a: self.node for a in own})
        inside = sorted((ip, h) for ip, h in hosts.items()
                        if ipaddress.ip_address(ip) in net.range or
                        ipaddress.ip_address(ip) == net.gateway)
        if inside:
            shown = ", ".join(f"{h} {ip}" for ip, h in inside[:4])
            what = "--ip-range" if net.ip_range else "subnet"
            raise UserError(f"{what} {net.range} contains host addresses ({shown}): give an "
                            "--ip-range clear of them")
        parent = self.macvlan_parent(net)
        base = parent.partition(".")[0]
        if not await self.in_kernel(lambda: self.macvlan_kernel.link_exists(base)):
            raise UserError(f"parent interface {base} does not exist on {self.node}")
        if "." in parent and not await self.in_kernel(
                lambda: self.macvlan_kernel.link_exists(parent)
                or self.macvlan_kernel.can_make_vlan(base)):
            raise UserError(f"cannot create the VLAN parent {parent}: this kernel has no "
                            "802.1Q (8021q) support")

    def macvlan_parent(self, net: Network) -> str:
        """This host's parent for a macvlan network: the agent's override, the network's
        --parent, else the interface holding the VTEP address (found at the start)."""
        return (self.config.macvlan_parents_map().get(net.name) or net.parent
                or self._vtep_link)

    # --- endpoints ---------------------------------------------------------------------

    def local_endpoints(self) -> list[Endpoint]:
        return [e for e in self.store.endpoints().values() if e.host == self.node]

    async def attach(self, body: dict[str, Any]) -> Endpoint:
        net, ns, name = self._check_attach(body)
        async with self._attach_lock:
            mine = [e for e in self.local_endpoints() if e.netns == ns]
            if any(e.network == net.name for e in mine):
                raise Conflict(f"{ns} is already attached to network {net.name}")
            ifname = await self.in_kernel(
                lambda: self.overlay_kernel.free_ifname(ns, [e.ifname for e in mine]))
            ep = await self._claim(net, body.get("ip"), lambda ip: Endpoint(
                network=net.name, ip=ip, mac=mac_for(ip), host=self.node, name=name,
                service=body.get("service") or "", aliases=tuple(body.get("aliases") or ()),
                netns=ns, ifname=ifname))
            await self._gateway_for(net, ns, [e.ifname for e in mine] + [ifname])
            self._save_endpoints()
            await self._settle()
            if not self.overlay_kernel.netns_exists(ns):
                await self._remove_endpoints([ep])
                raise NotFound(f"network namespace {ns} disappeared during attach")
        log.info("attached %s (%s) to %s as %s %s", name, ns, net.name, ep.ip, ifname)
        return ep

    def _check_attach(self, body: dict[str, Any]) -> tuple[Network, str, str]:
        unknown = set(body) - ATTACH_FIELDS
        if unknown:
            raise UserError(f"unknown attach field(s): {', '.join(sorted(unknown))}")
        ns, netname = body.get("netns"), body.get("network")
        if not isinstance(ns, str) or not ns or not isinstance(netname, str):
            raise UserError("attach needs a netns and a network")
        net = self.store.networks().get(netname)
        if net is None:
            raise NotFound(f"no network named {netname}")
        if not self.overlay_kernel.netns_exists(ns):
            raise NotFound(f"no network namespace {ns}")
        if ns.startswith("/proc/"):
            default = f"pid{ns.split('/')[2]}"
        else:
            default = os.path.basename(ns.rstrip("/"))
        name = body.get("name") or default
        Endpoint(network=netname, ip=net.gateway, mac="02:00:00:00:00:00", host=self.node,
                 name=name, service=body.get("service") or "",
                 aliases=tuple(body.get("aliases") or ()))  # validates the names only
        return net, ns, name

    async def _claim(self, net: Network, static: Any,
                     make: Callable[[IPAddress], Endpoint]) -> Endpoint:
        """Publish an endpoint on a free address and keep it only if the claim holds.

        Two hosts may pick the same address at the same moment: both write the same
        table key and the replicated table keeps exactly one (the conflict rule). After
        ``claim_wait`` (a few gossip rounds) the loser sees the winner's entry in place
        of its own: it picks again (or fails, for an address the user asked for). The
        kernel is not touched for a claim until it holds.
        """
        wait = self.cluster.claim_wait if self.cluster else 0.0
        for _ in range(8):
            endpoints = self.store.endpoints()
            taken = {e.ip for e in endpoints.values() if e.network == net.name}
            taken |= {s.vip for s in self.store.services().values()
                      if s.network == net.name and s.vip is not None}
            if static:
                ip = check_static(net, str(static), taken)
            else:
                ip = allocate(net, taken, f"{self.node}/{net.name}")
            ep = make(ip)
            self._claims.add(ep.key)
            try:
                self.store.put("endpoints", ep.key, ep, self.clock())
                if wait:
                    await asyncio.sleep(wait)
                held = self.store.get("endpoints", ep.key)
            finally:
                self._claims.discard(ep.key)
            if held == ep:
                return ep
            log.info("address %s on %s was claimed by another host at the same time",
                     ip, net.name)
            if static:
                raise Conflict(f"address {ip} is already in use on network {net.name}")
        raise Conflict(f"could not claim an address on {net.name}: too many concurrent claims")

    async def detach(self, ns: str, network: str | None = None) -> list[Endpoint]:
        if not ns:
            raise UserError("detach needs a netns")
        if network is not None and network not in self.store.networks():
            raise NotFound(f"no network named {network}")
        gone = [e for e in self.local_endpoints()
                if e.netns == ns and (network is None or e.network == network)]
        if not gone:
            where = f" from network {network}" if network else ""
            raise NotFound(f"{ns} is not attached{where} on this host")
        async with self._attach_lock:
            await self._remove_endpoints(gone)
        for e in gone:
            log.info("detached %s (%s) from %s", e.name, ns, e.network)
        return gone

    async def _remove_endpoints(self, eps: list[Endpoint]) -> None:
        for e in eps:
            self.store.delete("endpoints", e.key, self.clock())
        self._save_endpoints()
        await self._settle()

    async def _settle(self, only: frozenset[str] | None = None) -> None:
        """Kick every programmer (or those named) and wait until each has applied the
        current tables."""
        runners = [r for r in self.runners if only is None or r.name in only]
        for runner in runners:
            runner.kick()
        for runner in runners:
            await runner.settled(timeout=30)

    def _netns_gone(self, gone: list[str]) -> None:
        """Containers whose namespace vanished are detached (the netns runtime's 'stop')."""
        dead = [e for e in self.local_endpoints() if e.netns in set(gone)]
        for e in dead:
            log.info("namespace %s is gone: detaching %s from %s", e.netns, e.name, e.network)
            self.store.delete("endpoints", e.key, self.clock())
        if dead:
            self._save_endpoints()

    def _save_endpoints(self) -> None:
        """Persist local endpoints and gateway allocations (what a restart must restore)."""
        local = self.local_endpoints()
        in_use = {e.netns for e in local}
        for ns in [ns for ns in self.gw_allocs if ns not in in_use]:
            del self.gw_allocs[ns]
        data = {"endpoints": [e.to_dict() for e in local],
                "gateways": {ns: {"ip": a.ip, "ifname": a.ifname}
                             for ns, a in self.gw_allocs.items()},
                "identity": {ns: _ns_identity(ns) for ns in in_use
                             if ns and not ns.startswith(DOCKER_NETNS)}}
        self._state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(self._state_file)

    async def _gateway_for(self, net: Network, ns: str, taken_ifnames: list[str]) -> None:
        """Choose the container's egress interface once (host-local, persisted). A macvlan
        network's containers leave through its LAN's router instead."""
        if net.internal or net.macvlan or ns in self.gw_allocs:
            return
        if await self.in_kernel(lambda: self.gw_kernel.has_default_route(ns)):
            self.gw_allocs[ns] = Allocation("", "")  # it has a gateway of its own
            return
        subnet = ipaddress.ip_network(self.config.gwbridge_subnet)
        used = {ipaddress.ip_address(a.ip) for a in self.gw_allocs.values() if a.ip}
        used.add(subnet.network_address + 1)
        ip = allocate(Network(name="gwbridge", vni=1, subnet=subnet), used, ns)
        ifname = await self.in_kernel(
            lambda: self.overlay_kernel.free_ifname(ns, taken_ifnames))
        self.gw_allocs[ns] = Allocation(str(ip), ifname)

    async def _restore_endpoints(self) -> None:
        """After a restart: keep (or re-publish) the local endpoints whose namespace still
        exists, and retract those (loaded with the durable tables) whose is gone."""
        try:
            data = json.loads(self._state_file.read_text())
            saved, gateways = data["endpoints"], data["gateways"]
        except FileNotFoundError:
            data, saved, gateways = {}, [], {}
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring corrupt %s", self._state_file)
            data, saved, gateways = {}, [], {}
        for ns, a in gateways.items():
            if isinstance(a, dict) and self.overlay_kernel.netns_exists(ns):
                self.gw_allocs[ns] = Allocation(str(a.get("ip", "")), str(a.get("ifname", "")))
        identity = data.get("identity", {}) if isinstance(data.get("identity"), dict) else {}

        def same_namespace(ns: str) -> bool:
            # /proc/PID/ns/net of a dead container may now be another process's: a
            # namespace is only restored if it is the very one we attached (inode)
            return self.overlay_kernel.netns_exists(ns) and (
                ns not in identity or identity[ns] == _ns_identity(ns))
        for raw in saved:
            try:
                ep = Endpoint.from_dict(raw)
            except UserError as exc:
                log.warning("ignoring a saved endpoint: %s", exc)
                continue
            if ep.host == self.node and (not ep.netns or ep.docker
                                         or same_namespace(ep.netns)):
                if self.store.get("endpoints", ep.key) != ep:
                    self.store.put("endpoints", ep.key, ep, self.clock())
                    log.info("restored endpoint %s (%s) on %s", ep.name, ep.ip, ep.network)
        for ep in self.local_endpoints():  # from the durable copy
            if ep.netns and not ep.docker and not same_namespace(ep.netns):
                log.info("namespace %s of %s is gone: detaching it from %s", ep.netns,
                         ep.name, ep.network)
                self.store.delete("endpoints", ep.key, self.clock())

    # --- the Docker plugin's port (meshnet.dockerplugin.driver.DockerHost) ----------

    def docker_networks(self) -> dict[str, Network]:
        return self.store.networks()

    def docker_endpoint(self, key: str) -> Endpoint | None:
        return self.store.endpoints().get(key)

    async def docker_claim(self, net: Network, static: str | None) -> Endpoint:
        """Claim an address for a Docker endpoint (no kernel object until it is bound).

        Claims run side by side (dockerd restarts its restart-always containers in
        parallel): each one's pick and publish happen with no await between them, so a
        concurrent claim sees it as taken; only the confirmation wait overlaps."""
        ep = await self._claim(net, static, lambda ip: Endpoint(
            network=net.name, ip=ip, mac=mac_for(ip), host=self.node,
            name="ip-" + str(ip).replace(".", "-"), netns=DOCKER_NETNS))
        self._save_endpoints()
        return ep

    async def docker_put(self, ep: Endpoint) -> None:
        """Store a Docker endpoint and wait until the kernel has it (its veth, and the
        resolver of its network's sandbox)."""
        try:
            await asyncio.wait_for(self._dataplane_up.wait(), DOCKER_WAIT)
        except TimeoutError:
            raise Conflict("the data plane is not running yet (the agent is still joining "
                           "its cluster); try again") from None
        if self.store.endpoints().get(ep.key) != ep:
            self.store.put("endpoints", ep.key, ep, self.clock())
            self._save_endpoints()
        # what Docker needs next: the veth, and the resolver of the network's sandbox (the
        # load balancer and the gateway bridge follow on their own)
        await self._settle(DOCKER_SETTLE)

    async def docker_remove(self, key: str) -> None:
        ep = self.store.endpoints().get(key)
        if ep is not None and ep.host == self.node and ep.docker:
            async with self._attach_lock:
                await self._remove_endpoints([ep])

    def remove_network(self, name: str) -> None:
        if name not in self.store.networks():
            raise NotFound(f"no network named {name}")
        users = [e.name for e in self.store.endpoints().values() if e.network == name]
        users += [f"service {s.name}" for s in self.store.services().values()
                  if s.network == name]
        if users:
            raise Conflict(f"network {name} is in use by {', '.join(sorted(users)[:5])}")
        self.store.delete("networks", name, self.clock())
        log.info("network %s removed", name)
