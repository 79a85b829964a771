"""meshnet and serf 0.9.4 side by side at N = 20, 50 and 100 hosts, LAN timings both sides.

Same box, same lab underlay (one namespace per host on the lab bridge), same N, same
method on each side, one after the other in one run:

* meshnet: `lab up` with ``--gossip-preset lan`` (memberlist's DefaultLANConfig, what
  ``serf agent`` runs); serf: ``serf agent -profile=lan`` in bare lab hosts.
* membership convergence after start: from the moment the last host's namespace is
  built (agents start right after; serf: the first agent's start, all namespaces built
  before) until hosts 1, N/2 and N each see N members alive (polled every 0.1 s, meshnet
  through its API, serf through ``serf members``).
* one change on all N: meshnet creates a network on h1 and polls every host's API
  (threads, 20 ms; the figure includes the pollers' own delay); serf sends a user event
  from its first agent, every agent's event handler writes the time. Median of 3.
* idle window (``MESHNET_BENCH_IDLE`` s, default 300), every agent up: false failures
  (meshnet: expired suspicions in the agents' metrics, with its false suspicions
  beside; serf: "EventMemberFailed" log lines), bytes sent per host per second on the
  host's underlay interface (meshnet: gossip, tables anti-entropy, TCP liveness checks;
  serf: gossip), median agent CPU and RSS. At the largest N, meshnet first attaches
  1,000 containers (10 per host, one network, each its own namespace running
  ``sleep``), so the window runs with 1,000 endpoints in the tables and kernel.
* failure detection: ``kill -9`` of the last agent, until every other agent marks it
  failed (meshnet: its log lines, ms timestamps; serf: its "EventMemberFailed" log
  lines, stamped as they arrive on the agent's stdout, i.e. before serf's 1-3 s event
  coalescing, which a handler would add). User events are sent ``-coalesce=false``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import statistics
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from bench.bench_cluster import _counters, _cpu, _rss_mb, _spread
from bench.bench_gossip import _tx_bytes, _wait, kill_and_detect, stop_serf
from bench.common import Result
from meshnet.api.client import ApiClient
from meshnet.lab.lab import Lab
from meshnet.lab.topology import LabSpec

SIZES = [int(x) for x in os.environ.get("MESHNET_BENCH_SIZES", "20,50,100").split(",")]
IDLE = float(os.environ.get("MESHNET_BENCH_IDLE", "300"))
CONTAINERS = int(os.environ.get("MESHNET_BENCH_CONTAINERS", "1000"))
ANCHOR = "serf 0.9.4 agents, LAN profile"


def _median_spread(spreads: list[list[float]]) -> tuple[float, float]:
    p50 = statistics.median(v[len(v) // 2] for v in spreads)
    p99 = statistics.median(v[min(len(v) - 1, int(len(v) * 0.99))] for v in spreads)
    return p50, p99


def _alive(lab: Lab, host: str) -> int:
    try:
        return sum(1 for m in ApiClient(lab.spec.api_socket(host), timeout=10).get(
            "/v1/members") if m["state"] == "alive")
    except Exception:
        return 0


def _attach_containers(lab: Lab, n_ctr: int) -> float:
    hosts = lab.spec.host_names
    ApiClient(lab.spec.api_socket("h1"), timeout=60).post(
        "/v1/networks", {"name": "many", "subnet": "10.128.0.0/20"})
    _wait(lambda: all(any(x["name"] == "many" for x in ApiClient(
        lab.spec.api_socket(h), timeout=30).get("/v1/networks")) for h in hosts), 60,
        "network 'many' everywhere")
    jobs = [(hosts[i % len(hosts)], f"c{i}") for i in range(n_ctr)]
    t0 = time.monotonic()

    def one(job: tuple[str, str]) -> None:
        host, name = job
        lab.run(host, name, ["sleep", "infinity"], {"network": "many", "name": name})

    with ThreadPoolExecutor(4) as pool:  # the agents, not the bench, should be the load
        list(pool.map(one, jobs))
    _wait(lambda: all(len(ApiClient(lab.spec.api_socket(h), timeout=60).get("/v1/endpoints"))
                      == n_ctr for h in (hosts[0], hosts[-1])), 300, "every endpoint known")
    return time.monotonic() - t0


def meshnet_side(n: int, with_containers: bool) -> dict[str, float]:
    lab = Lab(LabSpec(name=f"vm{os.getpid() % 1000}x{n}", hosts=n))
    marks: dict[str, float] = {}

    def progress(msg: str) -> None:
        if msg.startswith(f"host h{n}: netns"):
            marks["built"] = time.monotonic()

    lab.up(progress, agent_args=["--gossip-preset", "lan"])
    out: dict[str, float] = {}
    try:
        hosts = lab.spec.host_names
        watch = [hosts[0], hosts[n // 2], hosts[-1]]
        _wait(lambda: all(_alive(lab, h) == n for h in watch), 120, "meshnet members")
        out["converge"] = time.monotonic() - marks["built"]
        time.sleep(10)
        spreads = []
        for i in range(3):
            spreads.append(_spread(lab, f"spread{i}", f"10.{200 + i}.0.0/24"))
            time.sleep(2)
        out["p50"], out["p99"] = _median_spread(spreads)
        if with_containers:
            out["attach"] = _attach_containers(lab, CONTAINERS)
            time.sleep(10)
        pids = [lab.agent_pid(h) for h in hosts]
        ns = [lab.spec.host_ns(h) for h in hosts]
        c0, cpu0, tx0 = _counters(lab), [_cpu(p) for p in pids], [_tx_bytes(x) for x in ns]
        t1 = time.monotonic()
        time.sleep(IDLE)
        span = time.monotonic() - t1
        c1, cpu1, tx1 = _counters(lab), [_cpu(p) for p in pids], [_tx_bytes(x) for x in ns]
        out["suspicions"] = c1["suspicions"] - c0["suspicions"]
        out["failures"] = c1["failures"] - c0["failures"]
        out["bytes"] = (sum(tx1) - sum(tx0)) / n / span
        out["cpu"] = statistics.median((b - a) / span * 100 for a, b in zip(cpu0, cpu1,
                                                                             strict=True))
        out["rss"] = statistics.median(_rss_mb(p) for p in pids)
        out["detect"] = kill_and_detect(lab, hosts[-1], 120)
    finally:
        lab.down()
    return out


class Serf:
    """N serf agents in bare hosts of a lab; an event handler logs every event's time."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.lab = Lab(LabSpec(name=f"vs{os.getpid() % 1000}x{n}", hosts=1))
        self.lab.up()
        self.procs: list[subprocess.Popen] = []
        self.failed: list[tuple[float, str]] = []
        #: (arrival time, agent index, line) of every member event and suspicion logged
        self.seen: list[tuple[float, int, str]] = []
        self.dir = self.lab.spec.state_dir
        self.events = self.dir / "events.log"
        handler = self.dir / "handler.sh"
        handler.write_text(
            '#!/bin/sh\nbody=$(cat | head -c 300 | tr "\\n" " ")\n'
            f'echo "$(date +%s.%N) $SERF_SELF_NAME $SERF_EVENT $SERF_USER_EVENT $body" '
            f'>> {self.events}\n')
        handler.chmod(0o755)
        self.hosts = [f"h{k}" for k in range(2, n + 2)]
        self.ns = [self.lab.add_bare_host(h) for h in self.hosts]
        self.started = time.monotonic()
        for i, (h, ns) in enumerate(zip(self.hosts, self.ns, strict=True)):
            addr = self.lab.spec.host_addr(h)
            cmd = ["serf", "agent", f"-node=s{i}", f"-bind={addr}:7946",
                   "-rpc-addr=127.0.0.1:7373", "-profile=lan",
                   f"-event-handler=user={handler}"]
            if i:
                cmd.append(f"-join={self.lab.spec.host_addr(self.hosts[0])}")
            proc = subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{ns}", *cmd], stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, start_new_session=True)
            self.procs.append(proc)
            threading.Thread(target=self._read, args=(proc, i), daemon=True).start()
            if not i:
                time.sleep(0.3)

    def _read(self, proc: subprocess.Popen, i: int) -> None:
        # serf logs with one-second timestamps; stamp each line as it arrives instead.
        # "EventMemberFailed" is logged when memberlist declares the death, before the
        # agent's event coalescing (which would add 1-3 s to a handler's view); likewise
        # "EventMemberJoin"; memberlist logs "Suspect X has failed" when a probe fails.
        for raw in proc.stdout:  # type: ignore[union-attr]
            if b"EventMemberFailed" in raw:
                self.failed.append((time.time(), raw.decode(errors="replace")))
            if b"EventMember" in raw or b"Suspect" in raw:
                self.seen.append((time.time(), i, raw.decode(errors="replace")))

    def alive(self, i: int) -> int:
        r = subprocess.run(["nsenter", f"--net=/run/netns/{self.ns[i]}", "serf", "members",
                            "-rpc-addr=127.0.0.1:7373", "-status=alive"],
                           capture_output=True, text=True)
        return len(r.stdout.splitlines())

    def lines(self, kind: str, word: str = "") -> dict[str, float]:
        """First time each agent logged an event of ``kind`` mentioning ``word``."""
        out: dict[str, float] = {}
        if not self.events.exists():
            return out
        for line in self.events.read_text().splitlines():
            f = line.split()
            if len(f) >= 3 and f[2] == kind and (not word or word in f[3:]):
                out.setdefault(f[1], float(f[0]))
        return out

    def kill_last_and_detect(self, timeout: float = 120, index: int | None = None,
                             dead: int = 0) -> float:
        """``kill -9`` the last agent (or agent ``index``); seconds until every other one
        (but ``dead`` already killed) logged it failed ("EventMemberFailed", stamped as
        it arrived)."""
        index = self.n - 1 if index is None else index
        victim, seen = f"s{index}", len(self.failed)
        t0 = time.time()
        os.killpg(self.procs[index].pid, signal.SIGKILL)

        def marked() -> list[float] | None:
            times = [t for t, line in self.failed[seen:]
                     if re.search(rf"EventMemberFailed: {victim}\b", line)]
            return times if len(times) >= self.n - 1 - dead else None
        return max(_wait(marked, timeout, "every serf agent to mark the victim failed",
                         interval=0.2)) - t0

    def stop(self) -> None:
        stop_serf(self.procs, self.lab)


def serf_side(n: int) -> dict[str, float]:
    s = Serf(n)
    out: dict[str, float] = {}
    try:
        _wait(lambda: all(s.alive(i) == n for i in (0, n // 2, n - 1)), 120, "serf members",
              interval=0.1)
        out["converge"] = time.monotonic() - s.started
        time.sleep(10)
        spreads = []
        for i in range(3):
            name = f"spread{i}"
            t0 = time.time()
            subprocess.run(["nsenter", f"--net=/run/netns/{s.ns[0]}", "serf", "event",
                            "-rpc-addr=127.0.0.1:7373", "-coalesce=false", name, "x"], check=True,
                           capture_output=True)
            got = _wait(lambda name=name: (lambda d: d if len(d) >= n else None)(
                s.lines("user", name)), 60, "serf user event everywhere", interval=0.2)
            spreads.append(sorted(t - t0 for node, t in got.items() if node != "s0"))
            time.sleep(2)
        out["p50"], out["p99"] = _median_spread(spreads)
        pids = [p.pid for p in s.procs]
        failed0 = len(s.failed)
        cpu0, tx0 = [_cpu(p) for p in pids], [_tx_bytes(x) for x in s.ns]
        t1 = time.monotonic()
        time.sleep(IDLE)
        span = time.monotonic() - t1
        cpu1, tx1 = [_cpu(p) for p in pids], [_tx_bytes(x) for x in s.ns]
        out["failures"] = len(s.failed) - failed0
        out["bytes"] = (sum(tx1) - sum(tx0)) / n / span
        out["cpu"] = statistics.median((b - a) / span * 100 for a, b in zip(cpu0, cpu1,
                                                                             strict=True))
        out["rss"] = statistics.median(_rss_mb(p) for p in pids)
        out["detect"] = s.kill_last_and_detect()
    finally:
        s.stop()
    return out


def run() -> list[Result]:
    if not shutil.which("serf"):
        raise RuntimeError("serf is not installed (make deps)")
    out: list[Result] = []
    mins = f"{IDLE / 60:.0f} min"
    for n in SIZES:
        big = n == max(SIZES) and CONTAINERS > 0
        m = meshnet_side(n, big)
        s = serf_side(n)
        eps = f", {CONTAINERS} containers" if big else ""
        out += [
            Result("vs_serf", f"N={n}: membership converged after start", "s", m["converge"],
                   ANCHOR, s["converge"], goal="(figures)"),
            Result("vs_serf", f"N={n}: one change on every host, p99 over hosts", "s",
                   m["p99"], ANCHOR, s["p99"], goal="<= 1 s",
                   notes=f"N={n}: p50 over hosts meshnet {m['p50']:.2f} s, serf "
                         f"{s['p50']:.2f} s"),
            Result("vs_serf", f"N={n}: kill -9, all others mark it failed", "s", m["detect"],
                   ANCHOR, s["detect"], goal="(figures)"),
            Result("vs_serf", f"N={n}: false failures in {mins}{eps}", "", m["failures"],
                   ANCHOR, s["failures"], goal="0",
                   notes=f"N={n}: meshnet false suspicions in the window: "
                         f"{m['suspicions']:.0f}"),
            Result("vs_serf", f"N={n}: idle bytes sent per host per second{eps}", "B/s",
                   m["bytes"], ANCHOR, s["bytes"], goal="<= 1.5 x serf"),
            Result("vs_serf", f"N={n}: idle CPU per agent (median){eps}", "% of a core",
                   m["cpu"], ANCHOR, s["cpu"], goal="<= 0.5 %" if big else "(figures)"),
            Result("vs_serf", f"N={n}: RSS per agent (median){eps}", "MB", m["rss"], ANCHOR,
                   s["rss"], goal="<= 45 MB" if big else "(figures)"),
        ]
        if big:
            out.append(Result("vs_serf", f"N={n}: attach {CONTAINERS} containers, 4 at a time",
                              "s", m["attach"], "goal (no anchor)", 0,
                              goal="the lab holds 100 hosts x 10 containers"))
    return out
