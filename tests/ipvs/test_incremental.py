"""The incremental paths against their from-scratch references: the planner
(``IncrementalPlanner.state`` == ``desired``), the memoised renderer (== a fresh render),
and partial syncs (programmed chains == what a full sync programs)."""

from __future__ import annotations

from ipaddress import ip_address

from hypothesis import given, settings
from hypothesis import strategies as st

from meshnet.ipvs.incremental import IncrementalPlanner, plan_from_scratch
from meshnet.ipvs.iptables import IptablesBackend, observed_of
from meshnet.ipvs.reconciler import removed_udp_backends
from meshnet.ipvs.rules import HOST, render
from meshnet.model import TaskHealth
from meshnet.vxlan.state import sandbox_ns
from tests.ipvs.fakeipt import FakeIptables
from tests.ipvs.tables import LB_IPS, NETS, pub, svc, task

NODE = "h1"
PREFIX = "mn-"
NAMES = ("s0", "s1", "s2")
IPS = {"a": [f"10.0.0.{i}" for i in range(2, 7)], "b": [f"10.1.0.{i}" for i in range(2, 5)]}
VIPS = {"a": ["10.0.0.100", "10.0.0.101"], "b": ["10.1.0.100"]}


@st.composite
def service_row(draw):
    name = draw(st.sampled_from(NAMES))
    net = draw(st.sampled_from(("a", "b")))
    value = svc(name, net=net, vip=draw(st.sampled_from(VIPS[net])),
                ports=draw(st.sampled_from((("80/tcp",), ("53/udp",), ("80/tcp", "53/udp")))),
                mode=draw(st.sampled_from(("vip", "vip", "dnsrr"))),
                health=draw(st.sampled_from(("none", "none", "tcp"))),
                affinity=draw(st.sampled_from(("none", "client-ip"))))
    return ("services", name, value)


@st.composite
def endpoint_row(draw):
    net = draw(st.sampled_from(("a", "b")))
    ip = draw(st.sampled_from(IPS[net]))
    e = task(ip, draw(st.sampled_from(("h1", "h2", "h3"))),
             draw(st.sampled_from(NAMES + ("",))), net=net)
    return ("endpoints", e.key, e)


@st.composite
def health_row(draw):
    net = draw(st.sampled_from(("a", "b")))
    ip = draw(st.sampled_from(IPS[net]))
    th = TaskHealth(network=net, ip=ip_address(ip), service=draw(st.sampled_from(NAMES)),
                    healthy=draw(st.booleans()))
    return ("health", f"{net}/{ip}", th)


@st.composite
def published_row(draw):
    p = pub(draw(st.sampled_from((8080, 8081))), draw(st.sampled_from((80, 53))),
            draw(st.sampled_from(NAMES + ("nope",))),
            proto=draw(st.sampled_from(("tcp", "udp"))),
            mode=draw(st.sampled_from(("ingress", "host"))), local_only=draw(st.booleans()))
    return ("published", p.key, p)


@st.composite
def network_row(draw):
    name = draw(st.sampled_from(("a", "b")))
    return ("networks", name, NETS[name])


ROW = st.one_of(service_row(), endpoint_row(), endpoint_row(), health_row(), health_row(),
                published_row(), network_row())


@st.composite
def step(draw):
    kind = draw(st.sampled_from(("put", "put", "put", "delete", "env")))
    # (small universes, so that changes often hit the same services and tasks)
    if kind == "env":  # this host's view outside the tables changes
        return ("env", draw(st.sets(st.sampled_from(("h1", "h2", "h3")), max_size=2)),
                draw(st.sampled_from((LB_IPS, {}, {"a": LB_IPS["a"]}))))
    table, key, value = draw(ROW)
    return (table, key, value if kind == "put" else None)


def initial_tables():
    """A populated start (every service with tasks here and elsewhere), so that the
    random changes mostly hit services that have backends."""
    services = {n: svc(n, vip=VIPS["a"][i % 2] if i < 2 else VIPS["b"][0],
                       net="a" if i < 2 else "b") for i, n in enumerate(NAMES)}
    eps = [task(IPS["a"][0], "h1", "s0"), task(IPS["a"][1], "h2", "s0"),
           task(IPS["a"][2], "h1", "s1"), task(IPS["a"][3], "h3", "s1"),
           task(IPS["b"][0], "h1", "s2", net="b"), task(IPS["b"][1], "h2", "s2", net="b")]
    return {"networks": dict(NETS), "services": services,
            "endpoints": {e.key: e for e in eps}, "health": {}, "published": {}}


def apply_step(tables, s):
    table, key, value = s
    if value is None:
        tables[table].pop(key, None)
    else:
        tables[table][key] = value


def advance(p, tables, s, down, lb):
    """Apply one step to the rows and the planner; returns this host's (down, lb)."""
    if s[0] == "env":
        return frozenset(s[1]), s[2]
    apply_step(tables, s)
    p.change(*s)
    return down, lb


def check_hints(state, prev):
    """The planner's hints are true: ``vip_seq`` is the VIPs in order, and a ``delta``
    against the previous sandbox names every position whose service changed."""
    for sb in state.sandboxes:
        assert sb.vip_seq == tuple(vs.vip for vs in sb.services)
        if sb.delta is None:
            continue
        base = prev.get(sb.network)
        changed = sb.delta.of(base)
        if changed is None:
            continue
        assert list(changed) == sorted(set(changed))
        assert len(base.services) == len(sb.services)
        for i, (a, b) in enumerate(zip(base.services, sb.services, strict=True)):
            if i not in changed:
                assert a is b


@settings(max_examples=300, deadline=None)
@given(st.lists(step(), max_size=40), st.data())
def test_incremental_planner_equals_desired(steps, data):
    tables = initial_tables()
    p = IncrementalPlanner(NODE, PREFIX)
    p.reset(tables)
    down, lb = frozenset(), LB_IPS
    last = p.state(lb, down)
    assert last == plan_from_scratch(NODE, PREFIX, tables, lb, down)
    for s in steps:
        down, lb = advance(p, tables, s, down, lb)
        # sometimes several changes land before one sync
        if data.draw(st.integers(0, 3)):
            prev = {sb.network: sb for sb in last.sandboxes}
            last = p.state(lb, down)
            assert last == plan_from_scratch(NODE, PREFIX, tables, lb, down)
            check_hints(last, prev)
    assert p.state(lb, down) == plan_from_scratch(NODE, PREFIX, tables, lb, down)
    # a full reload (the periodic full sync) gives the same again
    p.reset(tables)
    assert p.state(lb, down) == plan_from_scratch(NODE, PREFIX, tables, lb, down)


@settings(max_examples=300, deadline=None)
@given(st.lists(step(), max_size=30))
def test_memoised_render_and_partial_syncs_equal_from_scratch(steps):
    """The backend's identity-memoised render == a fresh render; partial syncs leave the
    kernel (fake) with exactly the chains a full sync would write."""
    tables = initial_tables()
    p = IncrementalPlanner(NODE, PREFIX)
    p.reset(tables)
    nss = [HOST, sandbox_ns(PREFIX, 0x100), sandbox_ns(PREFIX, 0x200)]
    fake = FakeIptables(nss)
    be = IptablesBackend(fake)
    have = be.observe()
    down, lb = frozenset(), LB_IPS
    prev = p.state(lb, down)
    for s in steps:
        down, lb = advance(p, tables, s, down, lb)
        want = p.state(lb, down)
        assert removed_udp_backends(prev, want) == udp_gone_reference(prev, want)
        prev = want
        assert be.render(want) == render(plan_from_scratch(NODE, PREFIX, tables, lb, down),
                                          be.config)
        have, skipped = be.apply(be.plan(want, have), have)
        assert skipped == []
        seen = be.observe()
        expect = observed_of(render(want, be.config))
        assert seen.chains == expect.chains and seen.jumps == expect.jumps
        assert be.plan(want, seen) == []  # applying twice: nothing left to do


def udp_gone_reference(old, new):
    now = {(ns, vs.key): {b.ip for b in vs.backends} for ns, vs in new.services()}
    kept = {sb.ns for sb in new.sandboxes}
    return sorted((ns, str(vs.vip), vs.port, str(b.ip)) for ns, vs in old.services()
                  if vs.protocol == "udp" and ns in kept
                  for b in vs.backends if b.ip not in now.get((ns, vs.key), set()))


def test_one_change_recomputes_one_service():
    """A backend change touches one service: every other VirtualService object and the
    other sandbox are reused as they are (what makes render O(changed))."""
    tables = initial_tables()
    for i, name in enumerate(NAMES):
        tables["services"][name] = svc(name, vip=f"10.0.0.{100 + i}")
    for i, ip in enumerate(IPS["a"]):
        e = task(ip, "h1" if i % 2 else "h2", NAMES[i % 3])
        tables["endpoints"][e.key] = e
    e = task(IPS["b"][0], "h1", "", net="b")
    tables["endpoints"][e.key] = e
    p = IncrementalPlanner(NODE, PREFIX)
    p.reset(tables)
    before = p.state(LB_IPS)
    gone = task(IPS["a"][2], "h2", "s2")
    p.change("endpoints", gone.key, None)
    after = p.state(LB_IPS)
    del tables["endpoints"][gone.key]
    assert after == plan_from_scratch(NODE, PREFIX, tables, LB_IPS)
    old = {vs.key: vs for _, vs in before.services()}
    for _, vs in after.services():
        assert (vs is old[vs.key]) == (vs.service != "s2"), vs.key
    assert after.sandboxes[1] is before.sandboxes[1]  # network b: untouched
