"""The nftables backend's tables and plans (pure): a packet walk over the rendered maps,
plans that converge, a one-backend change that is elements only, reading a table back."""

from __future__ import annotations

import json
from ipaddress import ip_address

from hypothesis import given
from hypothesis import strategies as st

from meshnet.ipvs.incremental import IncrementalPlanner
from meshnet.ipvs.iptables import Observed
from meshnet.ipvs.nftables import NftBackend, NftObserved
from meshnet.ipvs.nftnl import ranges_elems
from meshnet.ipvs.nftrules import (
    DISPATCH_DIGEST,
    SPAN,
    TABLE,
    Buckets,
    NftMemo,
    NftSandbox,
    NftService,
    parse_ruleset,
    plan_sandbox,
    render,
    split,
    table_of,
)
from meshnet.ipvs.planner import desired
from meshnet.ipvs.rules import HOST, Jump
from meshnet.ipvs.state import LbConfig
from tests.ipvs.tables import LB_IPS, NETS, health, pub, svc, task

PREFIX = "mn-x-"
SB = f"{PREFIX}ov-000100"
CFG = LbConfig()


def state(services=None, eps=None, pubs=(), hl=None):
    services = services if services is not None else {"web": svc("web")}
    eps = eps if eps is not None else [task(f"10.0.0.{i}", f"h{i % 3 + 1}", "web")
                                       for i in range(2, 8)]
    return desired("h1", NETS, services, eps, hl or {}, pubs, PREFIX, LB_IPS)


def walk(t: NftSandbox, dst: str, proto: str, port: int, r: int) -> tuple[str, int] | None:
    """Where the sandbox DNATs a new connection (r: the random / source-hash number)."""
    s = next((s for s in t.services.values() if (s.vip, s.proto, s.port) == (dst, proto,
                                                                              port)), None)
    if s is None:
        return None
    hit = [(ip, p) for lo, hi, ip, p in s.ranges or () if lo <= r <= hi]
    assert len(hit) <= 1, "overlapping ranges"
    return hit[0] if hit else None


@given(st.integers(1, 600))
def test_split_covers_the_span_evenly(n):
    parts = split(n)
    assert parts[0][0] == 0 and parts[-1][1] == SPAN - 1
    assert all(a[1] + 1 == b[0] for a, b in zip(parts, parts[1:], strict=False))
    sizes = {hi - lo + 1 for lo, hi in parts}
    assert max(sizes) - min(sizes) <= 1


def test_vip_reaches_every_backend_with_an_equal_share():
    t = render(state(), CFG)[SB]
    assert t is not None
    seen: dict[tuple[str, int], int] = {}
    for r in range(0, SPAN, 7):
        b = walk(t, "10.0.0.100", "tcp", 80, r)
        assert b is not None
        seen[b] = seen.get(b, 0) + 1
    assert set(seen) == {(f"10.0.0.{i}", 80) for i in range(2, 8)}
    assert max(seen.values()) - min(seen.values()) <= 2
    assert walk(t, "10.0.0.100", "udp", 80, 5) is None  # not a service: no DNAT


def test_unhealthy_task_leaves_the_map_and_a_service_without_tasks_refuses():
    eps = [task("10.0.0.2", "h1", "web"), task("10.0.0.3", "h2", "web")]
    services = {"web": svc("web", health="tcp")}
    hl = {**health(eps[0]), **health(eps[1], healthy=False)}
    t = render(state(services, eps, hl=hl), CFG)[SB]
    assert {walk(t, "10.0.0.100", "tcp", 80, r) for r in (0, SPAN // 2, SPAN - 1)} == {
        ("10.0.0.2", 80)}
    hl = {**health(eps[0], healthy=False), **health(eps[1], healthy=False)}
    t = render(state(services, eps, hl=hl), CFG)[SB]
    assert t is not None and walk(t, "10.0.0.100", "tcp", 80, 0) is None  # empty map


def test_rules_name_no_backend_and_mark_ingress_and_hash_for_affinity():
    services = {"web": svc("web", affinity="client-ip"), "api": svc("api", vip="10.0.0.101")}
    eps = [task("10.0.0.2", "h1", "web"), task("10.0.0.3", "h1", "api")]
    t = render(state(services, eps, pubs=[pub(8080, 80, "web")]), CFG)[SB]
    rules = {s.vip: "\n".join(s.rules) for s in t.services.values()}
    assert "jhash ip saddr" in rules["10.0.0.100"] and "numgen random" in rules["10.0.0.101"]
    assert all('iifname "ing0" meta mark set' in r for r in rules.values())  # mesh network
    assert all("10.0.0.2" not in r and "10.0.0.3" not in r for r in rules.values())
    assert t.hairpin == {"10.0.0.2", "10.0.0.3"}  # local tasks
    assert "snat ip to 10.0.0.250" in t.postrouting[-1]


def test_plan_from_nothing_then_nothing_to_do():
    t = render(state(), CFG)[SB]
    op = plan_sandbox(SB, t, None)
    assert op is not None and op.script.startswith(f"add table ip {TABLE}\n")
    (svc_,) = t.services.values()
    assert t.tables == {TABLE, svc_.table} and svc_.table.startswith(f"{TABLE}_")
    assert f"add table ip {svc_.table}" in op.script and "vmap @services" in op.script
    assert f"add map ip {svc_.table} {svc_.map}" in op.script
    assert f"goto {svc_.chain}" in op.script
    assert [c.name for c in op.elements] == [s.map for s in t.services.values()] + [
        "hairpin"]  # a local task: hairpin masquerade
    assert plan_sandbox(SB, t, t) is None  # applied: the kernel holds exactly this
    assert plan_sandbox(SB, None, t).script == "".join(
        f"delete table ip {x}\n" for x in sorted(t.tables))
    assert plan_sandbox(SB, None, None) is None


def test_one_backend_change_is_elements_of_one_map_only():
    names = {f"s{i}": svc(f"s{i}", vip=f"10.0.0.{100 + i}") for i in range(50)}
    eps = [task(f"10.0.0.{2 + i}", "h2", f"s{i % 50}") for i in range(90)]
    eps.append(task("10.0.0.99", "h1", "s7"))  # this host runs a task: it has a sandbox
    planner = IncrementalPlanner("h1", PREFIX)  # as the agent: states with change hints
    planner.reset({"networks": dict(NETS), "services": names, "published": {}, "health": {},
                   "endpoints": {e.key: e for e in eps}})
    memo: dict[str, NftMemo] = {}
    before = render(planner.state(LB_IPS, ()), CFG, memo)[SB]
    planner.change("endpoints", eps[0].key, None)
    after = render(planner.state(LB_IPS, ()), CFG, memo)[SB]
    assert after is not None and after.base is not None and after.base() is before
    assert len(after.touched) == 1
    op = plan_sandbox(SB, after, before)
    assert op is not None and op.script == ""
    assert len(op.elements) == 1 and op.elements[0].delete and op.elements[0].add
    # the same plan from a full comparison (no hint)
    fresh = render(state(names, eps[1:]), CFG)[SB]
    assert plan_sandbox(SB, fresh, before) == op


def test_removed_service_takes_its_dispatch_chain_and_map():
    services = {"web": svc("web"), "api": svc("api", vip="10.0.0.101")}
    eps = [task("10.0.0.2", "h1", "web"), task("10.0.0.3", "h2", "api")]
    before = render(state(services, eps), CFG)[SB]
    after = render(state({"web": svc("web")}, eps[:1]), CFG)[SB]
    op = plan_sandbox(SB, after, before)
    gone = next(s for s in before.services.values() if s.vip == "10.0.0.101")
    lines = op.script.splitlines()
    if gone.table in after.tables:  # its bucket stays: the service goes piece by piece
        undo = f"delete element ip {gone.table} services {{ 10.0.0.101 . tcp . 80 }}"
        assert undo in lines
        assert lines.index(f"delete chain ip {gone.table} {gone.chain}") > lines.index(undo)
        assert f"delete map ip {gone.table} {gone.map}" in lines
    else:  # its bucket table is left empty: the table goes, with all of it
        assert lines == [f"delete table ip {gone.table}"]
    assert op.elements == ()  # a deleted map takes its elements along


def test_a_bucket_keeps_its_table_while_another_service_is_in_it():
    names = {f"s{i}": svc(f"s{i}", vip=f"10.0.0.{100 + i}") for i in range(40)}
    eps = [task(f"10.0.0.{2 + i}", "h1", f"s{i}") for i in range(40)]
    full = render(state(names, eps), CFG)[SB]
    by_bucket: dict[str, list] = {}
    for x in full.services.values():
        by_bucket.setdefault(x.table, []).append(x)
    table, two = next((k, v) for k, v in by_bucket.items() if len(v) >= 2)
    keep = {n: v for n, v in names.items() if n != "s0"}
    victim = next(n for n, v in names.items()
                  if str(v.vip) == two[0].vip)
    keep = {n: v for n, v in names.items() if n != victim}
    after = render(state(keep, [e for e in eps if e.service != victim]), CFG)[SB]
    op = plan_sandbox(SB, after, full)
    assert f"delete chain ip {table} {two[0].chain}" in op.script
    assert f"delete table ip {table}" not in op.script


def as_json(t: NftSandbox) -> str:
    """The tables as ``nft -j list ruleset`` prints them (format taken from nft 1.0.6),
    with a table of somebody else's."""
    objs: list[dict] = [{"metainfo": {"version": "1.0.6"}},
                        {"table": {"family": "ip", "name": "nat"}},
                        {"chain": {"family": "ip", "table": "nat", "name": "PREROUTING"}},
                        {"table": {"family": "ip", "name": TABLE}},
                        {"set": {"family": "ip", "name": "hairpin", "table": TABLE,
                                 "elem": [{"concat": [a, a]} for a in sorted(t.hairpin)]}},
                        {"chain": {"family": "ip", "table": TABLE, "name": "postrouting"}},
                        {"rule": {"family": "ip", "table": TABLE, "chain": "postrouting",
                                  "comment": f"mn:{t.digest}"}}]
    for k in sorted(t.buckets):
        b = table_of(k)
        mine = [s for s in t.services.values() if s.table == b]
        objs += [{"table": {"family": "ip", "name": b}},
                 {"map": {"family": "ip", "name": "services", "table": b, "map": "verdict",
                          "elem": [[{"concat": [s.vip, s.proto, s.port]},
                                    {"goto": {"target": s.chain}}] for s in mine]}},
                 {"chain": {"family": "ip", "table": b, "name": "prerouting", "type": "nat"}},
                 {"rule": {"family": "ip", "table": b, "chain": "prerouting",
                           "comment": f"mn:{DISPATCH_DIGEST}"}}]
        for s in mine:
            objs.append({"map": {"family": "ip", "name": s.map, "table": b,
                                 "type": "integer", "map": "ipv4_addr . inet_service",
                                 "flags": ["interval"],
                                 "elem": [[{"range": [lo, hi]}, {"concat": [ip, p]}]
                                          for lo, hi, ip, p in s.ranges]}})
            objs.append({"chain": {"family": "ip", "table": b, "name": s.chain}})
            objs.append({"rule": {"family": "ip", "table": b, "chain": s.chain,
                                  "comment": f"mn:{s.digest}", "expr": []}})
    return json.dumps({"nftables": objs})


def test_a_table_read_back_is_adopted_and_damage_is_repaired():
    t = render(state(pubs=[pub(8080, 80, "web")]), CFG)[SB]
    seen = parse_ruleset(as_json(t))
    assert seen is not None and seen == NftSandbox(t.digest, {
        n: type(s)(s.name, s.vip, s.proto, s.port, s.digest, s.ranges)
        for n, s in t.services.items()}, t.hairpin, t.buckets, t.tables)
    assert plan_sandbox(SB, t, seen) is None  # a restart changes nothing
    # a range lost, a stray dispatch element, a hairpin element too many
    data = json.loads(as_json(t))
    for o in data["nftables"]:
        if "map" in o and o["map"]["name"].startswith("be_"):
            o["map"]["elem"] = o["map"]["elem"][1:]
        if "map" in o and o["map"]["name"] == "services":
            o["map"]["elem"].append([{"concat": ["10.0.0.9", "tcp", 1]},
                                     {"goto": {"target": "svc_GONE"}}])
            stray_table = o["map"]["table"]
        if "set" in o:
            o["set"]["elem"].append({"concat": ["10.0.0.77", "10.0.0.77"]})
    op = plan_sandbox(SB, t, parse_ruleset(json.dumps(data)))
    assert f"delete element ip {stray_table} services {{ 10.0.0.9 . tcp . 1 }}" in op.script
    fixed = {c.name: c for c in op.elements}
    svc_map = next(iter(t.services.values())).map
    assert fixed[svc_map].add == ranges_elems(next(iter(t.services.values())).ranges)
    assert fixed["hairpin"].delete and not fixed["hairpin"].add
    assert parse_ruleset(json.dumps({"nftables": [{"metainfo": {}}]})) is None


def test_base_chains_are_rewritten_when_the_lb_address_changes():
    t = render(state(), CFG)[SB]
    other = render(desired("h1", NETS, {"web": svc("web")},
                           [task(f"10.0.0.{i}", f"h{i % 3 + 1}", "web") for i in range(2, 8)],
                           {}, [], PREFIX, {"a": ip_address("10.0.0.251")}), CFG)[SB]
    op = plan_sandbox(SB, other, t)
    assert "snat ip to 10.0.0.251" in op.script and op.elements == ()
    assert f"flush chain ip {TABLE} postrouting" in op.script


class FakeNft:
    def __init__(self) -> None:
        self.scripts: list[tuple[str, str]] = []
        self.elements_sent: list[tuple[str, tuple]] = []

    def script(self, ns, text):
        self.scripts.append((ns, text))

    def elements(self, ns, changes):
        self.elements_sent.append((ns, tuple(changes)))

    def list_ruleset(self, ns):
        return '{"nftables": []}'

    def forget(self, keep):
        pass


class FakeIpt:
    def __init__(self) -> None:
        self.restores: list[tuple[str, str]] = []

    def restore(self, ns, text):
        self.restores.append((ns, text))

    def save(self, ns):
        return ""

    def namespaces(self):
        return [HOST, SB]


def test_backend_keeps_published_ports_in_iptables_and_drops_old_sandbox_chains():
    ipt, nft = FakeIpt(), FakeNft()
    be = NftBackend(ipt, CFG, nft=nft)
    left = Observed({SB: {("nat", "MESHNET-SERVICES"): "X"}},
                    {SB: {Jump("nat", "PREROUTING", "-m comment --comment meshnet -j "
                                                     "MESHNET-SERVICES")}})
    want = state(pubs=[pub(8080, 80, "web")])
    p = be.plan(want, NftObserved(rules=left))
    assert [op.ns for op in p.tables] == [SB]
    assert {r.ns for r in p.rules} == {HOST, SB}
    assert next(r for r in p.rules if r.ns == SB).deleted == (("nat", "MESHNET-SERVICES"),)
    have, skipped = be.apply(p, NftObserved(rules=left))
    assert skipped == [] and nft.scripts[0][0] == SB and nft.elements_sent[0][0] == SB
    assert "MESHNET-INGRESS" in next(t for ns, t in ipt.restores if ns == HOST)
    assert not be.plan(want, have)  # converged: nothing to do
    assert have.tables[SB] is render(want, CFG, be._memo)[SB]
    # an equal state made afresh: no op, but the kernel holds its render (adopted, so the
    # next change is compared against it, service by service)
    again = state(pubs=[pub(8080, 80, "web")])
    p = be.plan(again, have)
    assert not p
    have, _ = be.apply(p, have)
    assert have.tables[SB] is render(again, CFG, be._memo)[SB]


@given(st.lists(st.tuples(st.integers(0, 11), st.booleans()), min_size=1, max_size=25))
def test_patched_renders_equal_fresh_ones(steps):
    """Whatever the order of task changes (local and remote, the same address serving two
    services), the render patched from the last one equals a render from scratch."""
    names = {f"s{i}": svc(f"s{i}", vip=f"10.0.0.{100 + i}") for i in range(6)}
    pool = [task(f"10.0.0.{2 + i}", "h1" if i % 2 == 0 else "h2", f"s{i % 6}")
            for i in range(12)]
    pool[7] = task("10.0.0.2", "h1", "s1", name="again")  # 10.0.0.2 serves s0 and s1
    planner = IncrementalPlanner("h1", PREFIX)
    planner.reset({"networks": dict(NETS), "services": names, "published": {}, "health": {},
                   "endpoints": {pool[0].key: pool[0]}})
    memo: dict[str, NftMemo] = {}
    render(planner.state(LB_IPS, ()), CFG, memo)
    for i, present in steps:
        planner.change("endpoints", pool[i].key, pool[i] if present else None)
        now = planner.state(LB_IPS, ())
        assert render(now, CFG, memo) == render(now, CFG)


@given(st.dictionaries(st.text("ABCDEFGH", min_size=1, max_size=3), st.integers(0, 9)),
       st.lists(st.text("ABCDEFGH", min_size=1, max_size=3)),
       st.dictionaries(st.text("ABCDEFGH", min_size=1, max_size=3), st.integers(0, 9)))
def test_buckets_patch_like_a_dict_and_share_the_rest(start, drop, put):
    def svc_(name, port):
        return NftService(name, "10.0.0.1", "tcp", port, "d", ())
    b = Buckets({k: svc_(k, v) for k, v in start.items()})
    after = b.patched(drop, [svc_(k, v) for k, v in put.items()])
    want = {k: svc_(k, v) for k, v in start.items() if k not in drop}
    want.update({k: svc_(k, v) for k, v in put.items()})
    assert dict(after) == want and len(after) == len(want) and after == want
    assert dict(b) == {k: svc_(k, v) for k, v in start.items()}  # the original is unchanged
    assert sum(x is y for x, y in zip(b._b, after._b, strict=True)) >= Buckets.WIDTH - len(
        set(drop) | set(put))
