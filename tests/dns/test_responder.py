"""Table-driven responder tests: names, aliases, services, tasks, SRV, PTR, scoping."""

from __future__ import annotations

from random import Random

import dnslib
import pytest

from meshnet.dns.config import DnsConfig
from meshnet.dns.responder import Answer, Drop, Forward, Responder
from tests.dns.helpers import BACK, BOTH, FRONT, cluster, parse, query, rcode, rdatas

V6 = frozenset({"v6net"})

CASES = [
    # scope, name, type, rcode, sorted answers (None: forwarded)
    (FRONT, "db", "A", "NOERROR", ["10.0.1.30"]),
    (FRONT, "DB", "A", "NOERROR", ["10.0.1.30"]),
    (FRONT, "database", "A", "NOERROR", ["10.0.1.30"]),
    (FRONT, "pg", "A", "NOERROR", ["10.0.1.30"]),
    (FRONT, "db.front", "A", "NOERROR", ["10.0.1.30"]),
    (FRONT, "Db.FrOnT", "A", "NOERROR", ["10.0.1.30"]),
    (FRONT, "web", "A", "NOERROR", ["10.0.1.100"]),
    (FRONT, "web.front", "A", "NOERROR", ["10.0.1.100"]),
    (FRONT, "tasks.web", "A", "NOERROR", ["10.0.1.11", "10.0.1.12", "10.0.1.13"]),
    (FRONT, "tasks.web.front", "A", "NOERROR", ["10.0.1.11", "10.0.1.12", "10.0.1.13"]),
    (FRONT, "api", "A", "NOERROR", ["10.0.1.21", "10.0.1.22"]),
    (FRONT, "tasks.api", "A", "NOERROR", ["10.0.1.21", "10.0.1.22"]),
    (FRONT, "web.1", "A", "NOERROR", ["10.0.1.11"]),
    # NODATA: known name, no record of that type
    (FRONT, "db", "AAAA", "NOERROR", []),
    (FRONT, "db", "MX", "NOERROR", []),
    (FRONT, "web", "TXT", "NOERROR", []),
    (V6, "six", "AAAA", "NOERROR", ["fd00::5"]),
    (V6, "six", "A", "NOERROR", []),
    # NXDOMAIN: ours but unknown
    (FRONT, "nosuch", "A", "NXDOMAIN", []),
    (FRONT, "tasks.nosuch", "A", "NXDOMAIN", []),
    (FRONT, "tasks.nosuch.example.com", "A", "NXDOMAIN", []),
    (FRONT, "x.front", "A", "NXDOMAIN", []),
    (FRONT, "_81._tcp.web", "SRV", "NXDOMAIN", []),
    # scoping: back's names do not exist for a front-only container
    (FRONT, "cache", "A", "NXDOMAIN", []),
    (FRONT, "cache.back", "A", "NXDOMAIN", []),
    (BACK, "cache", "A", "NOERROR", ["10.0.2.5"]),
    (BACK, "db", "A", "NXDOMAIN", []),
    (BOTH, "web.1", "A", "NOERROR", ["10.0.1.11", "10.0.2.6"]),
    (BOTH, "web.1.back", "A", "NOERROR", ["10.0.2.6"]),
    # SRV
    (FRONT, "_80._tcp.web", "SRV", "NOERROR", ["0 0 80 web."]),
    (FRONT, "_443._tcp.web.front", "SRV", "NOERROR", ["0 0 443 web.front."]),
    (FRONT, "_8080._tcp.api", "SRV", "NOERROR", ["0 1 8080 api.1.", "0 1 8080 api.2."]),
    (FRONT, "_80._tcp.web", "A", "NOERROR", []),
    (FRONT, "_80._udp.web", "SRV", "NXDOMAIN", []),
    # PTR
    (FRONT, "30.1.0.10.in-addr.arpa", "PTR", "NOERROR", ["db.front."]),
    (FRONT, "100.1.0.10.in-addr.arpa", "PTR", "NOERROR", ["web.front."]),
    (FRONT, "99.1.0.10.in-addr.arpa", "PTR", "NXDOMAIN", []),
    (FRONT, "5.2.0.10.in-addr.arpa", "PTR", "NXDOMAIN", []),  # not in scope, still ours
    (BACK, "5.2.0.10.in-addr.arpa", "PTR", "NOERROR", ["cache.back."]),
    (V6, "5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa", "PTR",
     "NOERROR", ["six.v6net."]),
    # forwarded: external names
    (FRONT, "www.example.com", "A", None, None),
    (FRONT, "8.8.8.8.in-addr.arpa", "PTR", None, None),
    (FRONT, ".", "NS", None, None),
    # internal network: no forwarding, REFUSED
    (BACK, "www.example.com", "A", "REFUSED", []),
]


@pytest.mark.parametrize(("scope", "name", "qtype", "want_rcode", "want"), CASES)
def test_answers(scope, name, qtype, want_rcode, want):
    r = Responder(DnsConfig(), cluster(), Random(1))
    for _ in range(2):  # second time: from the memo
        act = r.handle(query(name, qtype), scope, "udp", 0.0)
        if want_rcode is None:
            assert isinstance(act, Forward), act
            continue
        assert isinstance(act, Answer), act
        rec = parse(act.data)
        assert rec.header.id == 0x1234
        assert rcode(rec) == want_rcode
        assert sorted(rdatas(rec)) == want
        assert str(rec.q.qname).rstrip(".").lower() == name.rstrip(".").lower() or name == "."
        if want_rcode in ("NOERROR", "NXDOMAIN"):
            assert rec.header.aa
        assert rec.header.ra == (scope != BACK)


def test_question_case_is_echoed():
    r = Responder(DnsConfig(), cluster())
    for name in ("DaTaBaSe", "database", "DATABASE"):
        rec = parse(r.handle(query(name), FRONT).data)
        assert str(rec.q.qname) == name + "."


def test_ttls_short_for_tasks_long_for_names():
    cfg = DnsConfig(name_ttl=600, task_ttl=5)
    r = Responder(cfg, cluster())
    assert {x.ttl for x in parse(r.handle(query("db"), FRONT).data).rr} == {600}
    assert {x.ttl for x in parse(r.handle(query("tasks.web"), FRONT).data).rr} == {5}
    assert {x.ttl for x in parse(r.handle(query("api"), FRONT).data).rr} == {5}
    assert {x.ttl for x in parse(r.handle(query("web"), FRONT).data).rr} == {600}


def test_tasks_are_shuffled_per_query():
    r = Responder(DnsConfig(), cluster(), Random(7))
    orders = {tuple(rdatas(parse(r.handle(query("tasks.web"), FRONT).data))) for _ in range(60)}
    assert len(orders) >= 4  # 6 permutations exist
    assert all(sorted(o) == ["10.0.1.11", "10.0.1.12", "10.0.1.13"] for o in orders)


def test_unhealthy_task_leaves_tasks_dnsrr_and_srv_but_keeps_its_name():
    r = Responder(DnsConfig(), cluster(unhealthy=("10.0.1.12", "10.0.1.21")))
    assert sorted(rdatas(parse(r.handle(query("tasks.web"), FRONT).data))) == \
        ["10.0.1.11", "10.0.1.13"]
    assert rdatas(parse(r.handle(query("api"), FRONT).data)) == ["10.0.1.22"]
    assert rdatas(parse(r.handle(query("_8080._tcp.api", "SRV"), FRONT).data)) == \
        ["0 1 8080 api.2."]
    assert rdatas(parse(r.handle(query("web.2"), FRONT).data)) == ["10.0.1.12"]


def test_all_tasks_unhealthy_is_nodata_not_nxdomain():
    r = Responder(DnsConfig(), cluster(unhealthy=("10.0.1.21", "10.0.1.22")))
    for name in ("api", "tasks.api"):
        rec = parse(r.handle(query(name), FRONT).data)
        assert rcode(rec) == "NOERROR" and rec.rr == []


def test_view_change_invalidates_cached_answers():
    r = Responder(DnsConfig(), cluster())
    assert len(parse(r.handle(query("tasks.web"), FRONT).data).rr) == 3
    gen = r.generation
    r.set_view(cluster(unhealthy=("10.0.1.11",)))
    assert r.generation == gen + 1
    assert len(parse(r.handle(query("tasks.web"), FRONT).data).rr) == 2


def test_srv_additional_section_has_target_addresses():
    r = Responder(DnsConfig(), cluster())
    rec = parse(r.handle(query("_8080._tcp.api", "SRV"), FRONT).data)
    assert sorted((str(a.rname), str(a.rdata)) for a in rec.ar) == [
        ("api.1.", "10.0.1.21"), ("api.2.", "10.0.1.22")]


def _big_view(n: int):
    from meshnet.dns.records import RecordsView
    from meshnet.model import Endpoint, Network, Service
    eps = [Endpoint("n", f"10.9.{i // 250}.{i % 250 + 2}", "02:00:00:00:00:01", "h", f"t{i}",
                    service="big") for i in range(n)]
    return RecordsView.build([Network("n", 9, "10.9.0.0/16")], eps,
                             [Service("big", "n", mode="dnsrr")])


@pytest.mark.parametrize(("transport", "edns", "limit"), [
    ("udp", None, 512), ("udp", 1232, 1232), ("udp", 4096, 1232), ("udp", 600, 600),
    ("tcp", None, 65535)])
def test_truncation(transport, edns, limit):
    r = Responder(DnsConfig(edns_udp_size=1232), _big_view(300))
    data = r.handle(query("tasks.big", edns=edns), frozenset({"n"}), transport).data
    assert len(data) <= limit
    rec = parse(data)
    if transport == "tcp":
        assert not rec.header.tc and len(rec.rr) == 300
    else:
        assert rec.header.tc
        assert len(rec.rr) == (limit - 12 - len("tasks.big") - 2 - 4 - (11 if edns else 0)) // 16
    if edns:
        assert rec.ar and rec.ar[0].rtype == dnslib.QTYPE.OPT


def test_edns_is_answered_with_opt_and_badvers():
    r = Responder(DnsConfig(), cluster())
    rec = parse(r.handle(query("db", edns=4096), FRONT).data)
    assert rec.ar[0].rtype == dnslib.QTYPE.OPT and rec.ar[0].rclass == 1232
    q = dnslib.DNSRecord.question("db")
    q.add_ar(dnslib.EDNS0(version=1))
    rec = parse(r.handle(bytes(q.pack()), FRONT).data)
    assert (rec.ar[0].ttl >> 24) == 1  # BADVERS upper bits


def test_malformed_formerr_or_drop():
    r = Responder(DnsConfig(), cluster())
    assert isinstance(r.handle(b"\x01\x02\x03", FRONT), Drop)
    resp = r.handle(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05ab", FRONT)
    assert isinstance(resp, Answer) and resp.data[:2] == b"\x12\x34"
    assert resp.data[3] & 0xF == 1  # FORMERR
    # a response sent to us is dropped (no reflection)
    assert isinstance(r.handle(b"\x12\x34\x81\x80" + b"\x00" * 8, FRONT), Drop)
    # opcode NOTIFY: NOTIMP
    resp = r.handle(b"\x12\x34\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00", FRONT)
    assert resp.data[3] & 0xF == 4
    assert r.stats["malformed"] == 4


def test_compressed_question_falls_back_to_dnslib():
    # question name given as a pointer into itself is invalid; a pointer to a prior name
    # cannot exist in a one-question query, so check a query with an answer RR instead
    q = dnslib.DNSRecord.question("db")
    q.add_answer(dnslib.RR("db", rdata=dnslib.A("1.2.3.4")))
    r = Responder(DnsConfig(), cluster())
    rec = parse(r.handle(bytes(q.pack()), FRONT).data)
    assert rdatas(rec) == ["10.0.1.30"]


def test_memo_is_bounded():
    r = Responder(DnsConfig(memo_entries=8), cluster())
    for i in range(50):
        r.handle(query("db", qid=i, edns=512 + i), FRONT)
    assert len(r.memo_for(FRONT)) <= 8
