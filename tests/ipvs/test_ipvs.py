import os

import pytest
from pyroute2.netlink.generic import ipvs as g

from meshnet.errors import ConfigError
from meshnet.ipvs.backend import choose_backend
from meshnet.ipvs.iptables import IptablesBackend, Observed
from meshnet.ipvs.ipvs import (
    AddDest,
    AddService,
    DelDest,
    DelService,
    IpvsBackend,
    IpvsObserved,
    IpvsService,
    SetScheduler,
    desired_ipvs,
    dest_request,
    fwmarks,
    ipvs_available,
    plan_ipvs,
    service_request,
)
from meshnet.ipvs.planner import desired
from meshnet.ipvs.rules import HOST
from meshnet.ipvs.state import LbConfig
from meshnet.vxlan.state import sandbox_ns
from tests.ipvs.fakeipt import FakeIptables
from tests.ipvs.tables import LB_IPS, NETS, svc, task

NS = sandbox_ns("mn-", 0x100)
CFG = LbConfig()


def roundtrip(msg):
    msg["header"]["type"] = 0x20  # the genl family id is resolved at bind time
    msg.encode()
    out = g.ipvsmsg(msg.data)
    out.decode()
    return out


def test_new_service_request_is_a_complete_fwmark_entry():
    m = roundtrip(service_request("add", 0x1234, "sh"))
    assert m["cmd"] == g.IPVS_CMD_NEW_SERVICE and m["version"] == g.GENL_VERSION
    s = m.get_attr("IPVS_CMD_ATTR_SERVICE")
    assert s.get_attr("IPVS_SVC_ATTR_FWMARK") == 0x1234
    assert s.get_attr("IPVS_SVC_ATTR_AF") == 2
    assert s.get_attr("IPVS_SVC_ATTR_SCHED_NAME") == "sh"
    # the kernel rejects a full entry without these (ip_vs_genl_parse_service)
    assert s.get_attr("IPVS_SVC_ATTR_NETMASK") == "255.255.255.255"
    assert s.get_attr("IPVS_SVC_ATTR_TIMEOUT") == 0
    assert s.get_attr("IPVS_SVC_ATTR_FLAGS") == {"flags": 0, "mask": 0xFFFF}
    assert s.get_attr("IPVS_SVC_ATTR_ADDR") is None and s.get_attr("IPVS_SVC_ATTR_PORT") is None


def test_delete_service_request_carries_only_the_key():
    s = roundtrip(service_request("del", 0x1234)).get_attr("IPVS_CMD_ATTR_SERVICE")
    assert dict(s["attrs"]) == {"IPVS_SVC_ATTR_FWMARK": 0x1234, "IPVS_SVC_ATTR_AF": 2}


def test_dest_request_is_masquerade_weight_one():
    m = roundtrip(dest_request("add", 0x1234, "10.0.0.5", 8080))
    assert m["cmd"] == g.IPVS_CMD_NEW_DEST
    assert dict(m.get_attr("IPVS_CMD_ATTR_SERVICE")["attrs"])["IPVS_SVC_ATTR_FWMARK"] == 0x1234
    d = m.get_attr("IPVS_CMD_ATTR_DEST")
    assert d.get_attr("IPVS_DEST_ATTR_ADDR") == "10.0.0.5"
    assert d.get_attr("IPVS_DEST_ATTR_PORT") == 8080
    assert d.get_attr("IPVS_DEST_ATTR_FWD_METHOD") == 0  # IP_VS_CONN_F_MASQ
    assert d.get_attr("IPVS_DEST_ATTR_WEIGHT") == 1
    assert d.get_attr("IPVS_DEST_ATTR_ADDR_FAMILY") == 2
    assert roundtrip(dest_request("del", 1, "10.0.0.5", 80))["cmd"] == g.IPVS_CMD_DEL_DEST


def test_fwmarks_are_stable_unique_and_in_range():
    keys = [f"a/s{i}/80/tcp" for i in range(500)]
    m = fwmarks(keys, CFG)
    assert len(set(m.values())) == 500
    assert all(CFG.fwmark_base <= v < CFG.fwmark_base + CFG.fwmark_count for v in m.values())
    assert fwmarks(reversed(keys), CFG) == m


def state(eps):
    services = {"web": svc("web"), "sticky": svc("sticky", vip="10.0.0.102",
                                                 affinity="client-ip")}
    return desired("h1", NETS, services, eps, {}, [], "mn-", LB_IPS)


EPS = [task("10.0.0.2", "h1", "web"), task("10.0.0.3", "h2", "web"),
       task("10.0.0.30", "h1", "sticky")]


def test_desired_and_plan_ipvs():
    want = desired_ipvs(state(EPS), CFG)
    svcs = sorted(want[NS].values(), key=lambda s: s.key)
    assert [(s.scheduler, s.dests) for s in svcs] == [
        ("sh", (("10.0.0.30", 80),)), ("rr", (("10.0.0.2", 80), ("10.0.0.3", 80)))]
    ops = plan_ipvs(want, {})
    assert [type(o) for o in ops] == [AddService, AddDest, AddService, AddDest, AddDest] or \
        [type(o) for o in ops] == [AddService, AddDest, AddDest, AddService, AddDest]
    assert plan_ipvs(want, want) == []
    # one backend goes, another comes: add before delete
    want2 = desired_ipvs(state([EPS[0], task("10.0.0.4", "h3", "web"), EPS[2]]), CFG)
    ops = plan_ipvs(want2, want)
    web = next(s.fwmark for s in want2[NS].values() if s.scheduler == "rr")
    assert ops == [AddDest(NS, web, "10.0.0.4", 80), DelDest(NS, web, "10.0.0.3", 80)]
    # scheduler change, service removal
    have = {NS: {web: IpvsService(web, "sh", want2[NS][web].dests), 7: IpvsService(7, "rr", ())}}
    ops = plan_ipvs(want2, have)
    assert SetScheduler(NS, want2[NS][web]) in ops and ops[-1] == DelService(NS, 7)


class FakeIpvsSocket:
    tables: dict = {}

    def __init__(self, ns):
        self.ns = ns

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def test_ipvs_backend_marks_and_snat_rules(monkeypatch):
    import meshnet.ipvs.ipvs as mod

    applied = []
    monkeypatch.setattr(mod, "_send", lambda sock, op: applied.append(op))
    monkeypatch.setattr(mod, "_dump", lambda sock: {})
    fake = FakeIptables([HOST, NS])
    be = IpvsBackend(fake, sockets=FakeIpvsSocket)
    p = be.plan(state(EPS), IpvsObserved())
    _have, skipped = be.apply(p, IpvsObserved())
    assert not skipped and len([o for o in applied if isinstance(o, AddService)]) == 2
    mangle = fake.chains(NS, "mangle")
    assert any("-j MARK --set-xmark 0x" in r and "-d 10.0.0.100/32" in r
               for r in mangle["MESHNET-FWMARK"])
    assert mangle["PREROUTING"] == ["-m comment --comment meshnet -j MESHNET-FWMARK"]
    assert any("-m ipvs --ipvs -j SNAT --to-source 10.0.0.250" in r
               for r in fake.chains(NS, "nat")["MESHNET-POSTROUTING"])


def test_choose_backend():
    no = lambda: (False, "no ip_vs here")  # noqa: E731
    yes = lambda: (True, "")  # noqa: E731
    be, why = choose_backend("auto", "mn-", probe=no)
    assert isinstance(be, IptablesBackend) and "no ip_vs here" in why
    be, why = choose_backend("auto", "mn-", probe=yes)  # a tested backend, not IPVS yet
    assert isinstance(be, IptablesBackend) and "UNVERIFIED" in why
    be, why = choose_backend("ipvs", "mn-", probe=yes)
    assert isinstance(be, IpvsBackend) and "UNVERIFIED" in why
    assert isinstance(choose_backend("iptables", "mn-", probe=yes)[0], IptablesBackend)
    with pytest.raises(ConfigError, match="no IPVS"):
        choose_backend("ipvs", "mn-", probe=no)
    with pytest.raises(ConfigError):
        choose_backend("nft", "mn-", probe=yes)  # type: ignore[arg-type]


def test_ipvs_available_reports_a_reason(monkeypatch):
    """Each way IPVS can be missing gives its own reason; present means no reason."""
    from meshnet.ipvs import ipvs as mod

    def no_family(name):
        raise OSError(2, "No such file or directory")

    monkeypatch.setattr(mod.os.path, "exists", lambda p: p != "/proc/net/ip_vs")
    monkeypatch.setattr(mod, "genl_family", no_family)
    ok, why = ipvs_available()
    assert not ok and "/proc/net/ip_vs missing" in why and "generic netlink family" in why
    monkeypatch.setattr(mod, "genl_family", lambda name: None)
    assert ipvs_available() == (False, "/proc/net/ip_vs missing (no ip_vs module in this "
                                       "kernel)")
    monkeypatch.setattr(mod.os.path, "exists", lambda p: True)
    assert ipvs_available() == (True, "")
    monkeypatch.setattr(mod, "genl_family", no_family)
    ok, why = ipvs_available()
    assert not ok and why.startswith("generic netlink family IPVS")


def test_genl_family_asks_the_kernel_and_closes_its_socket():
    """A real generic netlink query: the controller's own family exists, a made-up one
    does not (ENOENT), and neither leaves a file open (pyroute2's IPVS() left an event
    loop and three sockets to the garbage collector when the family was absent, which
    the churn test saw as an agent's open files changing)."""
    import errno
    import gc

    from meshnet.nlread import genl_family

    def fds():
        return len(os.listdir("/proc/self/fd"))

    gc.disable()
    try:
        before = fds()
        genl_family("nlctrl")
        with pytest.raises(OSError) as e:
            genl_family("mn-nofamily")
        assert e.value.errno == errno.ENOENT
        ipvs_available()
        assert fds() == before
    finally:
        gc.enable()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_ipvs_kernel():
    ok, why = ipvs_available()
    if not ok:
        pytest.skip(f"no IPVS in this kernel: {why}")
    from meshnet import netns
    from meshnet.ipvs.iptables import CommandRunner

    ns = f"mn-lbdev-{os.getpid()}-ov-000100"
    try:
        netns.create(ns)
        be = IpvsBackend(CommandRunner(f"mn-lbdev-{os.getpid()}-",
                                       host_ns=f"mn-lbdev-{os.getpid()}"))
        st = desired("h1", NETS, {"web": svc("web")}, EPS[:2], {}, [],
                     f"mn-lbdev-{os.getpid()}-", LB_IPS)
        p = be.plan(st, IpvsObserved(rules=Observed()))
        have, _ = be.apply(p, IpvsObserved())
        assert not be.plan(st, be.observe())
        be.cleanup()
    finally:
        netns.remove(ns, kill=False)
