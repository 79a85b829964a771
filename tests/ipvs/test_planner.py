from ipaddress import ip_address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshnet.ipvs.planner import desired
from meshnet.ipvs.state import HostLb, PublishedRule
from meshnet.vxlan.state import sandbox_ns
from tests.ipvs.tables import LB_IPS, NETS, health, pub, svc, task

NS_A = sandbox_ns("mn-", 0x100)


def plan(node="h1", services=(), eps=(), hl=None, pubs=(), lb_ips=LB_IPS, down=()):
    return desired(node, NETS, {s.name: s for s in services}, eps, hl or {}, pubs, "mn-",
                   lb_ips, down)


def backends(state, ns=NS_A, i=0):
    return [str(b.ip) for b in state.sandbox(ns).services[i].backends]


T1, T2, T3 = task("10.0.0.2", "h1", "web"), task("10.0.0.3", "h2", "web"), task(
    "10.0.0.4", "h3", "web")


@pytest.mark.parametrize("name,health_kind,hl,want", [
    ("no check: all usable", "none", {}, ["10.0.0.2", "10.0.0.3", "10.0.0.4"]),
    ("no check: unhealthy record removes", "none", health(T2, False),
     ["10.0.0.2", "10.0.0.4"]),
    ("check: unknown tasks are not used yet", "tcp", {}, []),
    ("check: only healthy ones", "tcp", {**health(T1), **health(T3)}, ["10.0.0.2", "10.0.0.4"]),
    ("check: stale record of another service ignored", "tcp",
     {**health(T1, service="old"), **health(T2)}, ["10.0.0.3"]),
])
def test_health_filtering(name, health_kind, hl, want):
    st_ = plan(services=[svc("web", health=health_kind)], eps=[T1, T2, T3], hl=hl)
    assert backends(st_) == want, name


def test_sandbox_only_where_local_endpoint_or_mesh():
    web = svc("web")
    assert plan("h9", [web], [T1, T2]).sandboxes == ()
    s = plan("h1", [web], [T1, T2])
    assert [sb.ns for sb in s.sandboxes] == [NS_A]
    sb = s.sandbox(NS_A)
    assert sb.gateway == ip_address("10.0.0.1") and sb.lb_ip == ip_address("10.0.0.250")
    assert sb.vips == (ip_address("10.0.0.100"),) and not sb.ingress
    assert [(str(b.ip), b.local) for b in sb.services[0].backends] == [
        ("10.0.0.2", True), ("10.0.0.3", False)]
    assert sb.hairpin_ports == (sb.services[0].backends[0].port_name,)
    # a mesh-published port needs the sandbox on every host, even without a task
    s = plan("h9", [web], [T1, T2], pubs=[pub(8080, 80, "web")])
    assert s.sandbox(NS_A).ingress
    assert s.host.published[0].kind == "mesh" and s.host.ingress_links == (0x100,)
    assert s.host.routes == ((ip_address("10.0.0.100"), "mn-ing000100"),)


def test_dnsrr_gets_no_vip_rules_and_no_ingress():
    rr = svc("rr", mode="dnsrr")
    s = plan("h1", [rr], [task("10.0.0.2", "h1", "rr")], pubs=[pub(8080, 80, "rr")])
    assert s.sandbox(NS_A).services == ()
    assert s.host.published == () and "dnsrr" in s.warnings[0]
    # host mode works for dnsrr: straight to the local task
    s = plan("h1", [rr], [task("10.0.0.2", "h1", "rr")], pubs=[pub(8080, 80, "rr", mode="host")])
    assert s.host.published[0].kind == "local"


def test_multiple_ports_and_affinity():
    web = svc("web", ports=("80/tcp", "53/udp"), affinity="client-ip")
    s = plan(services=[web], eps=[T1, T2])
    vss = s.sandbox(NS_A).services
    assert [(v.port, v.protocol, v.affinity) for v in vss] == [(80, "tcp", True),
                                                               (53, "udp", True)]


@pytest.mark.parametrize("node,mode,local_only,kind,backends", [
    ("h1", "ingress", False, "mesh", []),
    ("h9", "ingress", False, "mesh", []),          # a host without a task still serves
    ("h1", "ingress", True, "local", ["10.0.0.2"]),
    ("h9", "ingress", True, "reject", []),          # local-only, no local task: refuse
    ("h1", "host", False, "local", ["10.0.0.2"]),
    ("h9", "host", False, None, []),                # host mode: not bound without a task
])
def test_publish_modes(node, mode, local_only, kind, backends):
    s = plan(node, [svc("web")], [T1, T2], pubs=[pub(8080, 80, "web", mode=mode,
                                                      local_only=local_only)])
    if kind is None:
        assert s.host == HostLb()
        return
    (p,) = s.host.published
    assert p.kind == kind and [str(b.ip) for b in p.backends] == backends
    assert s.host.reserved == ((8080, "tcp"),)


def test_host_mode_with_only_unhealthy_local_task_rejects():
    s = plan("h1", [svc("web", health="tcp")], [T1, T2], hl={**health(T1, False), **health(T2)},
             pubs=[pub(8080, 80, "web", mode="host")])
    assert s.host.published[0].kind == "reject"


def test_bad_published_entries_are_warnings():
    s = plan(services=[svc("web")], eps=[T1],
             pubs=[pub(8080, 81, "web"), pub(8081, 80, "nope"), pub(8082, 80, "web", "udp")])
    assert s.host.published == () and len(s.warnings) == 3


def test_down_hosts_drop_their_tasks():
    s = plan(services=[svc("web")], eps=[T1, T2, T3], down=("h2",))
    assert backends(s) == ["10.0.0.2", "10.0.0.4"]


def test_no_lb_ip_is_a_warning_for_mesh():
    s = plan("h1", [svc("web")], [T1], pubs=[pub(8080, 80, "web")], lb_ips={})
    assert s.sandbox(NS_A).lb_ip is None and "LB address" in s.warnings[0]
    assert isinstance(s.host.published[0], PublishedRule)


# --- properties ----------------------------------------------------------------------

hosts = st.sampled_from(["h1", "h2", "h3"])
eps_st = st.lists(st.tuples(st.integers(2, 60), hosts, st.sampled_from(["web", "api", ""]),
                            st.sampled_from([None, True, False])),
                  max_size=25, unique_by=lambda t: t[0])


@settings(max_examples=150, deadline=None)
@given(eps_st, hosts, st.sampled_from(["none", "tcp"]), st.permutations(range(25)))
def test_properties(rows, node, kind, perm):
    services = [svc("web", health=kind), svc("api", vip="10.0.0.101", ports=("53/udp",))]
    eps, hl = [], {}
    for last, host, service, healthy in rows:
        e = task(f"10.0.0.{last}", host, service)
        eps.append(e)
        if healthy is not None and service:
            hl.update(health(e, healthy))
    s = plan(node, services, eps, hl)
    # deterministic, whatever the input order
    shuffled = [eps[i] for i in perm if i < len(eps)]
    assert plan(node, services, shuffled, hl) == s
    for sb in s.sandboxes:
        for vs in sb.services:
            ips = [b.ip for b in vs.backends]
            assert ips == sorted(ips) and len(set(ips)) == len(ips)
            for b in vs.backends:
                e = next(e for e in eps if e.ip == b.ip)
                assert e.service == vs.service  # only the service's own tasks
                h = hl.get(e.key)
                if kind == "none" or vs.service == "api":
                    assert h is None or h.healthy
                else:
                    assert h is not None and h.healthy
                assert b.local == (e.host == node)
    # a sandbox exists here iff this host has an endpoint on the network
    assert bool(s.sandboxes) == any(e.host == node for e in eps)
