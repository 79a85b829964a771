import asyncio
import os
import subprocess

import pytest

from meshnet import netns
from meshnet.ipvs.health import PENDING_GRACE, HealthCore, Target, targets, transition
from meshnet.ipvs.health_driver import HealthChecker, socket_in
from meshnet.model import HealthSpec
from tests.ipvs.tables import NETS, svc, task

SPEC = HealthSpec(kind="tcp", interval=1.0, timeout=0.5, retries=3)


def tgt(ip="10.0.0.2", spec=SPEC, service="web"):
    return Target("a", ip, service, 80, spec, "mn-ov-000100")


@pytest.mark.parametrize("state,ok,fails,want", [
    ("starting", True, 0, "healthy"),
    ("starting", False, 1, "starting"),
    ("starting", False, 3, "unhealthy"),
    ("healthy", False, 2, "healthy"),
    ("healthy", False, 3, "unhealthy"),
    ("unhealthy", False, 9, "unhealthy"),
    ("unhealthy", True, 0, "healthy"),
])
def test_transition_table(state, ok, fails, want):
    assert transition(state, ok, fails, 3) == want


def run(core, now, outcome):
    """Start what is due at ``now`` and answer each check with outcome(check)."""
    events = []
    for c in core.due(now):
        ok = outcome(c)
        events += core.result(c.key, c.seq, ok, "" if ok else "refused", now + 0.01)
    return events


def test_lifecycle_with_virtual_time():
    core = HealthCore()
    core.set_targets([tgt()], now=0.0)
    assert core.next_deadline() == 0.0
    ev = run(core, 0.0, lambda c: True)
    assert [(e.ip.exploded, e.healthy) for e in ev] == [("10.0.0.2", True)]
    assert core.next_deadline() == 1.0
    assert core.due(0.5) == []  # not yet
    assert run(core, 1.0, lambda c: True) == []  # no change, no event
    # the server dies: unhealthy after exactly `retries` consecutive failures
    assert run(core, 2.0, lambda c: False) == []
    assert run(core, 3.0, lambda c: False) == []
    ev = run(core, 4.0, lambda c: False)
    assert [(e.healthy, e.reason) for e in ev] == [(False, "refused")]
    assert ev[0].checked_at == pytest.approx(4.01)
    # one success brings it back
    ev = run(core, 5.0, lambda c: True)
    assert [e.healthy for e in ev] == [True]


def test_a_success_resets_the_failure_count():
    core = HealthCore()
    core.set_targets([tgt()], 0.0)
    run(core, 0.0, lambda c: True)
    for t, ok in [(1, False), (2, False), (3, True), (4, False), (5, False)]:
        assert run(core, float(t), lambda c, ok=ok: ok) == []
    assert core.state("a/10.0.0.2") == "healthy"


def test_unanswered_check_counts_as_failure_and_late_answers_are_ignored():
    core = HealthCore()
    core.set_targets([tgt()], 0.0)
    run(core, 0.0, lambda c: True)
    expiry = SPEC.timeout + PENDING_GRACE  # 1.0: the next start is due at the same time
    (first,) = core.due(1.0)  # never answered
    events = []
    for t in (1.0 + expiry, 2.0 + expiry, 3.0 + expiry):
        events += core.expire(t)
        assert core.due(t)  # a new check starts right after the stuck one failed
    assert [(e.healthy, e.reason) for e in events] == [(False, "no answer")]
    assert core.result("a/10.0.0.2", first.seq, True, "", 9.0) == []  # late: ignored


def test_targets_added_and_removed():
    core = HealthCore()
    core.set_targets([tgt("10.0.0.2"), tgt("10.0.0.3")], 0.0)
    assert {c.ip for c in core.due(0.0)} == {"10.0.0.2", "10.0.0.3"}
    core.set_targets([tgt("10.0.0.3")], 0.1)
    assert core.result("a/10.0.0.2", 1, True, "", 0.2) == []  # removed target: ignored
    assert list(core.tracks) == ["a/10.0.0.3"]
    core.set_targets([tgt("10.0.0.3", HealthSpec(kind="none"))], 0.3)
    assert core.tracks == {} and core.next_deadline() is None


def test_targets_from_tables():
    services = {"web": svc("web", health="http", ports=("53/udp", "8080/tcp")),
                "plain": svc("plain", vip="10.0.0.101")}
    eps = [task("10.0.0.2", "h1", "web"), task("10.0.0.3", "h2", "web"),
           task("10.0.0.4", "h1", "plain")]
    (t,) = targets("h1", NETS, services, eps, "mn-")
    assert (t.ip, t.port, t.spec.kind, t.netns) == ("10.0.0.2", 8080, "http", "mn-ov-000100")


# --- the asyncio driver, against real sockets in a namespace of our own -----------------


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (creates a namespace)")
def test_driver_checks_from_inside_a_namespace():
    ns = f"mn-lbdev-{os.getpid()}-hc"
    netns.create(ns)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        assert asyncio.run(_drive(ns)) == {("a", "web"): True, ("a", "tcp"): True,
                                           ("b", "down"): False}
    finally:
        netns.remove(ns, kill=False)


async def _drive(ns):
    async def http(reader, writer):
        await reader.readline()
        writer.write(b"HTTP/1.0 200 OK\r\n\r\nok")
        await writer.drain()
        writer.close()

    listener = socket_in(ns)  # the server lives in the namespace too
    listener.bind(("0.0.0.0", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    srv = await asyncio.start_server(http, sock=listener)
    fast = dict(interval=0.05, timeout=0.5, retries=2)
    events = []
    hc = HealthChecker(events.append)
    hc.start()
    hc.set_targets([
        Target("a", "127.0.0.1", "web", port, HealthSpec(kind="http", **fast), ns),
        Target("a", "127.0.0.2", "tcp", port, HealthSpec(kind="tcp", **fast), ns),
        Target("b", "127.0.0.1", "down", port + 1 if port < 65535 else port - 1,
               HealthSpec(kind="tcp", **fast), ns),
    ])
    for _ in range(200):
        if len(events) >= 3:
            break
        await asyncio.sleep(0.02)
    await hc.stop()
    srv.close()
    return {(e.network, e.service): e.healthy for e in events}
