import pytest

from meshnet.errors import UserError
from meshnet.lab.topology import LabSpec


def test_names_and_addresses():
    spec = LabSpec(name="t1", hosts=3)
    assert spec.host_names == ["h1", "h2", "h3"]
    assert spec.host_ns("h2") == "mn-t1-h2" and spec.host_addr("h3") == "192.0.2.3"
    assert spec.container_ns("web1") == "t1-web1"
    assert spec.api_socket("h1") == "/run/meshnet/t1/h1.sock"
    assert all(spec.host_ns(h).startswith(spec.ns_prefix) for h in spec.host_names)
    assert spec.underlay_ns.startswith(spec.ns_prefix)


@pytest.mark.parametrize("kw", [{"name": "Bad"}, {"name": "a" * 13}, {"hosts": 0},
                                {"hosts": 500}, {"underlay_mtu": 100}])
def test_invalid_specs(kw):
    with pytest.raises(UserError):
        LabSpec(**kw)
