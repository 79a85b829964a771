from __future__ import annotations

import pytest

from meshnet.errors import NotFound, UserError
from meshnet.model import TaskHealth
from meshnet.trace.path import expected_ingress, expected_path, find_source

from .helpers import C1, LB2, PUB, WEB3, ep, view, vip_path


def test_vip_path_from_tables():
    exp = vip_path()
    assert (exp.kind, exp.dst, exp.port, exp.vni, exp.network) == ("vip", "10.0.0.100", 80,
                                                                   0x1234, "app")
    assert exp.local_vtep == "192.0.2.1" and exp.client == "10.0.0.5"
    assert exp.sandbox == "mn-ov-001234" and exp.vxlan_dev == "mn-vx001234"
    (b,) = exp.backends
    assert (b.ip, b.host, b.vtep, b.mac, b.local) == ("10.0.0.9", "h3", "192.0.2.3",
                                                      WEB3.mac, False)
    assert exp.remote_hosts == ("h3",)


def test_unhealthy_and_down_tasks_are_not_backends():
    web1 = ep("10.0.0.7", "h1", "web1", "web")
    web2 = ep("10.0.0.8", "h2", "web2", "web")
    sick = {web1.key: TaskHealth(network="app", ip=web1.ip, service="web", healthy=False,
                                 reason="connection refused")}
    exp = vip_path(endpoints=(C1, WEB3, web1, web2), health=sick, down=("h2",))
    assert [b.name for b in exp.backends] == ["web3"]
    assert exp.unhealthy == ("web1 10.0.0.7 (connection refused)",
                             "web2 10.0.0.8 (host h2 down)")


def test_local_backend_has_no_vxlan_hop():
    web1 = ep("10.0.0.7", "h1", "web1", "web")
    exp = vip_path(endpoints=(C1, web1))
    assert exp.backends[0].local and exp.remote_hosts == ()


def test_direct_path_needs_a_port():
    v = view()
    exp = expected_path(v, C1, "10.0.0.9", None, "tcp")  # a task: the service's port
    assert exp.kind == "direct" and exp.port == 80 and exp.backends[0].name == "web3"
    with pytest.raises(UserError, match="give the port"):
        expected_path(view(endpoints=(C1, ep("10.0.0.6", "h2", "c2"))), C1, "10.0.0.6",
                      None, "tcp")
    with pytest.raises(NotFound):
        expected_path(v, C1, "10.0.0.77", 80, "tcp")


def test_unexposed_port_is_not_balanced():
    exp = expected_path(view(), C1, "10.0.0.100", 80, "udp")
    assert not exp.exposed and exp.backends == ()


def test_ingress_path():
    exp = expected_ingress(view(node="h2", published=(PUB,)), 8080, "tcp")
    assert (exp.kind, exp.port, exp.target, exp.dst, exp.client) == (
        "ingress", 8080, 80, "10.0.0.100", str(LB2.ip))
    assert exp.local_vtep == "192.0.2.2" and exp.remote_hosts == ("h3",)
    with pytest.raises(NotFound, match="not published"):
        expected_ingress(view(node="h2", published=(PUB,)), 8081, "tcp")


def test_find_source():
    assert find_source(view(), "c1") == C1
    assert find_source(view(), "ns-c1") == C1
    with pytest.raises(UserError, match="runs on h3"):
        find_source(view(), "web3")
    with pytest.raises(NotFound):
        find_source(view(), "nope")
