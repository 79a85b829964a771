"""Suspicion, awareness, broadcast queue and config formulas (notes 8.1-8.6)."""

from __future__ import annotations

import math

import pytest

from meshnet.errors import ConfigError
from meshnet.gossip.awareness import Awareness
from meshnet.gossip.broadcast import BroadcastQueue, retransmit_limit
from meshnet.gossip.config import DEFAULT_VSN, GossipConfig
from meshnet.gossip.suspicion import Suspicion, confirmations_wanted, suspicion_timeout


def test_presets_match_memberlist_defaults():
    lan, local = GossipConfig.lan(), GossipConfig.local()
    assert (lan.probe_interval, lan.probe_timeout, lan.gossip_interval, lan.gossip_nodes) == (
        1.0, 0.5, 0.2, 3)
    assert (lan.suspicion_mult, lan.suspicion_max_timeout_mult, lan.push_pull_interval,
            lan.retransmit_mult, lan.indirect_checks, lan.tcp_timeout) == (4, 6, 30.0, 4, 3, 10.0)
    assert (lan.gossip_to_the_dead_time, lan.awareness_max_multiplier, lan.udp_buffer_size) == (
        30.0, 8, 1400)
    assert (local.probe_timeout, local.gossip_interval, local.suspicion_mult,
            local.push_pull_interval, local.retransmit_mult, local.indirect_checks,
            local.tcp_timeout, local.gossip_to_the_dead_time) == (
        0.2, 0.1, 3, 15.0, 2, 1, 1.0, 15.0)
    fast = GossipConfig.fast()
    assert fast.probe_interval == 0.2 and fast.probe_timeout == 0.1
    assert lan.vsn == DEFAULT_VSN == bytes([1, 5, 2, 2, 5, 5])


def test_config_validation():
    with pytest.raises(ConfigError):
        GossipConfig(vsn=b"\x01\x05")
    with pytest.raises(ConfigError):
        GossipConfig(probe_timeout=2.0)
    assert GossipConfig.lan().replace(gossip_nodes=5).gossip_nodes == 5


def test_suspicion_timeout_formula():
    assert suspicion_timeout(4, 3, 1.0) == 4.0  # n < 10 -> scale 1
    assert suspicion_timeout(4, 100, 1.0) == 8.0
    assert suspicion_timeout(3, 20, 0.2) == pytest.approx(3 * 1.301 * 0.2)
    assert suspicion_timeout(4, 0, 1.0) == 4.0


def test_confirmations_wanted():
    assert confirmations_wanted(4, 10) == 2
    assert confirmations_wanted(4, 3) == 0  # n - 2 < k
    assert confirmations_wanted(3, 3) == 1


def test_suspicion_confirmations_shrink_timeout():
    s = Suspicion("a", k=2, min_timeout=4.0, max_timeout=24.0, start=100.0, incarnation=1)
    assert s.deadline == 124.0
    assert not s.confirm("a")  # the originator does not count
    assert s.confirm("b")
    want = 24.0 - (math.log(2) / math.log(3)) * 20.0
    assert s.deadline == pytest.approx(100.0 + want)
    assert not s.confirm("b")
    assert s.confirm("c")
    assert s.deadline == pytest.approx(104.0)
    assert not s.confirm("d")  # beyond k
    s0 = Suspicion("a", k=0, min_timeout=4.0, max_timeout=24.0, start=0.0, incarnation=1)
    assert s0.deadline == 4.0 and not s0.confirm("b")


def test_awareness_clamps_and_scales():
    a = Awareness(8)
    a.apply_delta(-3)
    assert a.score == 0
    a.apply_delta(20)
    assert a.score == 7 and a.scale(1.0) == 8.0


def test_retransmit_limit():
    assert retransmit_limit(4, 9) == 4
    assert retransmit_limit(4, 10) == 8
    assert retransmit_limit(4, 99) == 8
    assert retransmit_limit(4, 100) == 12


def test_broadcast_queue_invalidation_limit_and_budget():
    q = BroadcastQueue(retransmit_mult=1)
    old = q.queue(b"old-about-x", key="x")
    new = q.queue(b"new-about-x", key="x")
    q.queue(b"other", key="y")
    assert old.finished and len(q) == 2
    msgs = q.get(overhead=2, limit=100, num_nodes=1)  # limit 1*ceil(log10 2) = 1
    assert msgs == [b"new-about-x", b"other"]  # largest first on equal transmits
    assert new.finished and len(q) == 0
    q.queue(b"a" * 50)
    q.queue(b"b" * 50)
    assert len(q.get(overhead=2, limit=60, num_nodes=1)) == 1  # budget honoured
    assert q.get(overhead=2, limit=2, num_nodes=1) == []


def test_broadcast_fewest_transmits_first():
    q = BroadcastQueue(retransmit_mult=3)
    q.queue(b"first")
    assert q.get(2, 100, 9) == [b"first"]
    q.queue(b"secnd")
    assert q.get(2, 9, 9) == [b"secnd"]  # room for one: the untransmitted one wins
