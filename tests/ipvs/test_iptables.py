import textwrap
from ipaddress import ip_address

import pytest

from meshnet.ipvs.iptables import (
    IptablesBackend,
    Observed,
    conntrack_flush_args,
    observed_of,
    parse_save,
    plan,
)
from meshnet.ipvs.planner import desired
from meshnet.ipvs.rules import HOST, render
from meshnet.ipvs.state import Backend, LbState, SandboxLb, VirtualService
from meshnet.model import Network, PortSpec, Service
from meshnet.vxlan.state import sandbox_ns
from tests.ipvs.fakeipt import FakeIptables, RestoreError
from tests.ipvs.tables import LB_IPS, NETS, pub, svc, task
from tests.ipvs.tracer import Outcome, Packet, Recent, trace, trace_paths

NS = sandbox_ns("mn-", 0x100)
LOCAL = frozenset({"10.0.0.1", "10.0.0.100", "10.0.0.101", "10.0.0.250"})
SERVICES = {"web": svc("web"), "dns": svc("dns", vip="10.0.0.101", ports=("53/udp",)),
            "sticky": svc("sticky", vip="10.0.0.102", affinity="client-ip")}
EPS = [task("10.0.0.2", "h1", "web"), task("10.0.0.3", "h2", "web"),
       task("10.0.0.4", "h3", "web"), task("10.0.0.20", "h2", "dns"),
       task("10.0.0.30", "h1", "sticky"), task("10.0.0.31", "h2", "sticky"),
       task("10.0.0.32", "h3", "sticky")]


def state(eps=EPS, pubs=(), node="h1", services=SERVICES):
    return desired(node, NETS, services, eps, {}, pubs, "mn-", LB_IPS)


def applied(st, fake=None):
    fake = fake or FakeIptables([HOST, NS])
    be = IptablesBackend(fake)
    have, skipped = be.apply(be.plan(st, be.observe(), full=True), be.observe())
    assert skipped == []
    return fake, be, have


# --- golden --------------------------------------------------------------------------


def test_golden_one_service():
    sb = SandboxLb("a", 0x100, NS, ip_address("10.0.0.1"), ip_address("10.0.0.250"),
                   (VirtualService("a", "web", ip_address("10.0.0.100"), 80, "tcp",
                                   (Backend(ip_address("10.0.0.2"), 80, True),
                                    Backend(ip_address("10.0.0.3"), 80))),))
    ops = plan(render(LbState((sb,))), Observed())
    assert [op.ns for op in ops] == [NS]
    got = "\n".join(line for line in ops[0].text.splitlines()
                    if "--comment mn:" not in line)
    assert got == textwrap.dedent("""\
        *nat
        :MESHNET-HAIRPIN - [0:0]
        :MESHNET-MARK-MASQ - [0:0]
        :MESHNET-POSTROUTING - [0:0]
        :MESHNET-SERVICES - [0:0]
        :MESHNET-SVC-NDLW7KSCUG3CWQAD - [0:0]
        -A MESHNET-HAIRPIN -s 10.0.0.2/32 -d 10.0.0.2/32 -j MASQUERADE
        -A MESHNET-MARK-MASQ -j MARK --set-xmark 0x8000/0x8000
        -A MESHNET-POSTROUTING -j MESHNET-HAIRPIN
        -A MESHNET-POSTROUTING -m mark ! --mark 0x8000/0x8000 -j RETURN
        -A MESHNET-POSTROUTING -j MARK --set-xmark 0x8000/0x0
        -A MESHNET-POSTROUTING -j SNAT --to-source 10.0.0.250
        -A MESHNET-SERVICES -d 10.0.0.100/32 -p tcp -m tcp --dport 80 -j MESHNET-SVC-NDLW7KSCUG3CWQAD
        -A MESHNET-SVC-NDLW7KSCUG3CWQAD -p tcp -m statistic --mode random --probability 0.5000000000 -j DNAT --to-destination 10.0.0.2:80
        -A MESHNET-SVC-NDLW7KSCUG3CWQAD -p tcp -j DNAT --to-destination 10.0.0.3:80
        -I POSTROUTING 1 -m comment --comment meshnet -j MESHNET-POSTROUTING
        -I PREROUTING 1 -m comment --comment meshnet -j MESHNET-SERVICES
        COMMIT""")


def test_golden_host_published():
    st = state(pubs=[pub(8080, 80, "web"), pub(8081, 80, "web", local_only=True)])
    text = plan(render(st), Observed())[0].text
    assert "-A MESHNET-INGRESS -p tcp -m tcp --dport 8080 -j DNAT --to-destination " \
        "10.0.0.100:80" in text
    assert "-A MESHNET-POSTROUTING -s 127.0.0.0/8 -o mn-ing+ -j MASQUERADE" in text
    assert "-A MESHNET-INPUT -p tcp -m tcp --dport 8081 -j REJECT --reject-with tcp-reset" in text
    assert "-I PREROUTING 1 -m addrtype --dst-type LOCAL -m comment --comment meshnet " \
        "-j MESHNET-INGRESS" in text
    assert "-I OUTPUT 1 -m addrtype" in text and "-I FORWARD 1" in text


# --- behaviour, through the packet tracer --------------------------------------------


def nat(fake, ns=NS):
    return fake.chains(ns, "nat")


def test_vip_spreads_evenly_over_healthy_backends():
    fake, _, _ = applied(state())
    dist = trace(nat(fake), Packet("10.0.0.9", "10.0.0.100", "tcp", 80, local=LOCAL))
    assert dist == pytest.approx({Outcome("DNAT", f"10.0.0.{i}:80"): 1 / 3 for i in (2, 3, 4)})
    dist = trace(nat(fake), Packet("10.0.0.9", "10.0.0.101", "udp", 53, local=LOCAL))
    assert dist == {Outcome("DNAT", "10.0.0.20:53"): 1.0}


def test_other_traffic_is_untouched():
    fake, _, _ = applied(state())
    for pkt in (Packet("10.0.0.9", "10.0.0.100", "tcp", 81), Packet("10.0.0.9", "10.0.0.3"),
                Packet("10.0.0.9", "10.0.0.100", "udp", 80)):
        assert trace(nat(fake), pkt) == {Outcome("ACCEPT"): 1.0}


def test_service_without_backends_falls_to_the_sandbox():
    fake, _, _ = applied(state(eps=[e for e in EPS if e.service != "dns"]))
    # no DNAT: the VIP is local to the sandbox, which answers with a reset/unreachable
    assert trace(nat(fake), Packet("10.0.0.9", "10.0.0.101", "udp", 53)) == {
        Outcome("ACCEPT"): 1.0}


def test_hairpin_is_masqueraded_and_only_hairpin():
    fake, _, _ = applied(state())
    post = nat(fake)
    # after DNAT, a task that reached itself
    assert trace(post, Packet("10.0.0.2", "10.0.0.2"), "POSTROUTING") == {
        Outcome("MASQUERADE"): 1.0}
    # a client reaching another task keeps its address
    assert trace(post, Packet("10.0.0.9", "10.0.0.3"), "POSTROUTING") == {Outcome("ACCEPT"): 1.0}


def test_ingress_traffic_is_snated_to_the_lb_address():
    fake, _, _ = applied(state(pubs=[pub(8080, 80, "web")], node="h1"))
    pre = trace(nat(fake), Packet("192.0.2.7", "10.0.0.100", iif="ing0", local=LOCAL))
    assert set(o.to for o in pre) == {"10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"}
    assert all(o.mark & 0x8000 for o in pre)
    post = trace(nat(fake), Packet("192.0.2.7", "10.0.0.3", mark=0x8000), "POSTROUTING")
    assert post == {Outcome("SNAT", "10.0.0.250", 0): 1.0}
    # east-west traffic is not marked, so the client address is preserved
    pre = trace(nat(fake), Packet("10.0.0.9", "10.0.0.100", local=LOCAL))
    assert not any(o.mark for o in pre)


def test_host_published_ports():
    st = state(pubs=[pub(8080, 80, "web"), pub(8081, 80, "web", local_only=True),
                     pub(8082, 80, "sticky", mode="host")], node="h1")
    fake, _, _ = applied(st)
    host_local = frozenset({"192.0.2.1", "127.0.0.1"})
    hn = nat(fake, HOST)
    for dst in host_local:
        assert trace(hn, Packet("192.0.2.99", dst, dport=8080, local=host_local)) == {
            Outcome("DNAT", "10.0.0.100:80"): 1.0}
        assert trace(hn, Packet("192.0.2.99", dst, dport=8081, local=host_local)) == {
            Outcome("DNAT", "10.0.0.2:80"): 1.0}
        assert trace(hn, Packet("192.0.2.99", dst, dport=8082, local=host_local)) == {
            Outcome("DNAT", "10.0.0.30:80"): 1.0}
    # forwarded traffic through the host is not a published port
    assert trace(hn, Packet("192.0.2.99", "198.51.100.1", dport=8080, local=host_local)) == {
        Outcome("ACCEPT"): 1.0}
    # localhost clients are masqueraded into the sandbox; others keep their address
    assert trace(hn, Packet("127.0.0.1", "10.0.0.100", oif="mn-ing000100"), "POSTROUTING") == {
        Outcome("MASQUERADE"): 1.0}
    assert trace(hn, Packet("192.0.2.99", "10.0.0.2", oif="mn-ing000100"), "POSTROUTING") == {
        Outcome("ACCEPT"): 1.0}
    # what nothing DNATed (the reservation socket) is refused
    filt = fake.chains(HOST, "filter")
    assert trace(filt, Packet("192.0.2.99", "192.0.2.1", dport=8080), "INPUT") == {
        Outcome("REJECT"): 1.0}
    # on a host without a task: local-only refuses, host mode is not bound at all
    fake2, _, _ = applied(state(pubs=[pub(8081, 80, "web", local_only=True),
                                      pub(8082, 80, "sticky", mode="host")], node="h9"),
                          FakeIptables([HOST]))
    assert trace(nat(fake2, HOST), Packet("1.2.3.4", "192.0.2.9", dport=8081,
                                          local=frozenset({"192.0.2.9"}))) == {
        Outcome("ACCEPT"): 1.0}
    assert trace(fake2.chains(HOST, "filter"), Packet("1.2.3.4", "192.0.2.9", dport=8081),
                 "INPUT") == {Outcome("REJECT"): 1.0}
    assert trace(fake2.chains(HOST, "filter"), Packet("1.2.3.4", "192.0.2.9", dport=8082),
                 "INPUT") == {Outcome("ACCEPT"): 1.0}


def test_affinity_keeps_a_client_on_its_backend():
    fake, _, _ = applied(state())
    pkt = Packet("10.0.0.9", "10.0.0.102", local=LOCAL)
    recent = Recent()
    paths = trace_paths(nat(fake), pkt, recent=recent)
    assert sorted(round(p, 6) for p, _, _ in paths) == [round(1 / 3, 6)] * 3
    p, first, sets = paths[1]
    for name, src in sets:
        recent.tables.setdefault(name, set()).add(src)
    assert trace(nat(fake), pkt, recent=recent) == {first: 1.0}
    # another client is still spread
    assert len(trace(nat(fake), Packet("10.0.0.8", "10.0.0.102"), recent=recent)) == 3


@pytest.mark.parametrize("n", [1, 2, 3, 7, 10])
def test_distribution_is_uniform_for_any_count(n):
    eps = [task(f"10.0.0.{10 + i}", "h2", "web") for i in range(n)]
    fake, _, _ = applied(state(eps=eps, node="h2"))
    dist = trace(nat(fake), Packet("10.0.0.9", "10.0.0.100"))
    assert len(dist) == n and all(p == pytest.approx(1 / n, abs=1e-9) for p in dist.values())


# --- reconciling ---------------------------------------------------------------------


def test_apply_twice_is_a_no_op_and_observe_agrees():
    st = state(pubs=[pub(8080, 80, "web")])
    fake, be, have = applied(st)
    assert be.plan(st, have) == []
    assert be.plan(st, be.observe()) == []
    assert be.observe().chains == observed_of(render(st)).chains


def test_partial_sync_touches_only_the_changed_service():
    fake, be, have = applied(state())
    n = len(fake.restores)
    st2 = state(eps=[e for e in EPS if str(e.ip) != "10.0.0.3"])
    ops = be.plan(st2, have)
    assert len(ops) == 1 and not ops[0].deleted and not ops[0].jumps_added
    assert [c for (_t, c), _ in ops[0].written] == [
        next(c for c in nat(fake) if c.startswith("MESHNET-SVC-") and any(
            "10.0.0.3:80" in r for r in nat(fake)[c]))]
    have, _ = be.apply(ops, have)
    assert len(fake.restores) == n + 1 and be.plan(st2, be.observe()) == []
    assert set(o.to for o in trace(nat(fake), Packet("1.1.1.1", "10.0.0.100"))) == {
        "10.0.0.2:80", "10.0.0.4:80"}


def test_partial_sync_at_scale_is_one_chain():
    net = Network(name="big", vni=0x300, subnet="10.8.0.0/16")
    services, eps = {}, []
    for s in range(1000):
        services[f"s{s}"] = Service(name=f"s{s}", network="big", vip=f"10.8.0.{0}" if False
                                    else str(net.subnet.network_address + 2 + s),
                                    ports=(PortSpec(80),))
        for b in range(10):
            ip = str(net.subnet.network_address + 4096 + s * 10 + b)
            eps.append(task(ip, f"h{b}", f"s{s}", net="big"))
    nets = {"big": net}
    ns = sandbox_ns("mn-", 0x300)
    be = IptablesBackend(FakeIptables([HOST, ns]))
    want = desired("h0", nets, services, eps, {}, [], "mn-")
    have, _ = be.apply(be.plan(want, Observed(), full=True), Observed())
    want2 = desired("h0", nets, services, eps[:3] + eps[4:], {}, [], "mn-")
    ops = be.plan(want2, have)
    assert len(ops) == 1 and len(ops[0].written) == 1 and not ops[0].deleted
    assert len(ops[0].text.splitlines()) < 20


def test_removed_service_and_namespace_cleanup():
    fake, be, have = applied(state())
    st2 = state(services={"web": SERVICES["web"]})
    have, _ = be.apply(be.plan(st2, have), have)
    assert be.plan(st2, be.observe()) == []
    assert sum(c.startswith("MESHNET-SVC-") for c in nat(fake)) == 1
    # the last service of the sandbox goes: every chain and jump goes
    have, _ = be.apply(be.plan(LbState(), have), have)
    assert not [c for c in nat(fake) if c.startswith("MESHNET")]
    assert nat(fake)["PREROUTING"] == [] and have.namespaces() == set()


def test_full_sync_repairs_drift_and_foreign_rules_survive():
    fake, be, have = applied(state())
    svc_chain = next(c for c in nat(fake) if c.startswith("MESHNET-SVC-"))
    fake.chains(NS)[svc_chain].append("-j DNAT --to-destination 6.6.6.6:1")  # drift
    fake.chains(NS)["PREROUTING"].append("-j FOREIGN")
    fake.chains(NS)["FOREIGN"] = []
    be.apply(be.plan(state(), be.observe(), full=True), be.observe())
    assert "-j DNAT --to-destination 6.6.6.6:1" not in nat(fake)[svc_chain]
    assert nat(fake)["PREROUTING"][-1] == "-j FOREIGN" and "FOREIGN" in nat(fake)


def test_missing_namespace_is_skipped_and_failed_restore_raises():
    fake = FakeIptables([HOST])
    be = IptablesBackend(fake)
    have, skipped = be.apply(be.plan(state(), Observed()), Observed())
    assert skipped == [NS] and NS not in have.chains
    fake.ns[NS] = fake.ns[HOST].__class__()  # the sandbox appears
    from tests.ipvs.fakeipt import empty_tables
    fake.ns[NS] = empty_tables()
    fake.fail_next = True
    with pytest.raises(RestoreError):
        be.apply(be.plan(state(), have), have)
    assert not [c for c in nat(fake) if c.startswith("MESHNET")]  # nothing half-applied
    have, skipped = be.apply(be.plan(state(), be.observe(), full=True), be.observe())
    assert not skipped and be.plan(state(), be.observe()) == []


def test_cleanup_removes_everything_owned():
    fake, be, _ = applied(state(pubs=[pub(8080, 80, "web")]))
    fake.chains(HOST)["PREROUTING"].append("-j ACCEPT")
    assert be.cleanup()
    for ns in (HOST, NS):
        for table in ("nat", "filter"):
            assert not any("MESHNET" in c or any("MESHNET" in r for r in rules)
                           for c, rules in fake.chains(ns, table).items())
    assert fake.chains(HOST)["PREROUTING"] == ["-j ACCEPT"]


def test_parse_save_reads_quoted_digests_and_jumps():
    chains, jumps = parse_save(textwrap.dedent("""\
        *nat
        :PREROUTING ACCEPT [0:0]
        :MESHNET-SERVICES - [0:0]
        :OTHER - [0:0]
        -A PREROUTING -m comment --comment meshnet -j MESHNET-SERVICES
        -A PREROUTING -j OTHER
        -A MESHNET-SERVICES -m comment --comment "mn:ABCDEF234567ABCD"
        COMMIT
        """))
    assert chains == {("nat", "MESHNET-SERVICES"): "ABCDEF234567ABCD"}
    assert [j.target for j in jumps] == ["MESHNET-SERVICES"]


def test_conntrack_args():
    assert conntrack_flush_args("10.0.0.101", 53, "10.0.0.20") == [
        "-D", "-p", "udp", "--orig-dst", "10.0.0.101", "--orig-port-dst", "53",
        "--reply-src", "10.0.0.20"]


def test_other_programmers_chains_are_not_ours():
    """The gateway bridge and DNS own MESHNET-GW-*/MESHNET-DNS-* in the same namespaces."""
    from meshnet.ipvs.iptables import parse_save

    save = """*filter
:FORWARD DROP [0:0]
:MESHNET-GW-FORWARD - [0:0]
:MESHNET-FORWARD - [0:0]
-A FORWARD -j MESHNET-GW-FORWARD
-A FORWARD -j MESHNET-FORWARD
-A MESHNET-GW-FORWARD -i mn_gwbridge -o mn_gwbridge -j DROP
COMMIT
*nat
:OUTPUT ACCEPT [0:0]
:MESHNET-DNS-OUTPUT - [0:0]
-A OUTPUT -d 127.0.0.11/32 -j MESHNET-DNS-OUTPUT
COMMIT
"""
    chains, jumps = parse_save(save)
    assert set(chains) == {("filter", "MESHNET-FORWARD")}
    assert {j.spec for j in jumps} == {"-j MESHNET-FORWARD"}
