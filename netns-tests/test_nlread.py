"""The fast dump reader (meshnet.nlread) reads what pyroute2 reads, on real kernel
objects: a bridge with an address, a VXLAN device with permanent FDB and neighbour
entries (IPv4 and IPv6), veths with a master."""

from __future__ import annotations

import socket

from conftest import unique

from meshnet import netns


def test_dumper_matches_pyroute2():
    ns = f"mn-{unique()}-nl"
    netns.create(ns)
    try:
        with netns.ipr(ns) as ip:
            ip.link("add", ifname="br0", kind="bridge")
            br = ip.link_lookup(ifname="br0")[0]
            ip.addr("add", index=br, address="10.9.0.1", prefixlen=24)
            ip.addr("add", index=br, address="10.9.0.77", prefixlen=32)
            ip.link("add", ifname="mn-vx9", kind="vxlan", vxlan_id=4242,
                    vxlan_local="127.0.0.1", vxlan_learning=0, vxlan_port=4789)
            vx = ip.link_lookup(ifname="mn-vx9")[0]
            ip.link("set", index=vx, master=br, state="up", mtu=1400)
            ip.link("add", ifname="ve0", kind="veth", peer="ve1")
            ip.link("set", index=ip.link_lookup(ifname="ve0")[0], master=br)
            ip.link("set", index=br, state="up")
            for i in range(1, 40):
                mac = f"02:42:0a:09:00:{i:02x}"
                ip.fdb("append", ifindex=vx, lladdr=mac, dst=f"192.0.2.{i}")
                ip.neigh("add", dst=f"10.9.0.{i + 100}", lladdr=mac, ifindex=vx,
                         state=0x80)
            ip.neigh("add", dst="fd09::5", lladdr="02:42:0a:09:00:05", ifindex=vx,
                     state=0x80)
            want_links = {(lk["index"], lk.get_attr("IFLA_IFNAME"), lk.get_attr("IFLA_MTU"),
                           lk.get_attr("IFLA_MASTER"), bool(lk["flags"] & 1))
                          for lk in ip.get_links()}
            want_fdb = {(e.get_attr("NDA_LLADDR"), e.get_attr("NDA_DST"), e["state"])
                        for e in ip.get_neighbours(family=socket.AF_BRIDGE)
                        if e["ifindex"] == vx}
            want_neigh = {(e.get_attr("NDA_LLADDR"), e.get_attr("NDA_DST"), e["state"])
                          for fam in (socket.AF_INET, socket.AF_INET6)
                          for e in ip.get_neighbours(family=fam, ifindex=vx)}
            want_addr = {(a["index"], a.get_attr("IFA_ADDRESS"), a["prefixlen"])
                         for a in ip.get_addr(family=socket.AF_INET)}
        with netns.dumper(ns) as d:
            links = d.links()
            assert {(lk.index, lk.name, lk.mtu, lk.master, lk.up) for lk in links} == want_links
            [v] = [lk for lk in links if lk.kind == "vxlan"]
            assert (v.vxlan_id, v.vxlan_local, v.mtu) == (4242, "127.0.0.1", 1400)
            assert {lk.kind for lk in links} >= {"bridge", "vxlan", "veth"}
            assert {(e.lladdr, e.dst or None, e.state)
                    for e in d.neighbours(socket.AF_BRIDGE, vx)} == want_fdb
            assert {(e.lladdr, e.dst, e.state) for fam in (socket.AF_INET, socket.AF_INET6)
                    for e in d.neighbours(fam, vx)} == want_neigh
            assert ("02:42:0a:09:00:05", "fd09::5", 0x80) in want_neigh and len(want_neigh) >= 40
            assert {(a.index, a.address, a.prefixlen) for a in d.addrs(socket.AF_INET)} \
                == want_addr
    finally:
        netns.remove(ns, kill=False)
