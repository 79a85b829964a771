"""macvlan networks: model checks, allocation inside --ip-range, desired state and plan."""

from __future__ import annotations

import ipaddress

import pytest

from meshnet.errors import UserError
from meshnet.macvlan.state import (
    AddPort,
    AddVlan,
    DeletePort,
    DeleteVlan,
    MacvlanState,
    MvPort,
    desired,
    plan,
)
from meshnet.model import DOCKER_NETNS, Endpoint, Network
from meshnet.vxlan.ipam import allocate, reserved
from meshnet.vxlan.state import desired as overlay_desired
from meshnet.vxlan.state import mac_for


def lan(**kw) -> Network:
    base = dict(name="lan", vni=4100, subnet="192.0.2.0/24", driver="macvlan",
                gateway_ip="192.0.2.254", ip_range="192.0.2.128/26")
    return Network(**{**base, **kw})


@pytest.mark.parametrize("kw, message", [
    ({"gateway_ip": ""}, "needs --gateway"),
    ({"gateway_ip": "10.0.0.1"}, "not a host address"),
    ({"gateway_ip": "192.0.2.255"}, "not a host address"),
    ({"ip_range": "10.1.0.0/26"}, "not inside"),
    ({"parent": "eth0.5000"}, "1-4094"),
    ({"parent": "a-very-long-interface-name"}, "at most 15"),
    ({"macvlan_mode": "wild"}, "macvlan mode"),
    ({"internal": True}, "--internal does not apply"),
    ({"driver": "overlay"}, "--gateway is for macvlan"),
])
def test_bad_macvlan_definitions_are_refused_with_one_line(kw, message):
    with pytest.raises(UserError) as exc:
        lan(**kw)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_addresses_only_inside_the_range_and_never_the_gateway():
    net = lan(ip_range="192.0.2.248/29")  # .248-.255: holds the gateway .254, broadcast .255
    taken: list = []
    for i in range(6):
        ip = allocate(net, taken, f"h{i % 2}")
        assert ip in ipaddress.ip_network("192.0.2.248/29")
        assert ip not in reserved(net)
        taken.append(ip)
    assert set(map(str, taken)) == {f"192.0.2.{i}" for i in (248, 249, 250, 251, 252, 253)}
    with pytest.raises(UserError):
        allocate(net, taken, "h0")
    assert lan().gateway == ipaddress.ip_address("192.0.2.254")
    assert Network(name="o", vni=5, subnet="10.0.0.0/24").gateway == \
        ipaddress.ip_address("10.0.0.1")


def ep(name, ip, host="h1", netns=None, network="lan", ifname="eth0"):
    return Endpoint(network=network, ip=ip, mac=mac_for(ipaddress.ip_address(ip)), host=host,
                    name=name, netns=netns if netns is not None else f"lab-{name}",
                    ifname=ifname)


def test_desired_ports_on_the_parent_and_vlans_and_no_overlay():
    nets = {"lan": lan(), "vl": lan(name="vl", vni=4101, parent="eth0.42"),
            "ov": Network(name="ov", vni=4102, subnet="10.9.0.0/24")}
    eps = [ep("c1", "192.0.2.130"), ep("c2", "192.0.2.131", host="h2"),
           ep("c3", "192.0.2.140", network="vl"),
           ep("d", "192.0.2.141", netns=DOCKER_NETNS + "x")]

    def parent_of(n: Network) -> str:
        return n.parent or "eth0"
    want = desired("h1", nets, eps, parent_of)
    assert want.vlans == {"eth0.42"}
    assert want.ports[("lab-c1", "eth0")] == MvPort(
        "lab-c1", "eth0", "eth0", "bridge", "02:42:c0:00:02:82", "192.0.2.130/24",
        "192.0.2.254")
    assert want.ports[("lab-c3", "eth0")].parent == "eth0.42"
    assert set(want.ports) == {("lab-c1", "eth0"), ("lab-c3", "eth0")}  # h2's, Docker's: no
    # the overlay leaves macvlan networks alone: no sandbox, no FDB entries
    ov = overlay_desired("h1", nets, eps, {"h1": "192.0.2.1", "h2": "192.0.2.2"}, 1500, "mn-")
    assert ov.sandboxes == {} and ov.fdb == {} and ov.ports == {}


def test_plan_orders_vlans_around_ports_and_replaces_a_changed_mac():
    p1 = MvPort("n1", "eth0", "eth0.42", "bridge", "02:42:c0:00:02:82", "x/24", "g")
    p2 = MvPort("n2", "eth0", "eth0", "bridge", "02:42:c0:00:02:83", "y/24", "g")
    want = MacvlanState({("n1", "eth0"): p1}, {"eth0.42"})
    have = MacvlanState({("n2", "eth0"): p2}, {"eth0.7"})
    assert plan(want, have) == [AddVlan("eth0.42"), AddPort(p1), DeletePort("n2", "eth0"),
                                DeleteVlan("eth0.7")]
    moved = MvPort("n1", "eth0", "", "", "02:42:00:00:00:01", "", "")
    assert plan(want, MacvlanState({("n1", "eth0"): moved}, {"eth0.42"})) == [
        DeletePort("n1", "eth0"), AddPort(p1)]
    seen = MvPort("n1", "eth0", "", "", p1.mac, "", "")  # what observe sees
    assert plan(want, MacvlanState({("n1", "eth0"): seen}, {"eth0.42"})) == []


def test_trace_expects_the_lan_hop_and_diagnoses_it():
    from meshnet.trace.diagnose import Facts, Probe, Resolution, diagnose, verdict_of
    from meshnet.trace.model import Seen
    from meshnet.trace.path import View, expected_path

    src, dst = ep("c1", "192.0.2.130"), ep("c2", "192.0.2.131", host="h2")
    view = View(node="h1", prefix="mn-", networks={"lan": lan()}, endpoints=[src, dst],
                services={}, parents={"lan": "eth0"})
    exp = expected_path(view, src, "192.0.2.131", 80, "tcp")
    assert (exp.kind, exp.lan, exp.sandbox, exp.remote_hosts) == ("direct", "eth0", "", ("h2",))
    res = Resolution(name="c2", rcode="NOERROR", answers=("192.0.2.131",),
                     expected=("192.0.2.131",))

    def hops(seen, reported=None):
        got = diagnose(exp, res, Probe("connected", 40000), seen, Facts(sandbox_exists=False),
                       reported if reported is not None else {"h2": "done"})
        return got, verdict_of(got)
    good = [Seen("src", "h1", "eth0", 1, 1, "p", "r"), Seen("lan", "h1", "eth0", 1, 1, "p"),
            Seen("lan", "h2", "eth0", 1, 1, "p"), Seen("task", "h2", "eth0", 1, 1, "p", "r")]
    got, verdict = hops(good)
    assert [h.name for h in got] == ["resolution", "source", "lan out", "lan in", "delivery",
                                     "reply"]
    assert verdict.ok, verdict
    lost = [s for s in good if not (s.point == "lan" and s.host == "h2") and s.host == "h1"]
    got, verdict = hops(lost + [Seen("lan", "h2", "eth0")])
    bad = next(h for h in got if h.ok is False)
    assert bad.name == "lan in" and "lost on the LAN between h1 and h2" in bad.cause


def test_services_on_macvlan_are_dnsrr_and_never_published():
    from meshnet.services import create_service, publish_port
    from meshnet.store import LocalTables, Store

    store = Store(LocalTables("h1"))
    store.put("networks", "lan", lan(), 1.0)
    with pytest.raises(UserError, match="--mode dnsrr"):
        create_service(store, {"name": "db", "network": "lan", "ports": ["5432/tcp"]}, 1.0)
    create_service(store, {"name": "db", "network": "lan", "mode": "dnsrr",
                           "ports": ["5432/tcp"]}, 1.0)
    with pytest.raises(UserError, match="nothing to publish"):
        publish_port(store, {"published": 5432, "target": 5432, "service": "db",
                             "mode": "host"}, 1.0)
    assert store.all("published") == {}


def test_shim_from_this_hosts_shim_endpoint_and_its_plan():
    from meshnet.macvlan.state import AddShim, DeleteShim, Shim, shim_name

    nets = {"lan": lan()}
    shim_ep = Endpoint(network="lan", ip="192.0.2.150", mac=mac_for(
        ipaddress.ip_address("192.0.2.150")), host="h1", name="h1-shim")
    other = Endpoint(network="lan", ip="192.0.2.151", mac=mac_for(
        ipaddress.ip_address("192.0.2.151")), host="h2", name="h2-shim")
    want = desired("h1", nets, [shim_ep, other, ep("c1", "192.0.2.130")], lambda n: "eth0")
    s = Shim(shim_name(4100), "eth0", "192.0.2.150/32", "192.0.2.128/26")
    assert want.shims == {s.name: s}
    assert AddShim(s) in plan(want, MacvlanState())
    have = MacvlanState(dict(want.ports), set(), {s.name: s})
    assert plan(want, have) == []  # adopted as is
    assert plan(MacvlanState(), MacvlanState(shims={s.name: s})) == [DeleteShim(s.name)]
