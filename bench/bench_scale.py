"""Churn and load on labs, with the leak and resource figures issue 10 asks for.

* Churn (3 hosts): ``MESHNET_CHURN`` attach/detach cycles (default 1,000 in all, spread
  over three hosts in parallel) and 200 service create/remove cycles; afterwards compare
  what meshnet owns, by identity (``meshnet.testing.identity``: namespaces, links, every
  nftables object, FDB and neighbour entries, each agent's open files by kind), with the
  same before the churn, and each agent's RSS against its RSS after a warm-up (goal: back
  within 10 %).
* Load (5 hosts, agents on the LAN gossip preset a deployment runs): 200 endpoints and
  100 services; each agent's RSS (goal <= 60 MB) and idle CPU over 60 s, two periods of
  the reconcilers' 30 s full resync (goal <= 1 %).
  Anchor: the same agents idle, before the load.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

from bench.common import Result
from meshnet import netns
from meshnet.api.client import ApiClient
from meshnet.lab.lab import Lab
from meshnet.lab.topology import LabSpec
from meshnet.testing.identity import diff, snapshot

IDLE_WINDOW = 60  #: seconds; two full-resync periods of every reconciler


def _rss_kb(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _cpu_ticks(pid: int) -> int:
    f = open(f"/proc/{pid}/stat").read().split(") ", 1)[1].split()
    return int(f[11]) + int(f[12])


def churn(cycles: int) -> tuple[dict, dict, dict[str, tuple[int, int]]]:
    lab = Lab(LabSpec(name=f"bc{os.getpid() % 1000}", hosts=3))
    lab.up()
    try:
        a = ApiClient(lab.spec.api_socket("h1"))
        a.post("/v1/networks", {"name": "app", "subnet": "10.140.0.0/20"})
        time.sleep(1)
        keep = lab.run("h1", "keep", ["sleep", "36000"], {"network": "app", "name": "keep",
                                                           "aliases": []})
        assert keep
        names = {h: [lab.spec.container_ns(f"{h}x{i}") for i in range(4)]
                 for h in lab.spec.host_names}
        for nss in names.values():
            for ns in nss:
                netns.create(ns)

        def cycle(host: str, n: int) -> None:
            c = ApiClient(lab.spec.api_socket(host))
            for i in range(n):
                ns = names[host][i % 4]
                c.post("/v1/endpoints", {"netns": ns, "network": "app"})
                c.delete(f"/v1/endpoints?netns={ns}")

        cycle("h1", 20)  # warm-up, then the baseline
        time.sleep(2)
        rss0 = {h: _rss_kb(lab.agent_pid(h)) for h in lab.spec.host_names}
        before = snapshot(lab)
        hosts = lab.spec.host_names  # exactly ``cycles`` in all, spread over the hosts
        share = {h: cycles // 3 + (1 if i < cycles % 3 else 0) for i, h in enumerate(hosts)}
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda h: cycle(h, share[h]), hosts))
        for i in range(200):
            a.post("/v1/services", {"name": f"s{i % 7}", "network": "app",
                                    "ports": ["80/tcp"]})
            a.delete(f"/v1/services/s{i % 7}")
        deadline = time.monotonic() + 40  # as the churn test: back to the start, or not
        after = snapshot(lab)
        while after != before and time.monotonic() < deadline:
            time.sleep(2)
            after = snapshot(lab)
        rss1 = {h: _rss_kb(lab.agent_pid(h)) for h in lab.spec.host_names}
        for nss in names.values():
            for ns in nss:
                netns.remove(ns)
        return before, after, {h: (rss0[h], rss1[h]) for h in rss0}
    finally:
        lab.down()


def load(endpoints: int, services: int, preset: str = "lan"
         ) -> tuple[dict[str, int], float, dict[str, int]]:
    """``preset``: the agents' gossip preset (the lab's default is "fast", made for quick
    tests; "lan" is what a deployment runs)."""
    lab = Lab(LabSpec(name=f"bl{os.getpid() % 1000}", hosts=5))
    lab.up(agent_args=["--gossip-preset", preset])
    try:
        time.sleep(3)
        idle_rss = {h: _rss_kb(lab.agent_pid(h)) for h in lab.spec.host_names}
        a = ApiClient(lab.spec.api_socket("h1"))
        a.post("/v1/networks", {"name": "app", "subnet": "10.150.0.0/20"})
        time.sleep(1)
        for i in range(services):
            a.post("/v1/services", {"name": f"svc{i}", "network": "app",
                                    "ports": ["80/tcp"]})
        hosts = lab.spec.host_names

        def attach(i: int) -> None:
            h = hosts[i % len(hosts)]
            ns = lab.spec.container_ns(f"e{i}")
            netns.create(ns)
            ApiClient(lab.spec.api_socket(h)).post("/v1/endpoints", {
                "netns": ns, "network": "app", "service": f"svc{i % services}"})
        with ThreadPoolExecutor(5) as pool:
            list(pool.map(attach, range(endpoints)))
        time.sleep(10)
        rss = {h: _rss_kb(lab.agent_pid(h)) for h in hosts}
        t0 = {h: _cpu_ticks(lab.agent_pid(h)) for h in hosts}
        time.sleep(IDLE_WINDOW)
        t1 = {h: _cpu_ticks(lab.agent_pid(h)) for h in hosts}
        cpu = max((t1[h] - t0[h]) / os.sysconf("SC_CLK_TCK") / IDLE_WINDOW * 100
                  for h in hosts)
        return rss, cpu, idle_rss
    finally:
        lab.down()
        for i in range(endpoints):  # made here, not by `lab run`: lab down does not know them
            netns.remove(lab.spec.container_ns(f"e{i}"))


def run() -> list[Result]:
    cycles = int(os.environ.get("MESHNET_CHURN", "1000"))
    before, after, rss = churn(cycles)
    leaked = diff(before, after)
    count = sum(len(v["gone"]) + len(v["new"]) for v in leaked.values())
    out = [Result("scale", f"objects changed after {cycles} attach/detach + 200 service "
                  "create/remove cycles (3 hosts), by identity", "objects", float(count),
                  "before the churn", 0.0, goal="0 leaked",
                  notes=f"churn: differences {leaked or 'none'}; objects compared: "
                        f"{sum(len(v) for v in after.values() if isinstance(v, list))}")]
    growth = max(r1 / r0 for r0, r1 in rss.values())
    out.append(Result("scale", "agent RSS after churn / after warm-up (worst host)", "x",
                      growth, "goal", 1.10, goal="<= 1.10",
                      notes=f"RSS kB (warm-up, after): {rss}"))
    lrss, cpu, idle = load(200, 100)
    out.append(Result("scale", "agent RSS, 200 endpoints + 100 services, 5 hosts, LAN preset "
                      "(worst)",
                      "MB", max(lrss.values()) / 1024, "idle agent, same lab",
                      max(idle.values()) / 1024, goal="<= 60 MB",
                      notes=f"RSS kB per host: {lrss}"))
    out.append(Result("scale", f"idle CPU of the busiest agent at that load ({IDLE_WINDOW} s, LAN preset)",
                      "%", cpu,
                      "goal", 1.0, goal="<= 1 %"))
    return out
