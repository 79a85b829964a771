import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshnet.model import Endpoint, Network
from meshnet.testing.fakekernel import FakeOverlayKernel
from meshnet.vxlan.plan import (
    AddPort,
    CreateSandbox,
    DeleteFdb,
    DeleteNeigh,
    DeletePort,
    DeleteSandbox,
    SetFdb,
    SetNeigh,
    plan,
)
from meshnet.vxlan.state import desired, mac_for, overlay_mtu, sandbox_ns

NETS = {
    "a": Network(name="a", vni=0x100, subnet="10.0.0.0/24"),
    "b": Network(name="b", vni=0x200, subnet="10.0.0.0/24"),  # same subnet, other VNI
    "j": Network(name="j", vni=0x300, subnet="10.1.0.0/24", mtu=1300),
}
VTEPS = {"h1": "192.0.2.1", "h2": "192.0.2.2", "h3": "192.0.2.3"}


def ep(net, last, host, name=None):
    ip = f"10.0.0.{last}" if net != "j" else f"10.1.0.{last}"
    from ipaddress import ip_address
    return Endpoint(network=net, ip=ip, mac=mac_for(ip_address(ip)), host=host,
                    name=name or f"c{last}", netns=f"lab-c{last}")


def want(eps, node="h1"):
    return desired(node, NETS, eps, VTEPS, 1500, "mn-")


def test_desired_local_and_remote():
    eps = [ep("a", 2, "h1"), ep("a", 3, "h2"), ep("a", 4, "h3"), ep("b", 3, "h2"),
           ep("j", 9, "h2")]
    w = want(eps)
    ns = sandbox_ns("mn-", 0x100)
    assert list(w.sandboxes) == [ns]  # b and j have no local endpoint on h1
    assert w.sandboxes[ns].mtu == 1450 and w.sandboxes[ns].bridge_addr == "10.0.0.1/24"
    assert w.sandboxes[ns].local == "192.0.2.1"
    assert len(w.ports) == 1
    assert w.fdb == {(ns, mac_for_ip("10.0.0.3")): "192.0.2.2",
                     (ns, mac_for_ip("10.0.0.4")): "192.0.2.3"}
    assert w.neigh == {(ns, "10.0.0.3"): mac_for_ip("10.0.0.3"),
                       (ns, "10.0.0.4"): mac_for_ip("10.0.0.4")}


def mac_for_ip(ip):
    from ipaddress import ip_address
    return mac_for(ip_address(ip))


def test_mtu_rules():
    assert overlay_mtu(NETS["a"], 1400) == 1350
    assert overlay_mtu(NETS["a"], 1500, underlay_v6=True) == 1430
    assert overlay_mtu(NETS["j"], 1500) == 1300


def test_unknown_host_vtep_is_not_programmed():
    w = want([ep("a", 2, "h1"), ep("a", 7, "h9")])
    assert not w.fdb and not w.neigh


def test_plan_order_and_idempotence():
    k = FakeOverlayKernel({"lab-c2"})
    eps = [ep("a", 2, "h1"), ep("a", 3, "h2")]
    ops = plan(want(eps), k.observe())
    assert [type(o) for o in ops] == [CreateSandbox, AddPort, SetFdb, SetNeigh]
    k.apply(ops)
    assert plan(want(eps), k.observe()) == []


def test_detach_remote_removes_exactly_its_entries():
    k = FakeOverlayKernel({"lab-c2"})
    eps = [ep("a", 2, "h1"), ep("a", 3, "h2"), ep("a", 4, "h3")]
    k.apply(plan(want(eps), k.observe()))
    ops = plan(want(eps[:2]), k.observe())
    assert [type(o) for o in ops] == [DeleteNeigh, DeleteFdb]
    k.apply(ops)
    assert plan(want(eps[:2]), k.observe()) == []


def test_last_local_endpoint_removes_sandbox_in_one_op():
    k = FakeOverlayKernel({"lab-c2"})
    eps = [ep("a", 2, "h1"), ep("a", 3, "h2")]
    k.apply(plan(want(eps), k.observe()))
    ops = plan(want(eps[1:]), k.observe())
    assert ops == [DeleteSandbox(sandbox_ns("mn-", 0x100))]


def test_port_removed_when_local_endpoint_leaves_but_sandbox_stays():
    k = FakeOverlayKernel({"lab-c2", "lab-c5"})
    eps = [ep("a", 2, "h1"), ep("a", 5, "h1")]
    k.apply(plan(want(eps), k.observe()))
    ops = plan(want(eps[:1]), k.observe())
    assert [type(o) for o in ops] == [DeletePort]


def test_repairs_drift():
    k = FakeOverlayKernel({"lab-c2"})
    eps = [ep("a", 2, "h1"), ep("a", 3, "h2")]
    k.apply(plan(want(eps), k.observe()))
    (key,) = list(k.state.fdb)
    k.state.fdb[key] = "192.0.2.99"  # changed behind our back
    k.state.neigh[(key[0], "10.0.0.77")] = "02:00:00:00:00:77"  # stray entry
    ops = plan(want(eps), k.observe())
    assert SetFdb(key[0], key[1], "192.0.2.2") in ops
    assert DeleteNeigh(key[0], "10.0.0.77") in ops


endpoint_sets = st.lists(
    st.tuples(st.sampled_from(["a", "b", "j"]), st.integers(2, 30), st.sampled_from(list(VTEPS))),
    max_size=25, unique_by=lambda t: (t[0], t[1]))


@settings(max_examples=150, deadline=None)
@given(endpoint_sets, endpoint_sets, st.sampled_from(list(VTEPS)))
def test_any_transition_converges_in_one_plan(first, second, node):
    netns_all = {f"lab-c{n}" for _, n, _ in first + second}
    k = FakeOverlayKernel(netns_all)
    a = [ep(n, i, h) for n, i, h in first]
    b = [ep(n, i, h) for n, i, h in second]
    k.apply(plan(desired(node, NETS, a, VTEPS, 1500, "mn-"), k.observe()))
    w = desired(node, NETS, b, VTEPS, 1500, "mn-")
    k.apply(plan(w, k.observe()))
    assert plan(w, k.observe()) == []
    assert k.state.fdb == w.fdb and k.state.neigh == w.neigh
    assert set(k.state.ports) == set(w.ports) and k.state.sandboxes == w.sandboxes


@pytest.mark.parametrize("ip,mac", [("10.0.0.5", "02:42:0a:00:00:05")])
def test_mac_is_docker_style(ip, mac):
    assert mac_for_ip(ip) == mac
