"""The default gossip preset (``swift``, issue 22) on real sockets: 20 agents spend a
minute with both cores busy without one suspicion, then a ``kill -9``ed agent is marked
failed by every other agent within 2 s of the kill (read from their own log lines).

Issue 22 asks for five minutes; that run is the gossip benchmark's steady row (``bench.run
gossip``: 20 agents, 300 s, both cores busy, suspicions counted by every agent), kept out
of ``make test`` to hold the suite near 20 minutes. ``MESHNET_TEST_STEADY=300`` runs the
full five minutes here."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from calendar import timegm

from conftest import agent_log, api, wait_until

N = 20
#: a minute in make test; MESHNET_TEST_STEADY=300 for issue 22's five minutes
STEADY = float(os.environ.get("MESHNET_TEST_STEADY", "60"))
DETECT = 2.0


def _gossip(lab, host: str) -> dict[str, int]:
    return api(lab, host).get("/v1/metrics")["gossip"]


def _states(lab, host: str) -> dict[str, str]:
    return {m["name"]: m["state"] for m in api(lab, host).get("/v1/members")}


def _failed_at(lab, host: str, victim: str) -> float | None:
    """Wall-clock time of ``member VICTIM failed`` in HOST's log (None: not yet)."""
    m = re.search(r'ts=(\S+?)\.(\d{3})Z [^\n]*msg="member ' + re.escape(victim) + r' failed',
                  agent_log(lab, host))
    if m is None:
        return None
    return timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S")) + int(m.group(2)) / 1000


def test_twenty_agents_loaded_no_suspicion_then_kill_seen_within_2s(make_lab):
    lab = make_lab(hosts=N)
    hosts = lab.spec.host_names
    assert api(lab, "h1").get("/v1/status")["gossip"]["preset"] == "swift"
    wait_until(lambda: all(set(_states(lab, h).values()) == {"alive"} and len(_states(lab, h)) == N
                           for h in hosts), timeout=60, interval=0.5, what="20 agents alive")
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        before = {h: _gossip(lab, h) for h in hosts}
        time.sleep(STEADY)
        after = {h: _gossip(lab, h) for h in hosts}
    finally:
        for s in spinners:
            s.kill()
            s.wait()

    def delta(key: str) -> int:
        return sum(after[h].get(key, 0) - before[h].get(key, 0) for h in hosts)

    probes = delta("sent.ping")
    # the load was real work for the agents, and they kept probing through it
    assert probes > N * STEADY / 0.5 * 0.5, probes
    assert delta("probe.failed") == 0, {h: after[h].get("probe.failed", 0) for h in hosts}
    assert delta("refute.suspect") == 0 and delta("recv.suspect") == 0
    assert all(set(_states(lab, h).values()) == {"alive"} for h in hosts)

    time.sleep(2)  # the spinners' CPU is back
    victim = "h10"
    pid = lab.agent_pid(victim)
    assert pid is not None
    killed = time.time()
    os.kill(pid, signal.SIGKILL)
    others = [h for h in hosts if h != victim]
    wait_until(lambda: all(_failed_at(lab, h, victim) is not None for h in others),
               timeout=15, interval=0.2, what=f"{victim} failed everywhere")
    took = {h: round(_failed_at(lab, h, victim) - killed, 3) for h in others}
    print("detection", took)
    assert max(took.values()) <= DETECT, took
