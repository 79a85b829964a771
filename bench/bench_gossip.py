"""Gossip: meshnet's default preset (``swift``) against real `serf` 0.9.4 agents (LAN
profile, what `serf agent` runs by default), same run, same N, same lab underlay, every
figure timed the same way on both sides (issue 22).

For each N (``MESHNET_BENCH_GOSSIP_NS``, default 20,50,100), a cluster of each kind:

* Idle: bytes sent per node per second on the underlay interface over
  ``MESHNET_BENCH_GOSSIP_IDLE`` s (default 90: three of serf's push/pull periods), and the
  suspicions started meanwhile (a probe that found no ack: meshnet's ``probe.failed``
  counter, serf's memberlist "Suspect X has failed" log line).
* Start-up: every agent started (meshnet: ``lab up``; serf: each joins the first),
  seconds from the last agent's entry (its first "member joined" line) until every agent
  has logged every other one joining.
* Partition and heal: one node cut off (its port on the underlay bridge down) for 30 s; the heal time is from the DROP's removal until every other node has logged it
  joined again and it has logged every other one.
* Failure detection: three ``kill -9``s in turn (median and worst), each until every
  other node has declared the victim failed.

Both sides are stamped at the declaration: meshnet by the agents' log lines (ms
timestamps), serf by its "EventMember..." log lines stamped as they arrive on the
agent's stdout (before serf's event coalescing, which a handler would see 1-3 s later).

Steady state (a goal, no anchor): N=20 agents for ``MESHNET_BENCH_STEADY`` seconds
(default 300) with both cores kept busy by two spinning processes; every failed probe
(a suspicion) and every false failure is counted from the agents' metrics.

memberlist's LAN timings (``--gossip-preset lan``) against serf at equal timings, and how a
change spreads over the tables against serf's user events, are ``bench.run vs_serf``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from bench.common import Result
from meshnet.api.client import ApiClient
from meshnet.lab.lab import Lab
from meshnet.lab.topology import LabSpec

EVENT_RE = re.compile(r'ts=(\S+)Z .*msg="member (\S+) (join|failed)')
PARTITION = 30.0
KILLS = 3
#: seconds between "all alive" and the idle window on both sides: past meshnet's
#: catch-up push/pulls (2 s and 8 s after a join), so the window is the steady state
SETTLE = 10.0


def _lab(n_agents: int, tag: str, preset: str = "swift") -> Lab:
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


def _log_events(lab: Lab, host: str, what: str) -> list[tuple[float, str]]:
    """(time, member) of each "member X <what>" line in HOST's agent log."""
    out = []
    for m in EVENT_RE.finditer((lab.spec.state_dir / f"{host}.log").read_text()):
        if m.group(3) == what:
            ts = datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%f")
            out.append((ts.replace(tzinfo=UTC).timestamp(), m.group(2)))
    return out


def kill_and_detect(lab: Lab, victim: str, timeout: float, dead: tuple[str, ...] = ()) -> float:
    """``kill -9`` the victim's agent; seconds until every other agent (but ``dead``)
    logged it failed (the agents' log lines carry ms timestamps)."""
    others = [h for h in lab.spec.host_names if h != victim and h not in dead]
    t0 = time.time()
    os.kill(lab.agent_pid(victim), signal.SIGKILL)
    seen: dict[str, float] = {}

    def all_marked() -> bool:
        for h in others:
            if h in seen:
                continue
            times = [t for t, who in _log_events(lab, h, "failed") if who == victim and t >= t0]
            if times:
                seen[h] = times[0]
        return len(seen) == len(others)
    _wait(all_marked, timeout, "every agent to mark the victim failed", interval=0.5)
    return max(seen.values()) - t0


def underlay_port(lab: Lab, host: str, up: bool) -> None:
    """Take HOST's port on the lab's underlay bridge down (or up again): its packets go
    nowhere, but its sends still succeed (an iptables DROP in its own namespace would
    fail them with EPERM, and memberlist then suspects nobody)."""
    from meshnet import netns

    with netns.ipr(lab.spec.underlay_ns) as ul:
        ul.link("set", index=ul.link_lookup(ifname=host)[0], state="up" if up else "down")


def _healed(events: list[tuple[float, str, str, str]], cut: str, t_cut: float,
            t_heal: float) -> float | None:
    """From (time, observer, "join"|"failed", member) events: the time the partition's
    last failure was undone (every observer's last word since the cut on every member
    is "join", and every other observer saw CUT join after the heal), or None."""
    last: dict[tuple[str, str], tuple[float, str]] = {}
    for t, obs, kind, member in sorted(events):
        if t >= t_cut:
            last[(obs, member)] = (t, kind)
    if any(kind == "failed" for _, kind in last.values()):
        return None
    back = {obs for (obs, member), (t, _) in last.items() if member == cut and t >= t_heal}
    observers = {obs for obs, _ in last} | back
    if not observers - {cut} <= back:
        return None
    return max((t for t, _ in last.values()), default=t_heal)


def _join_convergence(events: list[tuple[float, str, str]], names: list[str]) -> float | None:
    """From (time, observer, member) join events of a cluster starting up: seconds from
    the last agent's entry (its first sight of another member) until every agent had
    seen every other one join; None while some pair is missing."""
    first: dict[tuple[str, str], float] = {}
    for t, obs, who in sorted(events):
        if obs != who:
            first.setdefault((obs, who), t)
    if len(first) < len(names) * (len(names) - 1):
        return None
    entered = max(min(t for (o, _), t in first.items() if o == obs) for obs in names)
    return max(first.values()) - entered


def _partition_and_heal(lab: Lab, host: str, cut_off_everywhere, healed,
                        timeout: float) -> float:
    """Cut HOST off for PARTITION s (waiting until the others noticed), heal it; seconds
    until ``healed(t_heal)`` holds (it returns the time of the last join it needed)."""
    t_cut = time.monotonic()
    underlay_port(lab, host, False)
    try:
        _wait(cut_off_everywhere, PARTITION + 60, "the others to declare it failed", interval=0.5)
        time.sleep(max(0.0, PARTITION - (time.monotonic() - t_cut)))
    finally:
        underlay_port(lab, host, True)
    t_heal = time.time()
    last = _wait(lambda: healed(t_heal), timeout, "the heal", interval=0.5)
    return last - t_heal


def meshnet_side(n: int, preset: str, idle: float) -> dict[str, float]:
    """Idle bytes and suspicions over ``idle`` s, a 30 s partition and its heal, then
    KILLS kill -9s and their detection."""
    lab = _lab(n, f"{preset[0]}{n}", preset)
    try:
        hosts = lab.spec.host_names
        _wait(lambda: _all_alive(lab, hosts, n), 180, f"{n} meshnet agents alive")
        joins = [(t, h, who) for h in hosts for t, who in _log_events(lab, h, "join")]
        converged = _join_convergence(joins, hosts)
        time.sleep(SETTLE)
        m0 = _gossip_counters(lab, hosts)
        before = [_tx_bytes(lab.spec.host_ns(h)) for h in hosts]
        t0 = time.monotonic()
        time.sleep(idle)
        after = [_tx_bytes(lab.spec.host_ns(h)) for h in hosts]
        out = {"bytes": (sum(after) - sum(before)) / n / (time.monotonic() - t0),
               "converged": converged}
        m1 = _gossip_counters(lab, hosts)
        out["suspicions"] = sum(m1[h].get("probe.failed", 0) - m0[h].get("probe.failed", 0)
                                for h in hosts)
        cut = hosts[n // 2]
        others = [h for h in hosts if h != cut]
        t_cut = time.time()

        def events() -> list[tuple[float, str, str, str]]:
            return [(t, h, kind, who) for h in hosts for kind in ("join", "failed")
                    for t, who in _log_events(lab, h, kind)]

        def cut_off() -> bool:
            return all(any(who == cut and t >= t_cut for t, who in _log_events(lab, h, "failed"))
                       for h in others)

        def healed(t_heal: float) -> float | None:
            return _healed(events(), cut, t_cut, t_heal)
        out["heal"] = _partition_and_heal(lab, cut, cut_off, healed, 120)
        time.sleep(3)
        victims = hosts[-KILLS:]
        detect = []
        for i, v in enumerate(victims):
            detect.append(kill_and_detect(lab, v, 90, dead=tuple(victims[:i])))
            time.sleep(2)
        out["detect"], out["detect_max"] = statistics.median(detect), max(detect)
        out["detect_all"] = detect  # type: ignore[assignment]
        return out
    finally:
        lab.down()


def _gossip_counters(lab: Lab, hosts: list[str]) -> dict[str, dict[str, int]]:
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda h: ApiClient(lab.spec.api_socket(h)).get("/v1/metrics")
                            ["gossip"], hosts))
    return dict(zip(hosts, got, strict=True))


def serf_side(n: int, idle: float) -> dict[str, float]:
    """The same for N serf agents (LAN profile), timed at the same points."""
    from bench.bench_vs_serf import Serf  # (it imports this module)

    s = Serf(n)
    try:
        names = [f"s{i}" for i in range(n)]

        def joins() -> list[tuple[float, str, str]]:
            return [(t, f"s{i}", m.group(1)) for t, i, line in list(s.seen)
                    if (m := re.search(r"EventMemberJoin: (\S+)", line))]
        converged = _wait(lambda: _join_convergence(joins(), names), 120,
                          "every serf agent to see every other join")
        _wait(lambda: all(s.alive(i) == n for i in (0, n // 2, n - 1)), 120, "serf members")
        time.sleep(SETTLE)
        sus0 = sum(1 for _, _, line in s.seen if "Suspect" in line)
        before = [_tx_bytes(x) for x in s.ns]
        t0 = time.monotonic()
        time.sleep(idle)
        after = [_tx_bytes(x) for x in s.ns]
        out = {"bytes": (sum(after) - sum(before)) / n / (time.monotonic() - t0),
               "converged": converged}
        out["suspicions"] = sum(1 for _, _, line in s.seen if "Suspect" in line) - sus0
        k = n // 2
        cut = f"s{k}"
        t_cut = time.time()

        def events() -> list[tuple[float, str, str, str]]:
            out = []
            for t, i, line in list(s.seen):
                m = re.search(r"EventMember(Join|Failed): (\S+)", line)
                if m:
                    out.append((t, f"s{i}", m.group(1).lower(), m.group(2)))
            return out

        def cut_off() -> bool:
            return len({obs for t, obs, kind, who in events()
                        if kind == "failed" and who == cut and t >= t_cut}) >= n - 1

        def healed(t_heal: float) -> float | None:
            return _healed(events(), cut, t_cut, t_heal)
        out["heal"] = _partition_and_heal(s.lab, s.hosts[k], cut_off, healed, 180)
        time.sleep(3)
        detect = []
        for j, idx in enumerate(range(n - KILLS, n)):
            detect.append(s.kill_last_and_detect(index=idx, dead=j))
            time.sleep(2)
        out["detect"], out["detect_max"] = statistics.median(detect), max(detect)
        out["detect_all"] = detect  # type: ignore[assignment]
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
    idle = float(os.environ.get("MESHNET_BENCH_GOSSIP_IDLE", "90"))
    sizes = [int(x) for x in os.environ.get("MESHNET_BENCH_GOSSIP_NS", "20,50,100").split(",")]
    anchor = "serf 0.9.4 agents, LAN profile"
    out = []
    for n in sizes:
        s = serf_side(n, idle)
        m = meshnet_side(n, "swift", idle)
        notes = f"N={n}, raw: " + json.dumps({"meshnet": m, "serf": s})
        out += [
            Result("gossip", f"N={n}: kill -9 -> all mark it failed, default preset (median "
                   f"of {KILLS})", "s", m["detect"], anchor, s["detect"], goal="<= 2 s",
                   notes=notes),
            Result("gossip", f"N={n}: kill -9 -> all mark it failed, worst of {KILLS}", "s",
                   m["detect_max"], anchor, s["detect_max"], goal="<= 2 s"),
            Result("gossip", f"N={n}: one node cut off 30 s, healed -> all see all", "s",
                   m["heal"], anchor, s["heal"], goal="<= 5 s"),
            Result("gossip", f"N={n}: start-up, the last agent in -> every agent has seen "
                   "every other join", "s", m["converged"] or float("nan"), anchor,
                   s["converged"], goal="<= 5 s"),
            Result("gossip", f"N={n}: idle bytes sent per node", "B/s", m["bytes"], anchor,
                   s["bytes"], goal="<= 1.5 x serf"),
            Result("gossip", f"N={n}: suspicions in {idle:.0f} s idle", "count",
                   m["suspicions"], anchor, s["suspicions"], goal="0"),
        ]
    st = steady_state(20, steady, "swift")
    out.append(Result("gossip", f"N=20, default preset: false suspicions in {steady:.0f} s, "
                      "both cores busy", "count", st["suspicions"], "goal (no anchor)", 0.0,
                      goal="0", notes=f"swift: {json.dumps(st)}"))
    return out
