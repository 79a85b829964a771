"""Hypothesis: the wire parser, the responder and the forwarder never raise on peer bytes."""

from __future__ import annotations

from random import Random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshnet.dns import wire
from meshnet.dns.config import DnsConfig
from meshnet.dns.forwarder import Forwarder, Upstream
from meshnet.dns.responder import Answer, Drop, Forward, Responder
from tests.dns.helpers import BOTH, FRONT, cluster, query

VIEW = cluster()
SEEDS = [query(n, t, edns=e) for n, t, e in [
    ("db", "A", None), ("tasks.web", "A", 1232), ("_80._tcp.web", "SRV", None),
    ("30.1.0.10.in-addr.arpa", "PTR", 4096), ("www.example.com", "AAAA", None),
    ("api.front", "ANY", 512)]]
FAST = settings(max_examples=700, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


@st.composite
def mutated(draw):
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.integers(0, 3))
        i = draw(st.integers(0, max(0, len(data) - 1)))
        if op == 0 and data:
            data[i] = draw(st.integers(0, 255))
        elif op == 1:
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == 2 and data:
            del data[i:i + draw(st.integers(1, 8))]
        else:
            data = data[:i]
    return bytes(data)


def _check(r: Responder, data: bytes) -> None:
    for transport in ("udp", "tcp"):
        act = r.handle(data, FRONT, transport, 0.0)
        assert isinstance(act, Answer | Forward | Drop)
        if isinstance(act, Answer):
            assert act.data[:2] == data[:2] and act.data[2] & 0x80
            if transport == "udp":
                assert len(act.data) <= 4096


@FAST
@given(st.binary(max_size=300))
def test_random_bytes(data):
    try:
        wire.parse_query(data)
    except wire.WireError:
        pass
    _check(Responder(DnsConfig(), VIEW), data)


@FAST
@given(mutated())
def test_mutated_queries(data):
    try:
        wire.parse_query(data)
    except wire.WireError:
        pass
    r = Responder(DnsConfig(), VIEW)
    _check(r, data)
    _check(r, data)  # memo path


@FAST
@given(mutated(), st.binary(max_size=200))
def test_forwarder_survives_garbage_replies(q, junk):
    f = Forwarder([Upstream("192.0.2.1")], DnsConfig(), Random(0))
    r = Responder(DnsConfig(), VIEW)
    act = r.handle(q, BOTH, "udp", 0.0)
    if isinstance(act, Forward):
        out = f.submit(act.query, act.question, "c", act.limit, 0.0)
        for a in out:
            if hasattr(a, "data") and len(a.data) >= 2:
                f.on_udp(0, a.data[:2] + junk, 0.01)  # right ID, garbage after it
    f.on_udp(0, junk, 0.02)
    f.on_tcp(1, junk, 0.03)
    f.tick(100.0)
    assert f.inflight == 0


@pytest.mark.slow
@settings(max_examples=20_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(mutated(), st.binary(max_size=600)))
def test_large_run(data):  # in make test; pytest -m "not slow" skips it
    _check(Responder(DnsConfig(), VIEW), data)
