"""The responder's memo fast path: ID splicing, pre-encoded orders of task answers,
invalidation on view change, and what stays on the slow path."""

from __future__ import annotations

import math
from collections import Counter
from random import Random

import dnslib
import pytest

from meshnet.dns import responder as rmod
from meshnet.dns.config import DnsConfig
from meshnet.dns.records import RecordsView
from meshnet.dns.responder import Answer, Responder, render_hit, variants
from meshnet.model import Endpoint, Network, Service
from tests.dns.helpers import FRONT, cluster, parse, query, rcode, rdatas

N = frozenset({"n"})


def _tasks_view(n: int, first: int = 2) -> RecordsView:
    eps = [Endpoint("n", f"10.9.{(i + first) // 250}.{(i + first) % 250 + 1}",
                    "02:00:00:00:00:01", "h", f"t{i}", service="s") for i in range(n)]
    return RecordsView.build([Network("n", 9, "10.9.0.0/16")], eps,
                             [Service("s", "n", mode="dnsrr")])


def _hit(r: Responder, scope, data: bytes):
    return r.memo_for(scope, "udp").get(data[2:])


@pytest.mark.parametrize("name", ["db", "tasks.web", "api", "nosuch"])
def test_memo_hit_splices_the_query_id(name):
    r = Responder(DnsConfig(), cluster(), Random(3))
    first = r.handle(query(name, qid=1), FRONT)
    hit = _hit(r, FRONT, query(name, qid=1))
    assert hit is not None
    for qid in (0, 2, 0xBEEF, 0xFFFF):
        out = render_hit(qid.to_bytes(2, "big"), hit)
        assert out is not None and out[:2] == qid.to_bytes(2, "big")
        rec = parse(out)
        assert rcode(rec) == rcode(parse(first.data))
        assert sorted(rdatas(rec)) == sorted(rdatas(parse(first.data)))
        # what handle() answers from the memo is the same answer with the same ID
        via = r.handle(query(name, qid=qid), FRONT)
        assert isinstance(via, Answer) and via.data[:2] == qid.to_bytes(2, "big")


def test_static_hit_is_bytes_dynamic_hit_is_a_cycle_tuple():
    r = Responder(DnsConfig(), cluster())
    r.handle(query("db"), FRONT)
    r.handle(query("tasks.web"), FRONT)
    assert _hit(r, FRONT, query("db")).__class__ is bytes
    assert _hit(r, FRONT, query("tasks.web")).__class__ is tuple


def test_task_answers_cycle_through_every_order():
    r = Responder(DnsConfig(), cluster(), Random(11))
    orders = [tuple(rdatas(parse(r.handle(query("tasks.web", qid=i), FRONT).data)))
              for i in range(12)]
    # 3 tasks: all 3! orders, each once per cycle of 6, then the same cycle again
    assert len(set(orders[:6])) == 6 and orders[6:] == orders[:6]
    assert all(sorted(o) == ["10.0.1.11", "10.0.1.12", "10.0.1.13"] for o in orders)


def test_case_and_edns_variants_share_one_rotation():
    r = Responder(DnsConfig(), cluster(), Random(5))
    names = ["tasks.web", "TASKS.WEB", "Tasks.Web"]
    orders = []
    for i in range(6):
        data = r.handle(query(names[i % 3], edns=1232 if i % 2 else None), FRONT).data
        rec = parse(data)
        assert str(rec.q.qname) == names[i % 3] + "."  # the question's case is echoed
        assert bool(rec.ar) == bool(i % 2)  # OPT only when asked with EDNS
        orders.append(tuple(rdatas(rec)))
    assert len(set(orders)) == 6


@pytest.mark.parametrize("n", [2, 3, 4])
def test_variants_small_sets_are_all_permutations(n):
    rrs = tuple(bytes([i]) * 16 for i in range(n))
    vs = variants(rrs, n, Random(1))
    assert len(vs) == math.factorial(n) == len(set(vs))


@pytest.mark.parametrize(("n", "k"), [(5, 5), (7, 3), (24, 24), (25, 10), (32, 29)])
def test_variants_larger_sets_put_each_address_first_equally_often(n, k):
    rrs = tuple(bytes([i]) * 16 for i in range(n))
    vs = variants(rrs, k, Random(2))
    assert len(vs) >= rmod.VARIANTS and len(vs) % n == 0
    assert all(len(v) == 16 * k for v in vs)
    firsts = Counter(v[:16] for v in vs)
    assert set(firsts) == set(rrs) and len(set(firsts.values())) == 1
    # more than one successor per address: not a single fixed ring
    succ = {v[:16]: set() for v in vs}
    for v in vs:
        succ[v[:16]].add(v[16:32])
    if k > 1 and len(vs) > n:
        assert any(len(s) > 1 for s in succ.values())


def test_truncated_task_answers_rotate_within_the_limit():
    n = rmod.VARIANT_MAX_RRS
    r = Responder(DnsConfig(), _tasks_view(n), Random(4))
    firsts = Counter()
    seen_all: set[str] = set()
    cycle_len = len(variants(tuple(bytes([i]) for i in range(n)), 1, Random(0)))
    for i in range(cycle_len):
        data = r.handle(query("tasks.s", qid=i), N).data
        assert len(data) <= 512
        rec = parse(data)
        assert rec.header.tc and 0 < len(rec.rr) < n
        firsts[str(rec.rr[0].rdata)] += 1
        seen_all |= set(rdatas(rec))
    assert len(firsts) == n and len(set(firsts.values())) == 1
    assert len(seen_all) == n


def test_more_tasks_than_variant_limit_are_sampled_per_query():
    n = rmod.VARIANT_MAX_RRS + 1
    r = Responder(DnsConfig(), _tasks_view(n), Random(6))
    r.handle(query("tasks.s", "A", edns=4096), N)
    hit = _hit(r, N, query("tasks.s", "A", edns=4096))
    assert hit.__class__ not in (bytes, tuple)
    assert render_hit(b"\x00\x01", hit) is None  # an adapter hands it to handle()
    orders = {tuple(rdatas(parse(r.handle(query("tasks.s", edns=4096, qid=i), N).data)))
              for i in range(5)}
    assert len(orders) == 5 and all(len(o) == n for o in orders)


def test_view_change_replaces_the_memo_and_rotations():
    r = Responder(DnsConfig(), cluster(), Random(8))
    r.handle(query("tasks.web"), FRONT)
    old_memo = r.memo_for(FRONT)
    assert old_memo
    r.set_view(cluster(unhealthy=("10.0.1.12",)))
    assert r.memo_for(FRONT) is not old_memo and not r.memo_for(FRONT)
    orders = {tuple(rdatas(parse(r.handle(query("tasks.web", qid=i), FRONT).data)))
              for i in range(4)}
    assert {tuple(sorted(o)) for o in orders} == {("10.0.1.11", "10.0.1.13")}
    assert len(orders) == 2
    # the memo entry made from the new view is a hit with the new addresses
    hit = _hit(r, FRONT, query("tasks.web"))
    assert sorted(rdatas(parse(render_hit(b"\x00\x09", hit)))) == ["10.0.1.11", "10.0.1.13"]


def test_malformed_queries_are_not_memoised():
    r = Responder(DnsConfig(), cluster())
    bad = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05ab"
    for _ in range(2):
        resp = r.handle(bad, FRONT)
        assert isinstance(resp, Answer) and resp.data[3] & 0xF == 1
    assert _hit(r, FRONT, bad) is None
    assert r.stats["malformed"] == 2 and r.stats["memo_hits"] == 0


def test_resolved_bodies_are_bounded():
    cfg = DnsConfig(memo_entries=4)
    r = Responder(cfg, cluster())
    limit = rmod.BODIES_PER_MEMO * cfg.memo_entries
    for i in range(3 * limit):
        r.handle(query(f"host{i}.example.com"), FRONT)
        assert len(r._bodies) <= limit
    # still answering correctly afterwards
    assert rdatas(parse(r.handle(query("db"), FRONT).data)) == ["10.0.1.30"]


def test_memo_hits_are_counted():
    r = Responder(DnsConfig(), cluster())
    q = query("db")
    r.handle(q, FRONT)
    assert r.stats["memo_hits"] == 0
    r.handle(q, FRONT)
    r.handle(dnslib.DNSRecord.parse(q).pack(), FRONT)  # same bytes
    assert r.stats["memo_hits"] == 2
