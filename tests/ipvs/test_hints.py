"""The change hints (``SandboxLb.delta``, ``Ruleset.base/touched``, ``applied`` in the
iptables plan) on a sandbox large enough for the patch paths: 24 services x 2 ports.
Over random task, health and service changes, partial syncs through the real planner,
renderer and planner-of-restores leave the (fake) kernel with exactly what a full render
wants, each plan equals the plan made without hints, UDP conntrack cleanup sees the
same removed backends, and the hinted paths are taken."""

from __future__ import annotations

from ipaddress import ip_address

from hypothesis import given, settings
from hypothesis import strategies as st

from meshnet.ipvs import iptables
from meshnet.ipvs.incremental import IncrementalPlanner, plan_from_scratch
from meshnet.ipvs.iptables import IptablesBackend, observed_of, plan
from meshnet.ipvs.netobjects import net_key
from meshnet.ipvs.reconciler import removed_udp_backends
from meshnet.ipvs.rules import HOST, render
from meshnet.model import TaskHealth
from meshnet.vxlan.state import sandbox_ns
from tests.ipvs.fakeipt import FakeIptables
from tests.ipvs.tables import LB_IPS, NETS, svc, task
from tests.ipvs.test_incremental import udp_gone_reference

NODE, PREFIX, N = "h1", "mn-", 24
NAMES = [f"s{i:02d}" for i in range(N)]


def tables():
    services = {n: svc(n, vip=f"10.0.1.{i + 1}", ports=("80/tcp", "53/udp"))
                for i, n in enumerate(NAMES)}
    eps = [task(f"10.0.2.{i * 3 + k + 1}", f"h{k + 1}", n)
           for i, n in enumerate(NAMES) for k in range(3)]
    return {"networks": {"a": NETS["a"]}, "services": services,
            "endpoints": {e.key: e for e in eps}, "health": {}, "published": {}}


def make_change(pick):
    """One table change; ``pick(options)`` chooses (hypothesis' draw, or a seeded Random)."""
    i = pick(range(N))
    k = pick(range(4))
    ip = f"10.0.2.{i * 3 + k + 1}"
    kind = pick(("task", "task", "gone", "health", "service"))
    if kind == "task":
        e = task(ip, pick(("h1", "h2", "h3")), NAMES[i])
        return ("endpoints", e.key, e)
    if kind == "gone":
        return ("endpoints", f"a/{ip}", None)
    if kind == "health":
        th = TaskHealth(network="a", ip=ip_address(ip), service=NAMES[i],
                        healthy=pick((True, False)))
        return ("health", f"a/{ip}", th)
    return ("services", NAMES[i], svc(NAMES[i], vip=f"10.0.1.{i + 1}",
                                      ports=pick((("80/tcp", "53/udp"), ("80/tcp",))),
                                      affinity=pick(("none", "client-ip"))))


@st.composite
def change(draw):
    return make_change(lambda options: draw(st.sampled_from(tuple(options))))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(change(), min_size=1, max_size=3), min_size=1, max_size=25))
def test_hinted_partial_syncs_equal_full_comparison(batches):
    run_batches(batches)


def run_batches(batches) -> int:
    """Apply the batches through the hinted paths, checking each sync against a full
    comparison; return how many syncs used the hints."""
    rows = tables()
    p = IncrementalPlanner(NODE, PREFIX)
    p.reset(rows)
    fake = FakeIptables([HOST, sandbox_ns(PREFIX, NETS["a"].vni)])
    be = IptablesBackend(fake)
    have = be.observe()
    prev = p.state(LB_IPS)
    have, _ = be.apply(be.plan(prev, have, full=True), have)
    hinted = 0
    for batch in batches:
        for table, key, value in batch:
            if value is None:
                rows[table].pop(key, None)
            else:
                rows[table][key] = value
            p.change(table, key, value)
        want = p.state(LB_IPS)
        assert want == plan_from_scratch(NODE, PREFIX, rows, LB_IPS)
        assert net_key(want) == net_key(plan_from_scratch(NODE, PREFIX, rows, LB_IPS))
        assert removed_udp_backends(prev, want) == udp_gone_reference(prev, want)
        ops = be.plan(want, have)
        rulesets = be._planned[0]  # noqa: SLF001 - the rulesets that plan rendered
        assert ops == plan(rulesets, have)  # hints change the work, never the result
        hinted += any(rs.base is not None for rs in rulesets.values())
        have, skipped = be.apply(ops, have)
        assert skipped == []
        seen = be.observe()
        expect = observed_of(render(want, be.config))
        assert seen.chains == expect.chains and seen.jumps == expect.jumps
        prev = want
    return hinted



def test_one_task_change_compares_only_touched_chains(monkeypatch):
    """A backend change at 24 services: plan reads the touched chains, not all 24+."""
    rows = tables()
    p = IncrementalPlanner(NODE, PREFIX)
    p.reset(rows)
    be = IptablesBackend(FakeIptables([HOST, sandbox_ns(PREFIX, NETS["a"].vni)]))
    have = be.observe()
    have, _ = be.apply(be.plan(p.state(LB_IPS), have, full=True), have)
    e = task("10.0.2.200", "h3", "s00")
    rows["endpoints"][e.key] = e
    p.change("endpoints", e.key, e)
    want = p.state(LB_IPS)
    sb = want.sandboxes[0]
    assert sb.delta is not None and sb.delta.changed == (0, 1)  # s00's two ports
    ops = be.plan(want, have)
    rs = be._planned[0][sb.ns]  # noqa: SLF001
    assert rs.base is not None and len(rs.touched) <= 2 + 4  # 2 service chains + common
    assert [op.ns for op in ops] == [sb.ns]
    assert {k for k, _ in ops[0].written} <= set(rs.touched)
    # against a re-observed kernel (a full sync's view) the hints are not trusted
    assert be.plan(want, be.observe()) == plan(be._planned[0], be.observe())  # noqa: SLF001
    assert iptables.plan(be._planned[0], be.observe()) == ops  # noqa: SLF001


def test_random_runs_take_the_hinted_paths():
    """On the same kind of random changes (seeded: deterministic), most runs use the
    hints: the equality above is not met by always falling back to a full comparison."""
    import random

    rng = random.Random(20261206)
    runs = []
    for _ in range(20):
        batches = [[make_change(lambda o: rng.choice(tuple(o)))
                    for _ in range(rng.randint(1, 3))] for _ in range(rng.randint(1, 25))]
        runs.append(run_batches(batches))
    assert sum(1 for h in runs if h) * 2 >= len(runs), runs
    assert sum(runs) > 0
