"""Small tables and seen-lists shared by the trace tests."""

from __future__ import annotations

from ipaddress import ip_address

from meshnet.model import Endpoint, HealthSpec, Network, PortSpec, PublishedPort, Service
from meshnet.trace.diagnose import Facts, Probe, Resolution
from meshnet.trace.model import Seen
from meshnet.trace.path import View, expected_path
from meshnet.vxlan.state import mac_for

NET = Network(name="app", vni=0x1234, subnet="10.0.0.0/24")
VTEPS = {"h1": "192.0.2.1", "h2": "192.0.2.2", "h3": "192.0.2.3"}
WEB = Service(name="web", network="app", vip="10.0.0.100", ports=(PortSpec(80, "tcp"),))


def ep(ip, host, name, service="", netns=None):
    return Endpoint(network="app", ip=ip, mac=mac_for(ip_address(ip)), host=host, name=name,
                    service=service, netns=f"ns-{name}" if netns is None else netns,
                    ifname="eth0")


C1 = ep("10.0.0.5", "h1", "c1")
WEB3 = ep("10.0.0.9", "h3", "web3", "web")
LB2 = ep("10.0.0.250", "h2", "lb-h2", netns="")


def view(node="h1", endpoints=(C1, WEB3, LB2), services=None, health=None, down=(),
         published=(), health_kind="none"):
    svcs = services if services is not None else {
        "web": Service(name="web", network="app", vip="10.0.0.100",
                       ports=(PortSpec(80, "tcp"),), health=HealthSpec(kind=health_kind))}
    return View(node=node, prefix="mn-", networks={"app": NET}, endpoints=list(endpoints),
                services=svcs, health=health or {}, published=list(published),
                vteps=VTEPS, down=down)


PUB = PublishedPort(published=8080, target=80, service="web")


def vip_path(**kw):
    return expected_path(view(**kw), C1, "10.0.0.100", None, "tcp")


MARKER = 45000
RES = Resolution(name="web", rcode="NOERROR", answers=("10.0.0.100",), expected=("10.0.0.100",))
PROBE = Probe(outcome="connected", marker=MARKER, chosen="10.0.0.9")
GOOD_FACTS = Facts(fdb={WEB3.mac: "192.0.2.3"}, neigh={"10.0.0.9": WEB3.mac}, mtu=1450,
                   probe_len=60)
OUTER = ("192.0.2.1", "192.0.2.3", 4789, 0x1234)
BACK = ("192.0.2.3", "192.0.2.1", 4789, 0x1234)


def all_seen(**drop):
    """Every capture point of a healthy VIP trace c1@h1 -> web3@h3; ``drop`` zeroes some
    (``src=True`` etc., names ``h1_underlay``...)."""
    s = [
        Seen("src", "h1", "eth0 in ns-c1", probe=1, reply=1,
             first_probe="tcp 10.0.0.5:45000 > 10.0.0.100:80 [S] len 60",
             first_reply="tcp 10.0.0.100:80 > 10.0.0.5:45000 [SA] len 60",
             inner_dst="10.0.0.100", reply_flags="SA"),
        Seen("sandbox", "h1", "mn-vx001234", probe=1, reply=1, inner_dst="10.0.0.9",
             first_probe="tcp 10.0.0.5:45000 > 10.0.0.9:80 [S] len 60"),
        Seen("underlay", "h1", "eth0", probe=1, reply=1, outer=OUTER, reply_outer=BACK,
             inner_dst="10.0.0.9", first_probe="vxlan ..."),
        Seen("underlay", "h3", "eth0", probe=1, reply=1, outer=OUTER, reply_outer=BACK,
             inner_dst="10.0.0.9"),
        Seen("sandbox", "h3", "mn-vx001234", probe=1, reply=1, inner_dst="10.0.0.9",
             first_probe="tcp 10.0.0.5:45000 > 10.0.0.9:80 [S] len 60"),
        Seen("task", "h3", "eth0 in ns-web3", probe=1, reply=1, inner_dst="10.0.0.9",
             first_probe="tcp 10.0.0.5:45000 > 10.0.0.9:80 [S] len 60",
             first_reply="tcp 10.0.0.9:80 > 10.0.0.5:45000 [SA] len 60", reply_flags="SA"),
    ]
    out = []
    for x in s:
        if drop.get(f"{x.host}_{x.point}"):
            x = Seen(x.point, x.host, x.iface)  # captured, saw nothing
        out.append(x)
    return out
