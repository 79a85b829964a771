"""The real kernel behind the vxlan reconciler: observe and apply over netlink (pyroute2).

Synchronous on purpose: pyroute2's IPRoute runs its own event loop, so the reconciler
calls this from one dedicated worker thread, never from the agent's loop.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterable

from pyroute2.netlink.exceptions import NetlinkError

from meshnet import netns
from meshnet.errors import KernelError
from meshnet.vxlan.plan import (
    AddPort,
    CreateSandbox,
    DeleteFdb,
    DeleteNeigh,
    DeletePort,
    DeleteSandbox,
    Op,
    SetFdb,
    SetNeigh,
    UpdateSandbox,
)
from meshnet.vxlan.state import BRIDGE, VXLAN_PORT, Overlay, Port, Sandbox, vxlan_name

log = logging.getLogger("meshnet.vxlan")

NUD_PERMANENT = 0x80
NUD_NOARP = 0x40
NTF_SELF = 0x02
ENOENT, EEXIST, ESRCH = 2, 17, 3


class NetnsGone(KernelError):
    """The container's namespace no longer exists."""


def _ifname(link) -> str:
    return link.get_attr("IFLA_IFNAME")


def _kind(link) -> str | None:
    info = link.get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_KIND") if info else None


class OverlayKernel:
    """observe(prefix) -> Overlay; apply(ops)."""

    def __init__(self, prefix: str, host_ns: str | None = None) -> None:
        self.prefix = prefix
        self.host_ns = host_ns  #: where VXLAN sockets live (None: this thread's namespace)

    # --- observe ------------------------------------------------------------------

    def sandboxes(self) -> list[str]:
        return [n for n in netns.list_netns() if n.startswith(self.prefix + "ov-")]

    def observe(self) -> Overlay:
        out = Overlay()
        for ns in self.sandboxes():
            try:
                self._observe_sandbox(ns, out)
            except FileNotFoundError:
                continue  # removed while we looked
        return out

    def _observe_sandbox(self, ns: str, out: Overlay) -> None:
        # read with the fast dumper: this runs for every sandbox on every full resync
        with netns.dumper(ns) as d:
            vni, mtu, local, bridge_addr, vx_index, mac = 0, 0, "", "", None, ""
            for link in d.links():
                if link.kind == "vxlan":
                    vni, local, mtu, vx_index = link.vxlan_id, link.vxlan_local, link.mtu, \
                        link.index
                    if link.master is None or not link.up:
                        vni = 0  # not wired up: make the plan repair it
                elif link.kind == "bridge" and link.name == BRIDGE:
                    mac = link.address
                    for a in d.addrs():
                        if a.index != link.index or a.prefixlen in (32, 128):
                            continue  # VIPs and the LB address: the load balancer's
                        bridge_addr = f"{a.address}/{a.prefixlen}"
                        break
                elif link.kind == "veth" and link.name.startswith("ve"):
                    out.ports[(ns, link.name)] = Port(ns, link.name, "", "", "", "", 0)
            out.sandboxes[ns] = Sandbox(ns, vni, mtu, bridge_addr, local, mac)
            if vx_index is None:
                return
            for e in d.neighbours(socket.AF_BRIDGE, vx_index):
                if e.dst and e.state & NUD_PERMANENT:
                    out.fdb[(ns, e.lladdr)] = e.dst
            for family in (socket.AF_INET, socket.AF_INET6):
                for e in d.neighbours(family, vx_index):
                    if e.state & NUD_PERMANENT:
                        out.neigh[(ns, e.dst)] = e.lladdr

    # --- apply --------------------------------------------------------------------

    def apply(self, ops: Iterable[Op]) -> list[str]:
        """Apply in order; returns the container namespaces found gone (their ports are
        skipped, everything else is applied)."""
        gone = []
        for op in ops:
            try:
                self._apply(op)
            except NetnsGone:
                gone.append(op.port.netns)  # type: ignore[union-attr]
            except NetlinkError as exc:
                raise KernelError(f"{type(op).__name__} {op}: {exc}") from exc
        return gone

    # --- container side queries -----------------------------------------------------

    def netns_exists(self, name: str) -> bool:
        return os.path.exists(netns.path_of(name))

    def free_ifname(self, name: str, also_taken: Iterable[str] = ()) -> str:
        with netns.ipr(name) as ip:
            used = {_ifname(link) for link in ip.get_links()} | set(also_taken)
        return next(f"eth{i}" for i in range(1000) if f"eth{i}" not in used)

    def underlay_mtu(self, address: str) -> int | None:
        """MTU of the interface holding ``address`` in the host namespace."""
        with netns.ipr(self.host_ns) as ip:
            for a in ip.get_addr():
                if a.get_attr("IFA_ADDRESS") == address:
                    return ip.get_links(a["index"])[0].get_attr("IFLA_MTU")
        return None

    def _apply(self, op: Op) -> None:
        match op:
            case CreateSandbox(sandbox=sb) | UpdateSandbox(sandbox=sb):
                netns.create(sb.ns)
                self._ensure_sandbox(sb)
            case DeleteSandbox(ns=ns):
                netns.remove(ns)
            case AddPort(port=port):
                self._add_port(port)
            case DeletePort(ns=ns, name=name):
                with netns.ipr(ns) as ip:
                    idx = ip.link_lookup(ifname=name)
                    if idx:
                        ip.link("del", index=idx[0])
            case SetFdb(ns=ns, mac=mac, vtep=vtep):
                with netns.ipr(ns) as ip:
                    ip.fdb("replace", ifindex=self._vx(ip, ns), lladdr=mac, dst=vtep,
                           state=NUD_PERMANENT | NUD_NOARP, flags=NTF_SELF)
            case DeleteFdb(ns=ns, mac=mac):
                with netns.ipr(ns) as ip:
                    _ignore(ENOENT, lambda: ip.fdb("del", ifindex=self._vx(ip, ns), lladdr=mac))
            case SetNeigh(ns=ns, ip=addr, mac=mac):
                with netns.ipr(ns) as ip:
                    ip.neigh("replace", dst=addr, lladdr=mac, ifindex=self._vx(ip, ns),
                             state=NUD_PERMANENT)
            case DeleteNeigh(ns=ns, ip=addr):
                with netns.ipr(ns) as ip:
                    _ignore(ENOENT, lambda: ip.neigh("del", dst=addr, ifindex=self._vx(ip, ns)))
            case _:  # pragma: no cover - a bug
                raise TypeError(op)

    @staticmethod
    def _vx(ip, ns: str) -> int:
        for link in ip.get_links():
            if _kind(link) == "vxlan":
                return link["index"]
        raise KernelError(f"sandbox {ns} has no vxlan device")

    def _ensure_sandbox(self, sb: Sandbox) -> None:
        vxname = vxlan_name(sb.vni)
        with netns.ipr(sb.ns) as ip:
            ip.link("set", index=1, state="up")
            br = ip.link_lookup(ifname=BRIDGE)
            if not br:
                ip.link("add", ifname=BRIDGE, kind="bridge", mtu=sb.mtu)
                br = ip.link_lookup(ifname=BRIDGE)
            br_idx = br[0]
            if sb.mac and ip.get_links(br_idx)[0].get_attr("IFLA_ADDRESS") != sb.mac:
                ip.link("set", index=br_idx, address=sb.mac)  # fixed: never a port's
            addr, _, plen = sb.bridge_addr.partition("/")
            have = {a.get_attr("IFA_ADDRESS") for a in ip.get_addr(index=br_idx)}
            if addr not in have:
                ip.addr("add", index=br_idx, address=addr, prefixlen=int(plen))
            vx = [link for link in ip.get_links() if _kind(link) == "vxlan"]
            if vx:
                data = vx[0].get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_DATA")
                local = data.get_attr("IFLA_VXLAN_LOCAL") or data.get_attr("IFLA_VXLAN_LOCAL6")
                if data.get_attr("IFLA_VXLAN_ID") != sb.vni or local != sb.local:
                    ip.link("del", index=vx[0]["index"])
                    vx = []
            if not vx:
                self._create_vxlan(sb, vxname)
            vx_idx = ip.link_lookup(ifname=vxname)[0]
            ip.link("set", index=vx_idx, mtu=sb.mtu, master=br_idx, state="up")
            ip.link("set", index=br_idx, mtu=sb.mtu, state="up")

    def _create_vxlan(self, sb: Sandbox, vxname: str) -> None:
        """Create in this (the host's) namespace, so the UDP socket is on the underlay."""
        with netns.ipr(self.host_ns) as host:
            stale = host.link_lookup(ifname=vxname)
            if stale:
                host.link("del", index=stale[0])
            local_key = "vxlan_local6" if ":" in sb.local else "vxlan_local"
            for attempt in range(40):
                try:
                    host.link("add", ifname=vxname, kind="vxlan", vxlan_id=sb.vni,
                              vxlan_port=VXLAN_PORT, vxlan_learning=0, vxlan_proxy=1,
                              **{local_key: sb.local}, mtu=sb.mtu)
                    break
                except NetlinkError as exc:
                    # the same VNI in a sandbox the kernel is still tearing down (namespace
                    # destruction is asynchronous): wait for it rather than fail the sync
                    if exc.code != EEXIST or attempt == 39:
                        raise
                    time.sleep(0.05)
            idx = host.link_lookup(ifname=vxname)[0]
            try:
                host.link("set", index=idx, net_ns_fd=sb.ns)
            except NetlinkError:
                host.link("del", index=idx)
                raise

    def _add_port(self, port: Port) -> None:
        where = port.netns or self.host_ns
        try:
            fd = os.open(netns.path_of(where) if where else "/proc/thread-self/ns/net",
                         os.O_RDONLY)
        except FileNotFoundError:
            raise NetnsGone(f"container namespace {port.netns} is gone") from None
        try:
            if not port.netns:  # a Docker endpoint: a peer left by an interrupted run
                with netns.ipr(self.host_ns) as host:
                    stale = host.link_lookup(ifname=port.ifname)
                    if stale:
                        host.link("del", index=stale[0])
            with netns.ipr(port.ns) as ip:
                stale = ip.link_lookup(ifname=port.name)
                if stale:  # half-made by an interrupted run
                    ip.link("del", index=stale[0])
                ip.link("add", ifname=port.name, kind="veth", mtu=port.mtu,
                        peer={"ifname": port.ifname, "net_ns_fd": fd, "mtu": port.mtu,
                              "address": port.mac})
                idx = ip.link_lookup(ifname=port.name)[0]
                ip.link("set", index=idx, master=ip.link_lookup(ifname=BRIDGE)[0], state="up")
                # hairpin: a task load-balanced to itself through a VIP gets its packet
                # back out of the port it came in on
                ip.brport("set", index=idx, mode=1)
        finally:
            os.close(fd)
        if not port.netns:
            return  # Docker moves the peer into the container and sets its address
        addr, _, plen = port.addr.partition("/")
        with netns.ipr(port.netns) as c:
            c.link("set", index=1, state="up")
            idx = c.link_lookup(ifname=port.ifname)[0]
            c.addr("replace", index=idx, address=addr, prefixlen=int(plen))
            c.link("set", index=idx, state="up")


def _ignore(errno: int, fn) -> None:
    try:
        fn()
    except NetlinkError as exc:
        if exc.code != errno:
            raise
