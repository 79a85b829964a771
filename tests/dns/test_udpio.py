"""The UDP hot path (meshnet.dns.udpio) over real loopback sockets, driven directly (no
event loop): both the batched (recvmmsg/sendmmsg) and the plain drain."""

from __future__ import annotations

import socket
import sys
from random import Random

import pytest

from meshnet.dns import udpio
from meshnet.dns.config import DnsConfig
from meshnet.dns.responder import Answer, Responder
from meshnet.errors import ConfigError
from tests.dns.helpers import FRONT, cluster, parse, query, rcode, rdatas

MODES = ["plain", pytest.param("batch", marks=pytest.mark.skipif(
    not udpio.Batch.available(), reason="no recvmmsg/sendmmsg"))]


class Rig:
    """A server socket, a client socket, a responder, and drain() in either mode."""

    def __init__(self, mode: str, batch: int = 8, family: int = socket.AF_INET) -> None:
        host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
        self.srv = socket.socket(family, socket.SOCK_DGRAM)
        self.srv.bind((host, 0))
        self.srv.setblocking(False)
        self.cli = socket.socket(family, socket.SOCK_DGRAM)
        self.cli.bind((host, 0))
        self.cli.settimeout(2.0)
        self.dst = self.srv.getsockname()
        self.r = Responder(DnsConfig(), cluster(), Random(1))
        self.batch = udpio.Batch(batch) if mode == "batch" else None
        self.misses: list[tuple[bytes, tuple]] = []
        self.forward_names: set[str] = set()

    def close(self) -> None:
        self.srv.close()
        self.cli.close()

    def on_miss(self, data: bytes, addr: tuple) -> bytes | None:
        self.misses.append((data, addr))
        act = self.r.handle(data, FRONT, "udp")
        return act.data if isinstance(act, Answer) else None

    def drain(self, budget: int = 128) -> tuple[int, int, int]:
        def memo():
            return self.r.memo_for(FRONT, "udp")
        if self.batch is not None:
            return self.batch.drain(self.srv.fileno(), memo, self.on_miss, budget, self.srv)
        return udpio.drain_plain(self.srv, memo, self.on_miss, budget)

    def send(self, *datas: bytes) -> None:
        for d in datas:
            self.cli.sendto(d, self.dst)

    def replies(self, n: int) -> list[bytes]:
        return [self.cli.recvfrom(65535)[0] for _ in range(n)]

    def nothing_pending(self) -> bool:
        self.cli.setblocking(False)
        try:
            self.cli.recvfrom(65535)
        except BlockingIOError:
            return True
        finally:
            self.cli.settimeout(2.0)
        return False


@pytest.fixture(params=MODES)
def rig(request):
    r = Rig(request.param)
    yield r
    r.close()


def test_hits_and_misses_answered_with_their_ids(rig):
    names = ["db", "tasks.web", "api", "nosuch", "web"]
    rig.send(*(query(n, qid=i + 1) for i, n in enumerate(names)))
    assert rig.drain() == (5, 0, 0)
    assert len(rig.misses) == 5
    assert all(addr == rig.cli.getsockname() for _, addr in rig.misses)
    first = {parse(d).header.id: parse(d) for d in rig.replies(5)}
    # the same questions again with new IDs (and more than one batch): all memo hits
    qs = [query(names[i % 5], qid=100 + i) for i in range(20)]
    rig.send(*qs)
    assert rig.drain() == (20, 20, 0)
    assert len(rig.misses) == 5
    got = {parse(d).header.id: parse(d) for d in rig.replies(20)}
    assert sorted(got) == list(range(100, 120))
    for i in range(20):
        rec, ref = got[100 + i], first[i % 5 + 1]
        assert rcode(rec) == rcode(ref) and sorted(rdatas(rec)) == sorted(rdatas(ref))
        assert str(rec.q.qname) == str(ref.q.qname)


def test_task_answers_rotate_on_the_hot_path(rig):
    rig.send(query("tasks.web", qid=0))
    rig.drain()
    rig.replies(1)
    rig.send(*(query("tasks.web", qid=i) for i in range(1, 7)))
    assert rig.drain() == (6, 6, 0)
    orders = [tuple(rdatas(parse(d))) for d in rig.replies(6)]
    assert len(set(orders)) == 6


def test_memo_is_refetched_after_a_miss(rig):
    # a view change between drains: the old memo must not answer
    rig.send(query("tasks.web"))
    rig.drain()
    rig.replies(1)
    rig.r.set_view(cluster(unhealthy=("10.0.1.11", "10.0.1.12")))
    rig.send(query("tasks.web", qid=9), query("tasks.web", qid=10))
    assert rig.drain() == (2, 1, 0)  # first a miss (new memo), then a hit in it
    for d in rig.replies(2):
        assert rdatas(parse(d)) == ["10.0.1.13"]


def test_malformed_goes_to_the_slow_path_formerr_or_nothing(rig):
    bad = b"\x00\x07\x01\x00\x00\x01" + b"\x00" * 6 + b"\x3f"
    junk = b"\x01\x02\x03"
    rig.send(bad, junk, query("db", qid=5))
    assert rig.drain() == (3, 0, 0)
    replies = rig.replies(2)
    assert replies[0][:2] == b"\x00\x07" and replies[0][3] & 0xF == 1  # FORMERR
    assert parse(replies[1]).header.id == 5
    assert rig.nothing_pending()  # the 3-byte datagram was dropped
    assert rig.r.stats["malformed"] == 2


def test_oversized_query_is_cut_and_still_handled(rig):
    big = query("db", qid=6) + b"\x00" * (udpio.RECV_SIZE + 100)
    rig.send(big)
    assert rig.drain() == (1, 0, 0)
    assert len(rig.misses[0][0]) == udpio.RECV_SIZE  # cut, as recvfrom(RECV_SIZE) does
    (reply,) = rig.replies(1)
    assert parse(reply).header.id == 6 and rdatas(parse(reply)) == ["10.0.1.30"]


def test_none_from_on_miss_sends_nothing(rig):
    rig.send(query("www.example.com", qid=3), query("db", qid=4))
    assert rig.drain() == (2, 0, 0)
    (reply,) = rig.replies(1)
    assert parse(reply).header.id == 4  # the forwarded one got no answer here
    assert rig.nothing_pending()


def test_a_failing_slow_path_costs_only_its_own_datagram(rig):
    rig.send(query("db", qid=1))
    rig.drain()  # "db" is now memoised
    rig.replies(1)
    real = rig.on_miss

    def boom(data: bytes, addr: tuple) -> bytes | None:
        if parse(data).header.id == 3:
            raise RuntimeError("a bug")
        return real(data, addr)

    rig.on_miss = boom
    rig.send(query("db", qid=2), query("www.example.com", qid=3), query("db", qid=4),
             query("web", qid=5))
    n, _hits, errors = rig.drain()
    assert (n, errors) == (4, 1)
    assert sorted(parse(d).header.id for d in rig.replies(3)) == [2, 4, 5]
    assert rig.nothing_pending()


def test_budget_bounds_one_drain(rig):
    rig.send(*(query("db", qid=i) for i in range(30)))
    assert rig.drain(budget=12)[0] == 12
    assert rig.drain(budget=12)[0] == 12
    assert rig.drain(budget=12)[0] == 6
    assert rig.drain(budget=12)[0] == 0
    assert sorted(parse(d).header.id for d in rig.replies(30)) == list(range(30))


def test_answer_larger_than_a_send_slot_still_goes_out(rig):
    huge = b"\x00" * 10 + b"X" * (udpio.SEND_SLOT + 500)
    q = query("db", qid=1)
    rig.r.handle(q, FRONT)
    rig.r.memo_for(FRONT)[q[2:]] = huge
    rig.send(query("db", qid=0x4242))
    assert rig.drain() == (1, 1, 0)
    (reply,) = rig.replies(1)
    assert reply == b"\x42\x42" + huge


@pytest.mark.parametrize("mode", MODES)
def test_ipv6_client_address(mode):
    try:
        r = Rig(mode, family=socket.AF_INET6)
    except OSError:
        pytest.skip("no IPv6 loopback")
    try:
        r.send(query("db", qid=1), query("nosuch", qid=2))
        assert r.drain() == (2, 0, 0)
        assert [a[:2] for _, a in r.misses] == [r.cli.getsockname()[:2]] * 2
        assert sorted(parse(d).header.id for d in r.replies(2)) == [1, 2]
    finally:
        r.close()


def test_decode_sockaddr_v4():
    raw = socket.AF_INET.to_bytes(2, sys.byteorder) + (5353).to_bytes(2, "big") + \
        socket.inet_aton("10.1.2.3") + b"\x00" * 8
    assert udpio.decode_sockaddr(raw) == ("10.1.2.3", 5353)


def test_batch_size_must_be_positive():
    if not udpio.Batch.available():
        pytest.skip("no recvmmsg/sendmmsg")
    with pytest.raises(ValueError):
        udpio.Batch(0)


@pytest.mark.parametrize("bad", [-1, 1025, 1.5])
def test_udp_batch_config_is_validated(bad):
    with pytest.raises(ConfigError):
        DnsConfig(udp_batch=bad)
