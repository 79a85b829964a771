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


def test_neighbour_limits_are_raised_never_lowered(tmp_path, monkeypatch) -> None:
    from meshnet.lab import lab

    for fam in ("ipv4", "ipv6"):
        for n, v in ((1, 128), (2, 512), (3, 99999)):
            p = tmp_path / fam / f"gc_thresh{n}"
            p.parent.mkdir(exist_ok=True)
            p.write_text(str(v))
    monkeypatch.setattr(lab, "NEIGH_SYSCTL", str(tmp_path / "{family}" / "gc_thresh{n}"))
    need = lab.neighbour_need(100)
    assert need > 100 * 100  # every host resolves every other one on the underlay
    assert lab.ensure_neighbour_capacity(need) == need
    assert int((tmp_path / "ipv4" / "gc_thresh3").read_text()) == 99999  # never lowered
    assert int((tmp_path / "ipv4" / "gc_thresh2").read_text()) == need // 2
    assert int((tmp_path / "ipv6" / "gc_thresh1").read_text()) == need // 4
    assert lab.ensure_neighbour_capacity(need) == 0  # nothing left to raise
