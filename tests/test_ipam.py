import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshnet.errors import Conflict, UserError
from meshnet.model import Network
from meshnet.vxlan.ipam import allocate, check_static, reserved

NET = Network(name="a", vni=1, subnet="10.0.0.0/29")  # 8 addresses, 5 usable


def test_fills_subnet_then_conflict():
    taken = set()
    for _ in range(5):
        ip = allocate(NET, taken, "h1")
        assert ip in NET.subnet and ip not in reserved(NET) and ip not in taken
        taken.add(ip)
    with pytest.raises(Conflict, match="no free address"):
        allocate(NET, taken, "h1")


@given(st.text(max_size=10), st.text(max_size=10))
def test_different_hosts_start_apart_but_stay_valid(a, b):
    net = Network(name="a", vni=1, subnet="10.0.0.0/16")
    ia, ib = allocate(net, set(), a), allocate(net, set(), b)
    assert ia in net.subnet and ib in net.subnet
    assert ia not in reserved(net) and ib not in reserved(net)


def test_static_checks():
    assert check_static(NET, "10.0.0.3", set()) == ipaddress.ip_address("10.0.0.3")
    with pytest.raises(UserError, match="outside"):
        check_static(NET, "10.0.1.3", set())
    with pytest.raises(UserError, match="reserved"):
        check_static(NET, "10.0.0.1", set())
    with pytest.raises(Conflict, match="in use"):
        check_static(NET, "10.0.0.3", {ipaddress.ip_address("10.0.0.3")})
    with pytest.raises(UserError):
        check_static(NET, "nope", set())
