"""Gossip: failure detection, steady-state stability, table convergence and traffic, each
side by side with real `serf` 0.9.4 agents (LAN profile, what `serf agent` runs by
default) in the same run, on the same lab underlay.

* Failure detection: N processes, one `kill -9`, time until every other node marks it
  failed. meshnet: the agents' "member X failed" log lines (ms timestamps); serf: a
  `member-failed` event handler writing `date +%s.%N`.
* Steady state: N=20 meshnet agents for ``MESHNET_BENCH_STEADY`` seconds (default 300)
  with both cores kept busy by two spinning processes; every failed probe (a suspicion)
  and every false failure is counted from the agents' metrics.
* Table convergence: an entry written on one of N=20 agents, time until all hold it
  (API polled in parallel), and the same at N=1000 in the deterministic simulator.
* Traffic: bytes sent per node per second by an idle N=20 cluster (underlay interface
  counters), meshnet vs serf.
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
from pathlib import Path

from bench.common import Result
from meshnet.api.client import ApiClient
from meshnet.lab.lab import Lab
from meshnet.lab.topology import LabSpec

FAILED_RE = re.compile(r'ts=(\S+)Z .*msg="member (\S+) failed')


def _lab(n_agents: int, tag: str) -> Lab:
    lab = Lab(LabSpec(name=f"bg{os.getpid() % 1000}{tag}", hosts=n_agents))
    lab.up()
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


def meshnet_detection(n: int) -> float:
    lab = _lab(n, f"d{n}")
    try:
        hosts = lab.spec.host_names
        _wait(lambda: _all_alive(lab, hosts, n), 60, f"{n} meshnet agents alive")
        time.sleep(2)
        return kill_and_detect(lab, hosts[-1], 60)
    finally:
        lab.down()


def stop_serf(procs: list[subprocess.Popen], lab: Lab) -> None:
    """Kill serf agents (each in its own session) and take their lab down."""
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()
    lab.down()


class SerfCluster:
    def __init__(self, n: int, tag: str, profile: str = "lan") -> None:
        self.lab = Lab(LabSpec(name=f"bs{os.getpid() % 1000}{tag}", hosts=1))
        self.lab.up()
        self.procs: list[subprocess.Popen] = []
        self.dir = self.lab.spec.state_dir
        handler = self.dir / "failed.sh"
        handler.write_text('#!/bin/sh\necho "$(date +%s.%N) $SERF_SELF_NAME $(cat)" '
                           f'>> {self.dir}/failed.log\n')
        handler.chmod(0o755)
        self.hosts = [f"h{k}" for k in range(2, n + 2)]
        for i, h in enumerate(self.hosts):
            ns = self.lab.add_bare_host(h)
            addr = self.lab.spec.host_addr(h)
            cmd = ["serf", "agent", f"-node=s{i}", f"-bind={addr}:7946",
                   "-rpc-addr=127.0.0.1:7373", f"-profile={profile}",
                   f"-event-handler=member-failed={handler}"]
            if i:
                cmd.append(f"-join={self.lab.spec.host_addr(self.hosts[0])}")
            log = open(self.dir / f"serf{i}.log", "wb")
            self.procs.append(subprocess.Popen(["ip", "netns", "exec", ns, *cmd], stdout=log,
                                               stderr=subprocess.STDOUT, start_new_session=True))
            if not i:
                time.sleep(0.5)

    def alive_count(self, host: str) -> int:
        r = subprocess.run(["ip", "netns", "exec", self.lab.spec.host_ns(host), "serf",
                            "members", "-rpc-addr=127.0.0.1:7373", "-status=alive"],
                           capture_output=True, text=True)
        return len(r.stdout.splitlines())

    def stop(self) -> None:
        stop_serf(self.procs, self.lab)


def serf_detection(n: int, profile: str = "lan") -> float:
    c = SerfCluster(n, f"d{n}{profile[0]}", profile)
    try:
        _wait(lambda: all(c.alive_count(h) == n for h in (c.hosts[0], c.hosts[-1])), 60,
              f"{n} serf agents alive")
        time.sleep(2)
        t0 = time.time()
        os.killpg(c.procs[-1].pid, signal.SIGKILL)
        log = c.dir / "failed.log"

        def marked() -> dict[str, float]:
            if not log.exists():
                return {}
            out: dict[str, float] = {}
            for line in log.read_text().splitlines():
                ts, node = line.split()[:2]
                out.setdefault(node, float(ts))
            return out if len(out) >= n - 1 else {}
        return max(_wait(marked, 90, "every serf agent to mark the victim failed").values()) - t0
    finally:
        c.stop()


def steady_state(n: int, seconds: float) -> dict[str, int]:
    lab = _lab(n, "s")
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


def idle_traffic_meshnet(n: int, seconds: float) -> float:
    lab = _lab(n, "t")
    try:
        hosts = lab.spec.host_names
        _wait(lambda: _all_alive(lab, hosts, n), 60, "agents alive")
        time.sleep(3)
        before = [_tx_bytes(lab.spec.host_ns(h)) for h in hosts]
        time.sleep(seconds)
        after = [_tx_bytes(lab.spec.host_ns(h)) for h in hosts]
        return (sum(after) - sum(before)) / n / seconds
    finally:
        lab.down()


def idle_traffic_serf(n: int, seconds: float) -> float:
    c = SerfCluster(n, "t")
    try:
        _wait(lambda: all(c.alive_count(h) == n for h in (c.hosts[0], c.hosts[-1])), 60,
              "serf alive")
        time.sleep(3)
        before = [_tx_bytes(c.lab.spec.host_ns(h)) for h in c.hosts]
        time.sleep(seconds)
        after = [_tx_bytes(c.lab.spec.host_ns(h)) for h in c.hosts]
        return (sum(after) - sum(before)) / n / seconds
    finally:
        c.stop()


def table_convergence(n: int) -> float:
    lab = _lab(n, "c")
    try:
        hosts = lab.spec.host_names
        _wait(lambda: _all_alive(lab, hosts, n), 60, "agents alive")
        time.sleep(2)
        clients = {h: ApiClient(lab.spec.api_socket(h)) for h in hosts}
        t0 = time.monotonic()
        clients["h1"].post("/v1/networks", {"name": "conv", "subnet": "10.99.0.0/24"})
        done: dict[str, float] = {"h1": time.monotonic()}

        def poll(h: str) -> None:
            while h not in done:
                if any(x["name"] == "conv" for x in clients[h].get("/v1/networks")):
                    done[h] = time.monotonic()
                else:
                    time.sleep(0.005)
        with ThreadPoolExecutor(len(hosts)) as pool:
            list(pool.map(poll, hosts[1:]))
        return max(done.values()) - t0
    finally:
        lab.down()


def simulated_convergence(n: int) -> float:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from meshnet.gossip.tables import TableConfig
    from meshnet.testing.tablesim import settled

    sim = settled(n, TableConfig.lan())
    sim.put("n0005", "vteps", "n0005", b"10.0.0.5")
    took, _ = sim.measure(f"N={n}", sim.everyone_has("vteps", "n0005", b"10.0.0.5"), 30)
    return took


def run() -> list[Result]:
    if not shutil.which("serf"):
        raise RuntimeError("serf is not installed (make deps)")
    steady = float(os.environ.get("MESHNET_BENCH_STEADY", "300"))
    out = []
    for n in (5, 20):
        m = meshnet_detection(n)
        s = serf_detection(n)
        out.append(Result("gossip", f"failure detection, N={n} processes (kill -9 -> all mark "
                          "failed)", "s", m, "serf 0.9.4 agents, LAN profile", s,
                          goal="<= 0.5 x serf", notes=""))
    sl = serf_detection(5, "local")
    out.append(Result("gossip", "failure detection, N=5, vs serf -profile=local", "s",
                      out[0].meshnet, "serf 0.9.4 agents, local profile", sl,
                      goal="(reference)"))
    st = steady_state(20, steady)
    out.append(Result("gossip", f"false suspicions, N=20, {steady:.0f} s, both cores busy",
                      "count", st["suspicions"], "goal", 0.0, goal="0",
                      notes=f"steady state: {json.dumps(st)}"))
    tc = table_convergence(20)
    sim = simulated_convergence(1000)
    out.append(Result("gossip", "table entry reaches all N=20 agents", "s", tc,
                      "N=1000 simulated (LAN preset, virtual time)", sim, goal="(figures)"))
    idle_s = 30.0
    mt = idle_traffic_meshnet(20, idle_s)
    stx = idle_traffic_serf(20, idle_s)
    out.append(Result("gossip", "bytes sent per node per second, idle N=20", "B/s", mt,
                      "serf 0.9.4 agents, LAN profile", stx, goal="(figures)",
                      notes="meshnet runs its fast preset (5x serf's probe rate) in the lab"))
    return out
