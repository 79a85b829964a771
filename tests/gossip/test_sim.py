"""Cluster simulations on the in-memory fabric: 100+ cores, virtual time, one seed each."""

from __future__ import annotations

import math

import pytest

from meshnet.gossip import codec
from meshnet.gossip.config import GossipConfig
from meshnet.gossip.events import MemberFailed, MemberLeave, UserMessage
from meshnet.gossip.member import encode_tags, meshnet_meta
from meshnet.gossip.messages import Suspect
from meshnet.gossip.suspicion import suspicion_timeout
from meshnet.testing.fabric import Fabric

N = 100
# LZW in pure Python dominates wall time at this scale; compression is covered by the
# codec tests, the convergence simulation below and the serf interop check.
FAST = GossipConfig.fast().replace(enable_compression=False)


def cluster(n: int = N, seed: int = 1, cfg: GossipConfig = FAST, **fabric_kw) -> Fabric:
    f = Fabric(seed=seed, **fabric_kw)
    names = [f"n{i}" for i in range(n)]
    for name in names:
        f.add(name, cfg, meta=meshnet_meta())
    for i, name in enumerate(names[1:], start=1):
        f.join(name, [names[f.rng.randrange(i)]])  # each joins a random earlier node
    assert f.run_until_true(lambda: converged(f), 30) is not None, "no convergence"
    return f


def converged(f: Fabric, names=None) -> bool:
    live = [n for n in f.nodes.values() if n.alive]
    want = {n.name for n in live} if names is None else set(names)
    return all({m.name for m in n.core.members() if m.state == "alive"} == want for n in live)


def failures(f: Fabric, about: str | None = None) -> list[tuple[str, str]]:
    return [(n.name, e.member.name) for n in f.nodes.values() for e in n.events
            if isinstance(e, MemberFailed) and (about is None or e.member.name == about)]


def test_convergence_from_joins_with_compression():
    f = Fabric(seed=3)
    cfg = GossipConfig.fast()
    for i in range(N):
        f.add(f"n{i}", cfg, meta=meshnet_meta())
    for i in range(1, N):
        f.join(f"n{i}", [f"n{f.rng.randrange(i)}"])
    t = f.run_until_true(lambda: converged(f), 20)
    assert t is not None and t < 5.0
    f.run_for(3)
    assert failures(f) == []
    assert sum(n.core.metrics["probe.failed"] for n in f.nodes.values()) == 0
    compressed = sum(n.core.metrics["sent.stream.push_pull"] for n in f.nodes.values())
    assert compressed >= N - 1


def test_killed_node_detected_by_all_within_bound():
    f = cluster(seed=4)
    f.run_for(2)
    f.kill("n17")
    others = [n for n in f.nodes.values() if n.name != "n17"]
    t = f.run_until_true(
        lambda: all(n.core.member("n17").state == "dead" for n in others), 20, step=0.02)
    # the fast preset stretches its intervals for clusters above scale_knee members
    scale = min(max(N / FAST.scale_knee, 1.0), FAST.scale_max)
    interval = FAST.probe_interval * scale
    smin = suspicion_timeout(FAST.suspicion_mult, N, interval)
    bound = 2 * interval + FAST.suspicion_max_timeout_mult * smin + 1.0
    assert t is not None and t <= bound
    assert t < smin + 3 * interval  # with Lifeguard confirmations: near the minimum
    assert {who for _, who in failures(f)} == {"n17"}
    assert all(n.core.member("n17").state == "dead" for n in others)


def test_false_suspicion_is_refuted():
    f = cluster(seed=5)
    target = f.core("n5")
    inc0 = target.incarnation
    f.call("n10", lambda c, now: c.handle_datagram(
        codec.encode(Suspect(inc0, "n5", "n3")), ("10.0.0.4", 7946), now))
    assert f.core("n10").member("n5").state == "suspect"
    f.run_for(3)
    assert target.incarnation > inc0 and target.health_score >= 0
    assert all(n.core.member("n5").state == "alive" for n in f.nodes.values())
    assert all(n.core.member("n5").incarnation == target.incarnation for n in f.nodes.values())
    assert failures(f) == []


def test_partition_then_heal():
    f = cluster(seed=6)
    names = sorted(f.nodes)
    a, b = set(names[: N // 2]), set(names[N // 2:])
    f.partition(a, b)

    def split() -> bool:
        return all({m.name for m in f.core(x).members() if m.state == "alive"}
                   == (a if x in a else b) for x in names)

    t = f.run_until_true(split, 30, step=0.1)
    assert t is not None, "sides never declared each other dead"
    f.run_for(2)
    f.heal()
    t_heal = f.run_until_true(lambda: converged(f), 30, step=0.1)
    assert t_heal is not None and t_heal < 10.0
    f.run_for(2)
    assert converged(f)


def test_ten_percent_loss_without_false_deaths():
    f = cluster(seed=7)
    f.loss = 0.10
    f.run_for(12)
    assert failures(f) == []
    assert converged(f)
    # Lifeguard noticed: some probes needed the indirect/TCP paths.
    assert sum(n.core.metrics["sent.indirect_ping"] for n in f.nodes.values()) > 0


def test_leave_shows_left_everywhere():
    f = cluster(seed=8)
    f.call("n9", lambda c, now: c.leave(now))
    t = f.run_until_true(lambda: f.core("n9").leave_done, 5, step=0.02)
    assert t is not None
    f.run_for(1)
    others = [n for n in f.nodes.values() if n.name != "n9"]
    assert all(n.core.member("n9").state == "left" for n in others)
    assert all(any(isinstance(e, MemberLeave) and e.member.name == "n9" for e in n.events)
               for n in others)
    assert failures(f) == []


def test_restart_under_same_name_refutes_old_death():
    f = cluster(n=20, seed=9)
    f.kill("n3")
    assert f.run_until_true(lambda: f.core("n0").member("n3").state == "dead", 10) is not None
    old_inc = f.core("n0").member("n3").incarnation
    core = f.restart("n3", FAST, meta=meshnet_meta())
    f.join("n3", ["n0"])
    t = f.run_until_true(lambda: converged(f), 10)
    assert t is not None and core.incarnation > old_inc


def test_app_messages_only_between_meshnet_members():
    f = Fabric(seed=10)
    for i in range(8):
        f.add(f"n{i}", FAST, meta=meshnet_meta())
    f.add("serf1", FAST, meta=encode_tags({"role": "web"}))
    for name in list(f.nodes)[1:]:
        f.join(name, ["n0"])
    assert f.run_until_true(lambda: converged(f), 5) is not None
    assert f.call("n1", lambda c, now: c.send_user("n2", b"m\x01hi", now))
    assert f.call("n1", lambda c, now: c.send_user("n3", b"m" + b"x" * 5000, now))
    assert not f.call("n1", lambda c, now: c.send_user("serf1", b"m\x01hi", now))
    f.run_for(0.5)
    got2 = [e for e in f.nodes["n2"].events if isinstance(e, UserMessage)]
    got3 = [e for e in f.nodes["n3"].events if isinstance(e, UserMessage)]
    assert [(e.from_node, e.payload) for e in got2] == [("n1", b"m\x01hi")]
    assert len(got3) == 1 and got3[0].reliable and len(got3[0].payload) == 5001
    assert not [e for e in f.nodes["serf1"].events if isinstance(e, UserMessage)]
    assert f.core("serf1").metrics["recv.user"] == 0


@pytest.mark.parametrize("n", [5, 20])
def test_fast_preset_detects_well_under_half_of_lan(n):
    def detect(cfg: GossipConfig) -> float:
        f = cluster(n=n, seed=11, cfg=cfg)
        f.run_for(3)
        f.kill("n1")
        others = [x for x in f.nodes.values() if x.name != "n1"]
        t = f.run_until_true(lambda: all(x.core.member("n1").state == "dead" for x in others),
                             60, step=0.02)
        assert t is not None
        assert failures(f) == [(x.name, "n1") for x in others if
                               any(isinstance(e, MemberFailed) for e in x.events)]
        return t

    fast = detect(FAST)
    lan = detect(GossipConfig.lan().replace(enable_compression=False))
    assert fast < lan / 2, (fast, lan)
    assert math.isfinite(fast)


def test_small_cluster_keeps_fast_detection_and_large_one_stretches():
    small = cluster(n=FAST.scale_knee, seed=5)
    small.run_for(2)
    assert all(n.core.interval_scale() == 1.0 for n in small.nodes.values())
    small.kill("n3")
    others = [n for n in small.nodes.values() if n.name != "n3"]
    t = small.run_until_true(
        lambda: all(n.core.member("n3").state == "dead" for n in others), 20, step=0.02)
    assert t is not None and t < 3.0
    big = cluster(n=4 * FAST.scale_knee, seed=6)
    assert all(n.core.interval_scale() == 4.0 for n in big.nodes.values())
