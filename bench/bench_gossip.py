"""Gossip: failure detection, idle traffic and steady-state stability of meshnet's presets,
side by side with real `serf` 0.9.4 agents (LAN profile, what `serf agent` runs by default)
in the same run, on the same lab underlay, timed the same way.

* Failure detection: N processes, one `kill -9`, time until every other node has
  declared it failed. Both sides are stamped at the declaration: meshnet by the agents'
  "member X failed" log lines (ms timestamps), serf by its "EventMemberFailed" log lines
  stamped as they arrive on the agent's stdout (before serf's event coalescing, which a
  handler would see 1-3 s later). meshnet runs each preset: ``lan`` (the shipped
  default, memberlist's LAN timings like serf) and ``fast`` (the lab's): equal timings
  first, then the trade-off, with its bytes beside it.
* Idle traffic: bytes sent per node per second on the underlay interface over 150 s
  (``MESHNET_BENCH_GOSSIP_IDLE``; five push/pull periods) of an idle cluster of the same
  N, each meshnet preset and serf.
* Steady state (a goal, no anchor): N=20 agents of each preset for
  ``MESHNET_BENCH_STEADY`` seconds (default 300) with both cores kept busy by two
  spinning processes; every failed probe (a suspicion) and every false failure is
  counted from the agents' metrics.

How a change spreads over the tables against serf's user events at N=20/50/100 is
``bench.run vs_serf``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from bench.common import Result
from meshnet.api.client import ApiClient
from meshnet.lab.lab import Lab
from meshnet.lab.topology import LabSpec

FAILED_RE = re.compile(r'ts=(\S+)Z .*msg="member (\S+) failed')


def _lab(n_agents: int, tag: str, preset: str = "fast") -> Lab:
    lab = Lab(LabSpec(name=f"bg{os.getpid() % 1000}{tag}", hosts=n_agents))
    lab.up(agent_args=["--gossip-preset", preset])
    return lab


def _wait(pred, timeout: float, what: str, interval: float = 0.1):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        r = pred()
        if r:
            return r
        time.sleep(interval)
    raise RuntimeError(f"timed out waiting for {what}")


def _members(lab: Lab, host: str) -> dict[str, str]:
    try:
        return {m["name"]: m["state"] for m in ApiClient(lab.spec.api_socket(host)).get(
            "/v1/members")}
    except Exception:
        return {}


def _all_alive(lab: Lab, hosts: list[str], n: int) -> bool:
    with ThreadPoolExecutor(8) as pool:
        views = list(pool.map(lambda h: _members(lab, h), hosts))
    return all(len(v) == n and set(v.values()) == {"alive"} for v in views)


def kill_and_detect(lab: Lab, victim: str, timeout: float) -> float:
    """``kill -9`` the victim's agent; seconds until every other agent logged it failed
    (the agents' log lines carry ms timestamps)."""
    others = [h for h in lab.spec.host_names if h != victim]
    t0 = time.time()
    os.kill(lab.agent_pid(victim), signal.SIGKILL)
    seen: dict[str, float] = {}

    def all_marked() -> bool:
        for h in others:
            if h in seen:
                continue
            for m in FAILED_RE.finditer((lab.spec.state_dir / f"{h}.log").read_text()):
                if m.group(2) == victim:
                    ts = datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%f")
                    seen[h] = ts.replace(tzinfo=UTC).timestamp()
                    break
        return len(seen) == len(others)
    _wait(all_marked, timeout, "every agent to mark the victim failed", interval=0.5)
    return max(seen.values()) - t0


def meshnet_side(n: int, preset: str, idle: float) -> dict[str, float]:
    """Idle bytes per node over ``idle`` s, then a kill -9 and its detection."""
    lab = _lab(n, f"{preset[0]}{n}", preset)
    try:
        hosts = lab.spec.host_names
        _wait(lambda: _all_alive(lab, hosts, n), 90, f"{n} meshnet agents alive")
        time.sleep(3)
        before = [_tx_bytes(lab.spec.host_ns(h)) for h in hosts]
        t0 = time.monotonic()
        time.sleep(idle)
        after = [_tx_bytes(lab.spec.host_ns(h)) for h in hosts]
        out = {"bytes": (sum(after) - sum(before)) / n / (time.monotonic() - t0)}
        out["detect"] = kill_and_detect(lab, hosts[-1], 90)
        return out
    finally:
        lab.down()


def serf_side(n: int, idle: float) -> dict[str, float]:
    """The same for N serf agents (LAN profile), timed at the same point."""
    from bench.bench_vs_serf import Serf  # (it imports this module)

    s = Serf(n)
    try:
        _wait(lambda: all(s.alive(i) == n for i in (0, n - 1)), 90, "serf members")
        time.sleep(3)
        before = [_tx_bytes(x) for x in s.ns]
        t0 = time.monotonic()
        time.sleep(idle)
        after = [_tx_bytes(x) for x in s.ns]
        out = {"bytes": (sum(after) - sum(before)) / n / (time.monotonic() - t0)}
        out["detect"] = s.kill_last_and_detect()
        return out
    finally:
        s.stop()


def stop_serf(procs: list[subprocess.Popen], lab: Lab) -> None:
    """Kill serf agents (each in its own session) and take their lab down."""
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()
    lab.down()


def steady_state(n: int, seconds: float, preset: str) -> dict[str, int]:
    lab = _lab(n, f"s{preset[0]}", preset)
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                for _ in range(2)]
    try:
        hosts = lab.spec.host_names
        _wait(lambda: _all_alive(lab, hosts, n), 60, "agents alive")
        before = {h: ApiClient(lab.spec.api_socket(h)).get("/v1/metrics")["gossip"]
                  for h in hosts}
        time.sleep(seconds)
        after = {h: ApiClient(lab.spec.api_socket(h)).get("/v1/metrics")["gossip"]
                 for h in hosts}
        failed_views = sum(1 for h in hosts for st in _members(lab, h).values() if st != "alive")

        def delta(key: str) -> int:
            return sum(after[h].get(key, 0) - before[h].get(key, 0) for h in hosts)
        return {"suspicions": delta("probe.failed"), "refutations": delta("refute.suspect"),
                "false_failures": failed_views, "probes": delta("sent.ping")}
    finally:
        for s in spinners:
            s.kill()
            s.wait()
        lab.down()


def _tx_bytes(ns: str) -> int:
    out = subprocess.run(["ip", "netns", "exec", ns, "cat", "/sys/class/net/eth0/statistics/"
                          "tx_bytes"], capture_output=True, text=True).stdout
    if out.strip().isdigit():
        return int(out)
    text = subprocess.run(["ip", "netns", "exec", ns, "cat", "/proc/net/dev"],
                          capture_output=True, text=True).stdout
    for line in text.splitlines():
        if line.strip().startswith("eth0:"):
            return int(line.split(":")[1].split()[8])
    raise RuntimeError(f"no eth0 counters in {ns}")


def run() -> list[Result]:
    if not shutil.which("serf"):
        raise RuntimeError("serf is not installed (make deps)")
    steady = float(os.environ.get("MESHNET_BENCH_STEADY", "300"))
    # several push/pull periods (30 s, jittered, both sides): a shorter window would
    # catch some nodes' periodic sync and miss others'
    idle = float(os.environ.get("MESHNET_BENCH_GOSSIP_IDLE", "150"))
    anchor = "serf 0.9.4 agents, LAN profile"
    out = []
    for n in (5, 20):
        s = serf_side(n, idle)
        lan = meshnet_side(n, "lan", idle)
        fast = meshnet_side(n, "fast", idle)
        out += [
            Result("gossip", f"N={n}: kill -9 -> all mark it failed, lan preset (default; "
                   "equal timings)", "s", lan["detect"], anchor, s["detect"],
                   goal="(figures)"),
            Result("gossip", f"N={n}: idle bytes sent per node, lan preset", "B/s",
                   lan["bytes"], anchor, s["bytes"], goal="<= 1.5 x serf"),
            Result("gossip", f"N={n}: kill -9 -> all mark it failed, fast preset", "s",
                   fast["detect"], anchor, s["detect"], goal="(trade-off: bytes below)"),
            Result("gossip", f"N={n}: idle bytes sent per node, fast preset", "B/s",
                   fast["bytes"], anchor, s["bytes"], goal="(trade-off: detection above)"),
        ]
    for preset in ("lan", "fast"):
        st = steady_state(20, steady, preset)
        out.append(Result("gossip", f"N=20, {preset} preset: false suspicions in "
                          f"{steady:.0f} s, both cores busy", "count", st["suspicions"],
                          "goal (no anchor)", 0.0, goal="0",
                          notes=f"{preset}: {json.dumps(st)}"))
    return out
