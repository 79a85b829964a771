"""The non-iptables kernel objects load balancing needs (see the package docstring).

Per sandbox in ``LbState.sandboxes``: sysctls (forwarding, bridge netfilter, no
redirects), the VIPs and this host's LB address as /32 on ``br0`` (stale /32s removed),
and a local bridge FDB entry for the LB address's MAC. Per VNI in
``HostLb.ingress_links``: the ingress veth ``mn-ingVNI`` (host, 169.254.77.1/32,
``route_localnet``) / ``ing0`` (sandbox, 169.254.77.2/32, default route back), and the
host routes of ``HostLb.routes``. Everything is checked and repaired on every call
(idempotent); links no longer wanted are removed.

Runs on the agent's kernel thread. ``apply`` returns the sandboxes that do not exist yet
(the overlay makes them); the caller retries.
"""

from __future__ import annotations

import ipaddress
import os
import socket

from pyroute2.netlink.exceptions import NetlinkError

from meshnet import netns
from meshnet.ipvs.state import LbState, ingress_link_name
from meshnet.vxlan.state import BRIDGE, ENDPOINT_MAC_PREFIXES, mac_for

HOST_LINK_ADDR = "169.254.77.1"
SANDBOX_LINK_ADDR = "169.254.77.2"
SANDBOX_LINK = "ing0"
NUD_PERMANENT = 0x80
NTF_SELF = 0x02

SANDBOX_SYSCTLS = {
    "net/ipv4/ip_forward": "1",
    "net/bridge/bridge-nf-call-iptables": "1",
    "net/ipv4/conf/all/send_redirects": "0",
    "net/ipv4/conf/br0/send_redirects": "0",
}


def write_sysctls(ns: str | None, values: dict[str, str]) -> None:
    """Write /proc/sys entries as seen from namespace ``ns`` (missing ones are skipped:
    br0 not there yet, or no br_netfilter)."""
    def work() -> None:
        for key, value in values.items():
            path = f"/proc/sys/{key}"
            try:
                with open(path) as f:
                    if f.read().strip() == value:
                        continue
                with open(path, "w") as f:
                    f.write(value)
            except FileNotFoundError:
                continue
    netns.run_in(ns, work)


def net_key(state: LbState) -> tuple:
    """Everything of ``state`` that :meth:`LbNetKernel.apply` programs (VIP and LB
    addresses per sandbox, ingress links, host routes): equal keys, nothing to do. A
    backend change leaves it equal, so a partial sync does not touch these objects (the
    periodic full sync still applies, and so repairs drift)."""
    # the VIPs in service order, not sb.vips (a sorted set): cheaper, and a mere change
    # of order only costs one needless (idempotent) apply
    return (tuple((sb.ns, sb.vip_seq if sb.vip_seq is not None
                   else tuple(vs.vip for vs in sb.services), sb.lb_ip)
                  for sb in state.sandboxes),
            state.host.ingress_links, state.host.routes)


class LbNetKernel:
    def __init__(self, prefix: str, host_ns: str | None = None) -> None:
        self.prefix = prefix
        self.host_ns = host_ns

    def apply(self, state: LbState) -> list[str]:
        skipped = []
        wanted = {sb.ns: sb for sb in state.sandboxes}
        sandboxes = [n for n in netns.list_netns() if n.startswith(self.prefix + "ov-")]
        for ns in sandboxes:
            sb = wanted.get(ns)
            addrs = set(sb.vips) if sb else set()
            if sb and sb.lb_ip is not None:
                addrs.add(sb.lb_ip)
            self._sandbox(ns, addrs, sb.lb_ip if sb else None, bool(sb))
        skipped += [ns for ns in wanted if ns not in sandboxes]
        self._ingress(state, set(sandboxes))
        return skipped

    def _sandbox(self, ns: str, addrs: set, lb_ip, lb: bool) -> None:
        if lb:
            write_sysctls(ns, SANDBOX_SYSCTLS)
        with netns.ipr(ns) as ip:
            br = ip.link_lookup(ifname=BRIDGE)
            if not br:
                return
            have = {ipaddress.ip_address(a.get_attr("IFA_ADDRESS"))
                    for a in ip.get_addr(index=br[0]) if a["prefixlen"] in (32, 128)}
            for a in sorted(addrs - have, key=str):
                ip.addr("add", index=br[0], address=str(a), prefixlen=a.max_prefixlen)
            for a in sorted(have - addrs, key=str):
                ip.addr("del", index=br[0], address=str(a), prefixlen=a.max_prefixlen)
            want = mac_for(lb_ip) if lb_ip is not None else None
            if want is not None:
                ip.fdb("replace", ifindex=br[0], lladdr=want, state=NUD_PERMANENT,
                       flags=NTF_SELF)
            # a former LB address's entry: an endpoint that gets that address later (and so
            # that MAC) would have its frames taken by the bridge, never reaching it
            for entry in ip.get_neighbours(family=socket.AF_BRIDGE, ifindex=br[0]):
                mac = entry.get_attr("NDA_LLADDR") or ""
                if (mac != want and mac.startswith(ENDPOINT_MAC_PREFIXES)
                        and entry["state"] & NUD_PERMANENT):
                    ip.fdb("del", ifindex=br[0], lladdr=mac, flags=NTF_SELF)

    def _ingress(self, state: LbState, sandboxes: set[str]) -> None:
        want = {ingress_link_name(vni): vni for vni in state.host.ingress_links}
        ns_of = {sb.vni: sb.ns for sb in state.sandboxes}
        with netns.ipr(self.host_ns) as host:
            present = {link.get_attr("IFLA_IFNAME"): link["index"] for link in host.get_links()
                       if link.get_attr("IFLA_IFNAME", "").startswith("mn-ing")}
            for name, idx in present.items():
                if name not in want:
                    host.link("del", index=idx)
            for name, vni in want.items():
                sbns = ns_of.get(vni)
                if sbns is None or sbns not in sandboxes:
                    continue
                if name not in present:
                    self._make_link(host, name, sbns)
            if want:
                write_sysctls(self.host_ns, {"net/ipv4/ip_forward": "1", **{
                    f"net/ipv4/conf/{n}/route_localnet": "1" for n in want}})
            self._routes(host, state)

    def _make_link(self, host, name: str, sbns: str) -> None:
        fd = os.open(netns.path_of(sbns), os.O_RDONLY)
        try:
            host.link("add", ifname=name, kind="veth",
                      peer={"ifname": SANDBOX_LINK, "net_ns_fd": fd})
        finally:
            os.close(fd)
        idx = host.link_lookup(ifname=name)[0]
        host.addr("add", index=idx, address=HOST_LINK_ADDR, prefixlen=32)
        host.link("set", index=idx, state="up")
        with netns.ipr(sbns) as sb:
            i = sb.link_lookup(ifname=SANDBOX_LINK)[0]
            sb.addr("add", index=i, address=SANDBOX_LINK_ADDR, prefixlen=32)
            sb.link("set", index=i, state="up")
            sb.route("replace", dst="default", gateway=HOST_LINK_ADDR, oif=i, flags=4)  # onlink

    def _routes(self, host, state: LbState) -> None:
        want = {(str(dst), link) for dst, link in state.host.routes}
        links = {link.get_attr("IFLA_IFNAME"): link["index"] for link in host.get_links()}
        have = set()
        for r in host.get_routes(family=2, table=254):
            oif = r.get_attr("RTA_OIF")
            name = next((n for n, i in links.items() if i == oif), "")
            if name.startswith("mn-ing") and r["dst_len"] == 32:
                have.add((r.get_attr("RTA_DST"), name))
        for dst, link in sorted(have - want):
            _quiet(lambda d=dst, li=link: host.route("del", dst=f"{d}/32", oif=links[li]))
        for dst, link in sorted(want - have):
            if link in links:
                host.route("replace", dst=f"{dst}/32", gateway=SANDBOX_LINK_ADDR,
                           oif=links[link], flags=4)


def _quiet(fn) -> None:
    try:
        fn()
    except NetlinkError:
        pass
