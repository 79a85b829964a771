import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshnet.errors import ModelError, UserError
from meshnet.model import (
    Endpoint,
    HealthSpec,
    Network,
    Node,
    PortSpec,
    PublishedPort,
    Service,
    TaskHealth,
    parse_port_spec,
)

names = st.from_regex(r"\A[a-z0-9][a-z0-9_.-]{0,20}\Z")
v4nets = st.builds(
    lambda addr, plen: ipaddress.ip_network(f"{ipaddress.IPv4Address(addr)}/{plen}", strict=False),
    st.integers(0, 2**32 - 1), st.integers(8, 30))


@given(names, st.integers(1, 16_777_215), v4nets, st.booleans())
def test_network_roundtrip(name, vni, subnet, internal):
    net = Network(name=name, vni=vni, subnet=str(subnet), internal=internal)
    assert Network.from_dict(net.to_dict()) == net
    assert net.subnet == subnet


@given(st.one_of(st.integers(max_value=0), st.integers(min_value=16_777_216)))
def test_vni_out_of_range_cannot_exist(vni):
    with pytest.raises(ModelError, match="VNI"):
        Network(name="n", vni=vni, subnet="10.0.0.0/24")


@given(st.one_of(st.integers(max_value=0), st.integers(min_value=65_536)))
def test_port_out_of_range_cannot_exist(port):
    with pytest.raises(ModelError):
        PortSpec(port=port)
    with pytest.raises(ModelError):
        PublishedPort(published=port, target=80, service="web")


@pytest.mark.parametrize("cidr", ["10.0.0.0/33", "10.0.0.1/24", "banana", "10.0.0.0/31", "", "::/129"])
def test_bad_cidr_cannot_exist(cidr):
    with pytest.raises(ModelError, match="subnet"):
        Network(name="n", vni=1, subnet=cidr)


@given(st.text(max_size=70))
def test_arbitrary_names_are_valid_or_rejected_cleanly(text):
    try:
        net = Network(name=text, vni=1, subnet="10.0.0.0/24")
    except ModelError as exc:
        assert "name" in str(exc)
    else:
        assert net.name == text


def test_model_error_is_user_error():
    assert issubclass(ModelError, UserError)


def test_frozen():
    net = Network(name="n", vni=1, subnet="10.0.0.0/24")
    with pytest.raises(AttributeError):
        net.vni = 2  # type: ignore[misc]


def test_from_dict_rejects_unknown_and_missing_and_bad_types():
    with pytest.raises(ModelError, match="unknown"):
        Network.from_dict({"name": "n", "vni": 1, "subnet": "10.0.0.0/24", "extra": 1})
    with pytest.raises(ModelError):
        Network.from_dict({"name": "n", "vni": 1})
    with pytest.raises(ModelError):
        Network.from_dict({"name": "n", "vni": "1", "subnet": "10.0.0.0/24"})
    with pytest.raises(ModelError):
        Network.from_dict({"name": "n", "vni": True, "subnet": "10.0.0.0/24"})
    with pytest.raises(ModelError):
        Network.from_dict(["not", "a", "dict"])


def test_service_rules_and_roundtrip():
    svc = Service(name="web", network="app", vip="10.0.0.5",
                  ports=(PortSpec(80), PortSpec(53, "udp")),
                  health=HealthSpec(kind="http", path="/healthz", interval=0.2), affinity="client-ip")
    assert Service.from_dict(svc.to_dict()) == svc
    with pytest.raises(ModelError, match="VIP"):
        Service(name="web", network="app")
    with pytest.raises(ModelError, match="dnsrr"):
        Service(name="web", network="app", vip="10.0.0.5", mode="dnsrr")
    with pytest.raises(ModelError, match="duplicate"):
        Service(name="web", network="app", vip="10.0.0.5", ports=(PortSpec(80), PortSpec(80)))
    with pytest.raises(ModelError, match="protocol"):
        PortSpec(80, "sctp")
    with pytest.raises(ModelError, match="path"):
        HealthSpec(kind="http", path="healthz")


def test_endpoint_node_health_published():
    ep = Endpoint(network="app", ip="10.0.0.7", mac="02:42:0A:00:00:07", host="h1", name="web1",
                  service="web", aliases=["www"])
    assert ep.mac == "02:42:0a:00:00:07" and ep.aliases == ("www",)
    assert Endpoint.from_dict(ep.to_dict()) == ep
    with pytest.raises(ModelError, match="MAC"):
        Endpoint(network="app", ip="10.0.0.7", mac="zz", host="h1", name="w")
    with pytest.raises(ModelError, match="address"):
        Endpoint(network="app", ip="10.0.0.300", mac="02:42:0a:00:00:07", host="h1", name="w")
    node = Node(name="h1", gossip_addr="192.0.2.1", vtep_addr="192.0.2.1")
    assert Node.from_dict(node.to_dict()) == node
    th = TaskHealth(network="app", ip="10.0.0.7", service="web", healthy=False, reason="refused")
    assert TaskHealth.from_dict(th.to_dict()) == th
    pp = PublishedPort(published=8080, target=80, service="web")
    assert pp.key == "8080/tcp" and PublishedPort.from_dict(pp.to_dict()) == pp


def test_parse_port_spec():
    assert parse_port_spec("80") == PortSpec(80, "tcp")
    assert parse_port_spec("53/udp") == PortSpec(53, "udp")
    for bad in ("x", "80/icmp", "0", "70000/tcp"):
        with pytest.raises(ModelError):
            parse_port_spec(bad)
