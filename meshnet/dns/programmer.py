"""The agent side of the embedded resolver: one ``ContainerDns`` per local container.

For every container namespace with a local endpoint: UDP+TCP sockets on 127.0.0.11:0
opened inside it, the NAT redirect of 127.0.0.11:53 to them (chains
``MESHNET-DNS-OUTPUT``/``MESHNET-DNS-POSTROUTING`` in the container's nat table), and,
for a named namespace, ``/etc/netns/NAME/resolv.conf``. The answer scope is the set of
networks the container is attached to.

Docker plugin endpoints get none of that (Docker runs its own resolver at 127.0.0.11 in
its containers): instead, every network sandbox with a local Docker endpoint serves
``DOCKER_UPSTREAM`` (169.254.53.53) port 53, the address dockerd is told to forward to
(``--dns``), scoped to that network. A sync rebuilds the records view from the tables
when one of the tables it is made of changed since the last build (the sync runner
rate-limits that), so answers follow gossip within a round; the periodic full sync of
an idle agent does not rebuild it.
"""

from __future__ import annotations

import logging
import os

from meshnet import netns
from meshnet.dns import records, sandbox
from meshnet.dns.server import ContainerDns, DnsServer
from meshnet.reconcile import RunInKernel
from meshnet.store import Store
from meshnet.vxlan.state import sandbox_ns

log = logging.getLogger("meshnet.dns")
NAT_CHECKS_PER_SYNC = 4
VIEW_TABLES = frozenset({"networks", "endpoints", "services", "health"})
DOCKER_UPSTREAM = "169.254.53.53"  #: meshnet's resolver for Docker's, in every sandbox


class DnsProgrammer:
    def __init__(self, node: str, store: Store, server: DnsServer, run: RunInKernel,
                 pending: set[str] | None = None, resolv_root: str = "/etc/netns",
                 prefix: str = "mn-") -> None:
        self.node = node
        self.store = store
        self.server = server
        self.run = run
        self.pending = pending if pending is not None else set()
        self.resolv_root = resolv_root
        self.prefix = prefix
        self.handles: dict[str, ContainerDns] = {}
        self.ports: dict[str, tuple[int, int]] = {}
        self.view_builds = 0
        self._view_dirty = True  #: a table the records view is made of changed
        store.listeners.append(self._table_changed)
        self._nat_cursor = 0

    def scopes(self) -> dict[str, frozenset[str]]:
        out: dict[str, set[str]] = {}
        networks = self.store.networks()
        for key, e in self.store.endpoints().items():
            if e.host != self.node or not e.netns or key in self.pending:
                continue
            if e.docker:  # served in the network's sandbox (Docker upstream mode)
                if e.docker_id and e.network in networks:
                    ns = sandbox_ns(self.prefix, networks[e.network].vni)
                    out.setdefault(DOCKER_UPSTREAM + "@" + ns, set()).add(e.network)
                continue
            out.setdefault(e.netns, set()).add(e.network)
        return {ns: frozenset(nets) for ns, nets in out.items()}

    def _table_changed(self, table: str, key: str) -> None:
        if table in VIEW_TABLES:
            self._view_dirty = True

    async def sync(self, full: bool) -> None:
        if self._view_dirty:
            self._view_dirty = False  # first: a change during the build marks it again
            try:
                self.server.set_view(records.from_store(self.store))
            except BaseException:
                self._view_dirty = True  # the next run (or full resync) tries again
                raise
            self.view_builds += 1
        want = self.scopes()
        for ns in [ns for ns in self.handles if ns not in want]:
            await self._stop(ns)
        present = [ns for ns in want if ns in self.handles]
        for ns, scope in want.items():
            if ns in self.handles:
                self.handles[ns].scope = scope
            elif os.path.exists(netns.path_of(_where(ns))):
                await self._start(ns, scope)
        present = [ns for ns in present if "@" not in ns]
        if full and present:
            # repair the redirect if someone flushed a container's nat table: a few
            # containers per full sync, round robin (each check is two iptables runs)
            for _ in range(min(NAT_CHECKS_PER_SYNC, len(present))):
                ns = present[self._nat_cursor % len(present)]
                self._nat_cursor += 1
                udp, tcp = self.ports[ns]
                await self.run(lambda ns=ns, u=udp, t=tcp: self._nat(ns, u, t))

    def _nat(self, ns: str, udp: int, tcp: int) -> None:
        if os.path.exists(netns.path_of(ns)):
            sandbox.apply_nat(ns, udp, tcp)

    async def _start(self, ns: str, scope: frozenset[str]) -> None:
        if "@" in ns:  # Docker upstream mode: port 53 in the sandbox, no NAT
            addr, _, sb = ns.partition("@")
            socks = await self.run(lambda: sandbox.open_docker_upstream(sb, addr))
            self.handles[ns] = await self.server.serve(socks.udp, socks.tcp, scope)
            self.ports[ns] = (53, 53)
            log.info("resolver for Docker on %s:53 in %s, network %s", addr, sb,
                     ",".join(sorted(scope)))
            return
        socks = await self.run(lambda: sandbox.open_sockets(ns))
        try:
            await self.run(lambda: sandbox.apply_nat(ns, socks.udp_port, socks.tcp_port))
            if not ns.startswith("/"):
                sandbox.write_resolv_conf(ns, self.resolv_root)
            self.handles[ns] = await self.server.serve(socks.udp, socks.tcp, scope)
        except BaseException:
            socks.close()
            raise
        self.ports[ns] = (socks.udp_port, socks.tcp_port)
        log.info("resolver for %s on 127.0.0.11 (udp %d, tcp %d), networks %s", ns,
                 socks.udp_port, socks.tcp_port, ",".join(sorted(scope)))

    async def _stop(self, ns: str) -> None:
        handle = self.handles.pop(ns)
        self.ports.pop(ns, None)
        await handle.close()
        if "@" in ns:
            return  # the sandbox (and its address) goes with its last endpoint
        if os.path.exists(netns.path_of(ns)):
            await self.run(lambda: sandbox.remove_nat(ns))
        if not ns.startswith("/"):
            sandbox.remove_resolv_conf(ns, self.resolv_root)

    async def close(self) -> None:
        """Agent stop: close the sockets (a restarted agent opens new ones and re-points
        the redirect); the container keeps its resolv.conf."""
        for handle in list(self.handles.values()):
            await handle.close()
        self.handles.clear()
        await self.server.close()


def _where(key: str) -> str:
    """The namespace of a resolver key: a container's, or ADDR@SANDBOX."""
    return key.partition("@")[2] or key
