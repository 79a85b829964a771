"""Forwarder state machine with virtual time: no sockets, no sleeps."""

from __future__ import annotations

from random import Random

import dnslib
import pytest

from meshnet.dns import wire
from meshnet.dns.config import DnsConfig
from meshnet.dns.forwarder import (
    Forwarder,
    Reply,
    SendTcp,
    SendUdp,
    Upstream,
    parse_resolv_conf,
    parse_upstream,
)
from tests.dns.helpers import parse, query, rcode, rdatas

CFG = DnsConfig(attempt_timeout=2.0, hedge_after=0.15, query_timeout=5.0,
                dead_backoff_min=1.0, dead_backoff_max=8.0, cache_entries=4)
UPS = [Upstream("192.0.2.1"), Upstream("192.0.2.2"), Upstream("192.0.2.3")]


def fwd(**kw) -> Forwarder:
    return Forwarder(list(kw.pop("ups", UPS)), CFG.replace(**kw) if kw else CFG, Random(3))


def submit(f: Forwarder, name: str, now: float, client: object = "c", qid: int = 0x4242,
           qtype: str = "A", limit: int = 512):
    data = query(name, qtype, qid=qid)
    return f.submit(data, wire.parse_query(data), client, limit, now)


def answer_to(send: SendUdp | SendTcp, ip: str = "198.51.100.7", ttl: int = 60,
              rc: int = 0, tc: bool = False, extra: int = 0) -> bytes:
    q = dnslib.DNSRecord.parse(send.data)
    a = q.reply()
    a.header.rcode = rc
    a.header.tc = int(tc)
    if rc == 0 and not tc:
        a.add_answer(dnslib.RR(q.q.qname, rdata=dnslib.A(ip), ttl=ttl))
        for i in range(extra):
            a.add_answer(dnslib.RR(q.q.qname, rdata=dnslib.A(f"198.51.{i // 250}.{i % 250}"),
                                   ttl=ttl))
    return bytes(a.pack())


def sends(actions) -> list[SendUdp]:
    return [a for a in actions if isinstance(a, SendUdp)]


def replies(actions) -> list[Reply]:
    return [a for a in actions if isinstance(a, Reply)]


def test_forward_and_reply_restores_client_id_and_caches():
    f = fwd()
    out = submit(f, "www.example.com", 0.0, qid=0x1111)
    (s,) = sends(out)
    assert s.upstream == 0 and s.data[2:] == query("www.example.com", qid=0)[2:]
    (r,) = replies(f.on_udp(0, answer_to(s), 0.01))
    rec = parse(r.data)
    assert rec.header.id == 0x1111 and rdatas(rec) == ["198.51.100.7"]
    assert f.inflight == 0
    # cached: no upstream traffic; TTL aged
    out = submit(f, "WWW.example.com", 30.2, qid=0x2222)
    (r,) = replies(out)
    rec = parse(r.data)
    assert rec.header.id == 0x2222 and rec.rr[0].ttl == 30
    assert str(rec.q.qname) == "WWW.example.com."  # the client's own case
    assert f.stats["cache_hits"] == 1
    # expired
    assert sends(submit(f, "www.example.com", 61.0))


def test_reply_with_wrong_id_upstream_or_question_is_dropped():
    f = fwd()
    (s,) = sends(submit(f, "a.example", 0.0))
    good = answer_to(s)
    bad_id = bytes([good[0] ^ 1]) + good[1:]
    assert f.on_udp(0, bad_id, 0.01) == []
    assert f.on_udp(1, good, 0.01) == []  # right id, wrong upstream
    other = answer_to(SendUdp(0, s.data[:2] + query("b.example")[2:]))
    assert f.on_udp(0, other, 0.01) == []
    assert f.stats["unmatched"] == 3
    assert replies(f.on_udp(0, good, 0.02))


def test_dead_upstream_is_skipped_without_waiting_and_recovery_is_probed():
    f = fwd()
    (s0,) = sends(submit(f, "q1.example", 0.0, client="c1"))
    assert s0.upstream == 0
    # no answer: at hedge_after the next upstream is asked as well
    hedge = sends(f.tick(0.15))
    assert [s.upstream for s in hedge] == [1]
    (r,) = replies(f.on_udp(1, answer_to(hedge[0]), 0.17))
    assert r.client == "c1"
    # upstream 0 is now suspect: new queries go to 1 at once
    (s,) = sends(submit(f, "q2.example", 0.2))
    assert s.upstream == 1
    replies(f.on_udp(1, answer_to(s), 0.21))
    # the first exchange times out: upstream 0 is dead for the backoff
    f.tick(2.0)
    assert f.is_dead(0, 2.0)
    (s,) = sends(submit(f, "q3.example", 2.1))
    assert s.upstream == 1
    f.on_udp(1, answer_to(s), 2.11)
    # backoff (1 s) over: a query goes to 1 and a probe copy to 0, in parallel
    out = sends(submit(f, "q4.example", 3.5))
    assert sorted(s.upstream for s in out) == [0, 1]
    assert f.stats["probes"] == 1
    probe = next(s for s in out if s.upstream == 0)
    replies(f.on_udp(0, answer_to(probe), 3.51))  # 0 answers: alive again
    assert not f.is_dead(0, 3.6)
    (s,) = sends(submit(f, "q5.example", 3.6))
    assert s.upstream == 0


def test_icmp_error_fails_over_at_once():
    f = fwd()
    (s,) = sends(submit(f, "x.example", 0.0))
    out = f.on_udp_error(0, 0.001)
    (s1,) = sends(out)
    assert s1.upstream == 1
    assert f.is_dead(0, 0.5)
    assert replies(f.on_udp(1, answer_to(s1), 0.002))


def test_dead_backoff_doubles_and_is_capped():
    f = fwd(ups=[Upstream("192.0.2.1")])
    now = 0.0
    backoffs = []
    for _ in range(6):
        f.on_udp_error(0, now)
        backoffs.append(f.upstreams[0].dead_until - now)
    assert backoffs == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_all_dead_still_tries_one_then_servfail_on_deadline():
    f = fwd(ups=[Upstream("192.0.2.1")])
    f.on_udp_error(0, 0.0)
    assert sends(submit(f, "z.example", 0.1, client="c"))  # best effort
    out = []
    t = 0.1
    while not replies(out) and t < 10:
        t += 0.5
        out = f.tick(t)
    (r,) = replies(out)
    assert rcode(parse(r.data)) == "SERVFAIL" and t <= 5.2
    assert f.inflight == 0 and f.next_deadline() == float("inf")


@pytest.mark.parametrize("bad", [wire.SERVFAIL, wire.REFUSED])
def test_servfail_or_refused_moves_to_next_upstream(bad):
    f = fwd()
    (s,) = sends(submit(f, "y.example", 0.0))
    (s1,) = sends(f.on_udp(0, answer_to(s, rc=bad), 0.01))
    assert s1.upstream == 1
    (r,) = replies(f.on_udp(1, answer_to(s1), 0.02))
    assert rcode(parse(r.data)) == "NOERROR"


def test_last_bad_answer_is_relayed_when_all_fail():
    f = fwd(ups=UPS[:2])
    (s,) = sends(submit(f, "y.example", 0.0))
    (s1,) = sends(f.on_udp(0, answer_to(s, rc=wire.SERVFAIL), 0.01))
    (r,) = replies(f.on_udp(1, answer_to(s1, rc=wire.REFUSED), 0.02))
    assert rcode(parse(r.data)) == "REFUSED"


def test_truncated_udp_answer_is_retried_over_tcp():
    f = fwd()
    (s,) = sends(submit(f, "big.example", 0.0, limit=4096))
    out = f.on_udp(0, answer_to(s, tc=True), 0.01)
    (t,) = [a for a in out if isinstance(a, SendTcp)]
    assert t.upstream == 0 and t.data[2:] == s.data[2:]
    full = answer_to(t, extra=100)
    (r,) = replies(f.on_tcp(t.token, full, 0.05))
    rec = parse(r.data)
    # 101 A records do not fit 4096? they do (~1.7 KB): whole answer
    assert len(rec.rr) == 101 and not rec.header.tc
    # a UDP client with a 512-byte limit gets TC
    (s,) = sends(submit(f, "big2.example", 1.0, limit=512))
    (t,) = [a for a in f.on_udp(0, answer_to(s, tc=True), 1.01) if isinstance(a, SendTcp)]
    (r,) = replies(f.on_tcp(t.token, answer_to(t, extra=100), 1.05))
    rec = parse(r.data)
    assert rec.header.tc and len(r.data) <= 512


def test_tcp_failure_tries_next_upstream():
    f = fwd()
    (s,) = sends(submit(f, "big.example", 0.0))
    (t,) = [a for a in f.on_udp(0, answer_to(s, tc=True), 0.01) if isinstance(a, SendTcp)]
    (s1,) = sends(f.on_tcp(t.token, None, 0.5))
    assert s1.upstream == 1


def test_identical_queries_in_flight_are_coalesced():
    f = fwd()
    (s,) = sends(submit(f, "same.example", 0.0, client="a", qid=1))
    assert submit(f, "same.example", 0.01, client="b", qid=2) == []
    assert f.inflight == 2
    rs = replies(f.on_udp(0, answer_to(s), 0.02))
    assert sorted((r.client, parse(r.data).header.id) for r in rs) == [("a", 1), ("b", 2)]
    assert f.inflight == 0


def test_inflight_bound_gives_servfail_not_unbounded_memory():
    f = fwd(max_inflight=3)
    for i in range(3):
        assert sends(submit(f, f"n{i}.example", 0.0))
    (r,) = replies(submit(f, "n9.example", 0.0))
    assert rcode(parse(r.data)) == "SERVFAIL" and f.stats["overloaded"] == 1


def test_cache_is_lru_bounded_and_negative_ttl_capped():
    f = fwd()
    for i in range(10):
        (s,) = sends(submit(f, f"c{i}.example", 0.0))
        f.on_udp(0, answer_to(s), 0.0)
    assert f.cache_size()[0] == 4
    # NXDOMAIN with SOA minimum 3600 is cached for cache_neg_ttl (30) at most
    (s,) = sends(submit(f, "neg.example", 100.0))
    q = dnslib.DNSRecord.parse(s.data)
    a = q.reply()
    a.header.rcode = 3
    a.add_auth(dnslib.RR("example", dnslib.QTYPE.SOA, ttl=3600, rdata=dnslib.SOA(
        "ns.example", "h.example", (1, 2, 3, 4, 3600))))
    f.on_udp(0, bytes(a.pack()), 100.0)
    assert replies(submit(f, "neg.example", 129.0))
    assert sends(submit(f, "neg.example", 131.0))


def test_garbage_from_upstream_is_counted_not_raised():
    f = fwd()
    submit(f, "g.example", 0.0)
    for junk in (b"", b"\x00", b"\xff" * 11, b"\xff" * 40):
        assert f.on_udp(0, junk, 0.01) == []


def test_parse_resolv_conf():
    text = """# comment
nameserver 127.0.0.53
nameserver 127.0.0.11
nameserver 10.0.0.2
nameserver fe80::1%eth0
nameserver 10.0.0.2
search example.com
nameserver not-an-ip
"""
    assert parse_resolv_conf(text) == [Upstream("10.0.0.2"), Upstream("fe80::1")]
    assert parse_resolv_conf(text, include_loopback=True)[0] == Upstream("127.0.0.53")


def test_parse_upstream():
    assert parse_upstream("1.2.3.4") == Upstream("1.2.3.4", 53)
    assert parse_upstream("1.2.3.4:5353") == Upstream("1.2.3.4", 5353)
    assert parse_upstream("[::1]:53") == Upstream("::1", 53)
    assert parse_upstream("2001:db8::1") == Upstream("2001:db8::1", 53)
    with pytest.raises(ValueError):
        parse_upstream("nope")
