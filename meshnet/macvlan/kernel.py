"""The macvlan data plane over netlink (pyroute2), on the agent's kernel thread."""

from __future__ import annotations

import errno
import os
import zlib
from collections.abc import Iterable

from pyroute2.netlink.exceptions import NetlinkError

from meshnet import netns
from meshnet.errors import KernelError, UserError
from meshnet.macvlan.state import (
    MODES,
    VLAN_ALIAS,
    AddPort,
    AddShim,
    AddVlan,
    DeletePort,
    DeleteShim,
    DeleteVlan,
    MacvlanState,
    MvPort,
    Op,
    Shim,
)
from meshnet.vxlan.kernel import NetnsGone
from meshnet.vxlan.state import ENDPOINT_MAC_PREFIXES


def _kind(link) -> str | None:
    info = link.get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_KIND") if info else None


def temp_name(port: MvPort) -> str:
    """The link's name in the host namespace, before it moves into the container."""
    return f"mn-mv{zlib.crc32(f'{port.netns}/{port.ifname}'.encode()):08x}"


class MacvlanKernel:
    def __init__(self, host_ns: str | None = None) -> None:
        self.host_ns = host_ns

    # --- host queries (the agent checks a new network with them) ---------------------

    def host_addresses(self) -> list[str]:
        with netns.ipr(self.host_ns) as ip:
            return [a.get_attr("IFA_ADDRESS") for a in ip.get_addr()
                    if a.get_attr("IFA_ADDRESS")]

    def link_exists(self, name: str) -> bool:
        with netns.ipr(self.host_ns) as ip:
            return bool(ip.link_lookup(ifname=name))

    def link_of(self, address: str) -> str | None:
        """The interface holding ``address`` (the default macvlan parent)."""
        with netns.ipr(self.host_ns) as ip:
            for a in ip.get_addr():
                if a.get_attr("IFA_ADDRESS") == address:
                    return ip.get_links(a["index"])[0].get_attr("IFLA_IFNAME")
        return None

    # --- observe ---------------------------------------------------------------------

    def observe(self, namespaces: Iterable[str]) -> MacvlanState:
        out = MacvlanState()
        with netns.ipr(self.host_ns) as ip:
            names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ip.get_links()}
            for link in ip.get_links():
                name = link.get_attr("IFLA_IFNAME")
                if _kind(link) == "vlan" and link.get_attr("IFLA_IFALIAS") == VLAN_ALIAS:
                    out.vlans.add(name)
                elif _kind(link) == "macvlan" and name.startswith("mn-mvs"):
                    addrs = [f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"
                             for a in ip.get_addr(index=link["index"])]
                    routes = [f"{r.get_attr('RTA_DST')}/{r['dst_len']}"
                              for r in ip.get_routes(family=2, oif=link["index"])
                              if r.get_attr("RTA_DST") and r["dst_len"] < 32]
                    out.shims[name] = Shim(name, names.get(link.get_attr("IFLA_LINK"), ""),
                                           addrs[0] if addrs else "",
                                           routes[0] if routes else "")
        for ns in sorted(set(namespaces)):
            if not os.path.exists(netns.path_of(ns)):
                continue
            try:
                with netns.ipr(ns) as ip:
                    for link in ip.get_links():
                        mac = link.get_attr("IFLA_ADDRESS") or ""
                        if _kind(link) == "macvlan" and mac.startswith(ENDPOINT_MAC_PREFIXES):
                            name = link.get_attr("IFLA_IFNAME")
                            out.ports[(ns, name)] = MvPort(ns, name, "", "", mac, "", "")
            except (FileNotFoundError, OSError):
                continue  # gone while we looked
        return out

    # --- apply -----------------------------------------------------------------------

    def apply(self, ops: Iterable[Op]) -> list[str]:
        """Every op is tried (one network's broken parent does not hold up the others);
        the failures are raised together at the end, so the sync is retried."""
        gone, failed = [], []
        for op in ops:
            try:
                self._apply(op)
            except NetnsGone:
                gone.append(op.port.netns)  # type: ignore[union-attr]
            except (NetlinkError, KernelError, UserError) as exc:
                failed.append(f"{type(op).__name__} {getattr(op, 'name', '')}"
                              f"{getattr(getattr(op, 'port', None), 'netns', '')}: {exc}")
        if failed:
            raise KernelError("; ".join(failed[:3]))
        return gone

    def can_make_vlan(self, base: str) -> bool:
        """Whether this kernel makes 802.1Q sub-interfaces (a throwaway one on ``base``)."""
        with netns.ipr(self.host_ns) as ip:
            link = ip.link_lookup(ifname=base)
            if not link:
                return False
            try:
                ip.link("add", ifname="mn-vlprobe", kind="vlan", link=link[0], vlan_id=4094)
            except NetlinkError:
                return False
            ip.link("del", index=ip.link_lookup(ifname="mn-vlprobe")[0])
            return True

    def _apply(self, op: Op) -> None:
        match op:
            case AddVlan(name=name):
                self._add_vlan(name)
            case DeleteVlan(name=name) | DeleteShim(name=name):
                _delete_link(self.host_ns, name)
            case AddPort(port=port):
                self._add_port(port)
            case AddShim(shim=shim):
                self._add_shim(shim)
            case DeletePort(netns=ns, ifname=ifname):
                if os.path.exists(netns.path_of(ns)):
                    _delete_link(ns, ifname)
            case _:  # pragma: no cover - a bug
                raise TypeError(op)

    def _add_vlan(self, name: str) -> None:
        base, _, vid = name.partition(".")
        with netns.ipr(self.host_ns) as ip:
            if ip.link_lookup(ifname=name):
                return  # the user's own: used, never removed (no meshnet alias)
            link = ip.link_lookup(ifname=base)
            if not link:
                raise KernelError(f"VLAN parent {name}: no interface {base} on this host")
            try:
                ip.link("add", ifname=name, kind="vlan", link=link[0], vlan_id=int(vid))
            except NetlinkError as exc:
                if exc.code == errno.EOPNOTSUPP:
                    raise UserError(f"cannot create {name}: this kernel has no 802.1Q "
                                    "(8021q) support") from None
                raise
            idx = ip.link_lookup(ifname=name)[0]
            ip.link("set", index=idx, ifalias=VLAN_ALIAS)
            ip.link("set", index=idx, state="up")

    def _add_shim(self, shim: Shim) -> None:
        with netns.ipr(self.host_ns) as ip:
            stale = ip.link_lookup(ifname=shim.name)
            if stale:
                ip.link("del", index=stale[0])
            parent = ip.link_lookup(ifname=shim.parent)
            if not parent:
                raise KernelError(f"macvlan parent {shim.parent} does not exist here")
            ip.link("add", ifname=shim.name, kind="macvlan", link=parent[0],
                    macvlan_mode=MODES["bridge"])
            idx = ip.link_lookup(ifname=shim.name)[0]
            addr, _, plen = shim.addr.partition("/")
            ip.addr("add", index=idx, address=addr, prefixlen=int(plen))
            ip.link("set", index=idx, state="up")
            ip.route("replace", dst=shim.route, oif=idx)

    def _add_port(self, port: MvPort) -> None:
        try:
            fd = os.open(netns.path_of(port.netns), os.O_RDONLY)
        except FileNotFoundError:
            raise NetnsGone(f"container namespace {port.netns} is gone") from None
        tmp = temp_name(port)
        try:
            with netns.ipr(self.host_ns) as host:
                parent = host.link_lookup(ifname=port.parent)
                if not parent:
                    raise KernelError(f"macvlan parent {port.parent} does not exist here")
                mtu = host.get_links(parent[0])[0].get_attr("IFLA_MTU")
                stale = host.link_lookup(ifname=tmp)
                if stale:  # half-made by an interrupted run
                    host.link("del", index=stale[0])
                host.link("add", ifname=tmp, kind="macvlan", link=parent[0],
                          macvlan_mode=MODES[port.mode], address=port.mac, mtu=mtu)
                idx = host.link_lookup(ifname=tmp)[0]
                try:
                    host.link("set", index=idx, net_ns_fd=fd)
                except NetlinkError:
                    host.link("del", index=idx)
                    raise
        finally:
            os.close(fd)
        addr, _, plen = port.addr.partition("/")
        with netns.ipr(port.netns) as c:
            c.link("set", index=1, state="up")
            idx = c.link_lookup(ifname=tmp)[0]
            c.link("set", index=idx, ifname=port.ifname)
            c.addr("replace", index=idx, address=addr, prefixlen=int(plen))
            c.link("set", index=idx, state="up")
            if not any(r.get_attr("RTA_DST") is None and r["dst_len"] == 0
                       for r in c.get_routes(family=2)):
                c.route("add", dst="0.0.0.0/0", gateway=port.gateway, oif=idx)


def _delete_link(ns: str | None, name: str) -> None:
    """Delete link ``name`` in namespace ``ns`` (None: the agent's) if it is there."""
    with netns.ipr(ns) as ip:
        idx = ip.link_lookup(ifname=name)
        if idx:
            ip.link("del", index=idx[0])
