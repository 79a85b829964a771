"""A big lab on this 2-core box (issue 17): N=50 and N=100 hosts with the lab's default
gossip preset, the shipped default (``swift``).

For each N: `lab up` time; one table change (a network created on h1) reaching every
host (p50 and p99 over hosts, median of 3 changes, 99 pollers in threads, so the figure
includes their own delay); then an idle window with every agent up, counting false
suspicions (probes that failed) and false failures (suspicions that expired) over all
agents, and each agent's CPU and RSS.

These rows are goals, not comparisons: serf at the same N, with LAN timings on both
sides and 1,000 containers at N=100, is ``bench_vs_serf``.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from pathlib import Path

from bench.common import Result
from meshnet.api.client import ApiClient
from meshnet.lab.lab import Lab
from meshnet.lab.topology import LabSpec

IDLE = float(os.environ.get("MESHNET_BENCH_IDLE", "300"))
TICK = os.sysconf("SC_CLK_TCK")


def _cpu(pid: int) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICK


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _counters(lab: Lab) -> dict[str, int]:
    out = {"suspicions": 0, "failures": 0}
    for h in lab.spec.host_names:
        g = ApiClient(lab.spec.api_socket(h), timeout=30).get("/v1/metrics")["gossip"]
        out["suspicions"] += g.get("probe.failed", 0)
        out["failures"] += g.get("suspect.timeout", 0)
    return out


def _spread(lab: Lab, name: str, subnet: str) -> list[float]:
    hosts = lab.spec.host_names[1:]
    seen: dict[str, float] = {}

    def poll(h: str) -> None:
        c = ApiClient(lab.spec.api_socket(h), timeout=30)
        while time.monotonic() - t0 < 30:
            if any(n["name"] == name for n in c.get("/v1/networks")):
                seen[h] = time.monotonic() - t0
                return
            time.sleep(0.02)

    threads = [threading.Thread(target=poll, args=(h,)) for h in hosts]
    t0 = time.monotonic()
    ApiClient(lab.spec.api_socket("h1"), timeout=30).post(
        "/v1/networks", {"name": name, "subnet": subnet})
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(seen.get(h, 30.0) for h in hosts)


def _one(n: int, tag: str) -> list[Result]:
    lab = Lab(LabSpec(name=f"{tag}{n}", hosts=n))
    t0 = time.monotonic()
    lab.up()
    up = time.monotonic() - t0
    try:
        time.sleep(20)  # the start of N agents on two cores settles
        p50s, p99s = [], []
        for i in range(3):
            v = _spread(lab, f"spread{i}", f"10.{200 + i}.0.0/24")
            p50s.append(v[len(v) // 2])
            p99s.append(v[min(len(v) - 1, int(len(v) * 0.99))])
            time.sleep(2)
        pids = [lab.agent_pid(h) for h in lab.spec.host_names]
        before, cpu0 = _counters(lab), [_cpu(p) for p in pids]
        t1 = time.monotonic()
        time.sleep(IDLE)
        span = time.monotonic() - t1
        after, cpu1 = _counters(lab), [_cpu(p) for p in pids]
        cpu = statistics.median((b - a) / span * 100 for a, b in zip(cpu0, cpu1, strict=True))
        rss = statistics.median(_rss_mb(p) for p in pids)
    finally:
        lab.down()
    goal = "goal (no anchor)"
    mins = f"{IDLE / 60:.0f} min"
    return [
        Result("cluster", f"N={n}: lab up", "s", up, goal, 0, goal="<= 60 s at N=100"),
        Result("cluster", f"N={n}: one change on every host, p99 over hosts", "s",
               statistics.median(p99s), goal, 0, goal="<= 1 s",
               notes=f"N={n}: p50 over hosts {statistics.median(p50s):.2f} s"),
        Result("cluster", f"N={n}: false suspicions in {mins}, all agents up", "",
               after["suspicions"] - before["suspicions"], goal, 0, goal="0"),
        Result("cluster", f"N={n}: false failures in {mins}, all agents up", "",
               after["failures"] - before["failures"], goal, 0, goal="0"),
        Result("cluster", f"N={n}: idle CPU per agent (median)", "% of a core", cpu, goal, 0,
               goal="<= 0.5 % (issue 17, at N=100 with 1,000 endpoints: not measured)"),
        Result("cluster", f"N={n}: RSS per agent (median)", "MB", rss, goal, 0,
               goal="<= 45 MB"),
    ]


def run() -> list[Result]:
    tag = f"c{os.getpid() % 1000}n"
    return _one(50, tag) + _one(100, tag)
