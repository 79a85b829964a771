"""Embedded DNS as users run it, against dnsmasq, unbound and Docker's embedded resolver,
all measured with dnsperf in the same run, with the same query file.

* meshnet: a one-host lab (``lab up``, default settings), a network, SERVICES services
  (half VIP, half DNS round robin), TASKS tasks each (namespaces attached through the
  agent's API), and a client container attached the same way. dnsperf runs in the client
  container against 127.0.0.11:53, i.e. through the NAT redirect to the sockets the agent
  serves there, with default socket buffers: what a container's resolver sees.
* dnsmasq (hosts file, ``--local-ttl 600``) and unbound (``num-threads: 2``,
  ``local-data``) hold the same names and addresses and listen on 127.0.0.12 / .13
  inside the same client container: the same client, the same query file.
* Docker's embedded resolver (dockerd from ``scripts/dockerd.sh``, a user-defined
  network): one container holds every query name as a network alias; dnsperf runs in a
  second container against 127.0.0.11 (Docker's own NAT redirect), same query file.
* Query file: for each service ``svc``, ``tasks.svc`` and one task name (A).
* Per server: queries/s (``dnsperf -c 4 -l 10``), lost queries, the p99 latency of a
  separate 3 s ``dnsperf -v`` run, and the CPU time of the server's process(es) per
  query (utime + stime over the 10 s run / queries answered; dnsperf shares the two
  cores with every server, so a server's qps is bounded by the box, its CPU per query
  is not).

    python -m bench.run dns
    MESHNET_BENCH_DNS_NO_DOCKER=1 python -m bench.bench_dns   # no Docker, docs untouched
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import Result
from meshnet import netns

ROOT = Path(__file__).resolve().parent.parent
SERVICES = 100
TASKS = 3
MESH_ADDR, DNSMASQ_ADDR, UNBOUND_ADDR = "127.0.0.11", "127.0.0.12", "127.0.0.13"
DURATION = 10
LAT_DURATION = 3
SUBNET = "10.200.0.0/16"


def names_and_records() -> tuple[list[str], dict[str, list[str]]]:
    """The query names, and name -> addresses as meshnet answers them (filled in from the
    agent's own allocation, see run())."""
    names = []
    for s in range(SERVICES):
        names += [f"svc{s}", f"tasks.svc{s}", f"t{s}x0"]
    return names, {}


def _dnsperf(ns: str, server: str, qfile: str, seconds: int, verbose: bool = False) -> str:
    argv = ["dnsperf", "-s", server, "-d", qfile, "-c", "4", "-l", str(seconds)]
    if verbose:
        argv.append("-v")
    res = subprocess.run(argv, capture_output=True, text=True, check=True,
                         preexec_fn=lambda: netns.enter(ns))
    return res.stdout


def _summary(out: str) -> dict[str, float]:
    def num(pattern: str) -> float:
        m = re.search(pattern, out)
        return float(m.group(1)) if m else float("nan")
    return {"qps": num(r"Queries per second:\s+([\d.]+)"),
            "sent": num(r"Queries sent:\s+(\d+)"),
            "lost": num(r"Queries lost:\s+(\d+)"),
            "avg": num(r"Average Latency \(s\):\s+([\d.]+)"),
            "noerror_pct": num(r"NOERROR \d+ \(([\d.]+)%\)")}


def _p99(out: str) -> float:
    lat = sorted(float(m.group(1)) for m in re.finditer(r"^> \S+ .* ([\d.]+)$", out, re.M))
    return lat[int(len(lat) * 0.99)] if lat else float("nan")


def _ensure_dnsperf() -> None:
    if shutil.which("dnsperf") is None:
        subprocess.run(["apt-get", "install", "-y", "-qq", "dnsperf"], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def _wait_udp(ns: str, server: str, name: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        r = subprocess.run(["dig", f"@{server}", "+time=1", "+tries=1", "+short", name],
                           capture_output=True, text=True, preexec_fn=lambda: netns.enter(ns))
        if r.stdout.strip():
            return
        time.sleep(0.2)
    raise RuntimeError(f"{server} does not answer in {ns}")


def _cpu_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(f[11]) + int(f[12])  # utime, stime (whole process: every thread)
    return total


def measure(ns: str, server: str, qfile: str, pids: list[int]) -> dict[str, float]:
    """Warm-up, then qps/lost over DURATION with the servers' CPU, then p99."""
    _dnsperf(ns, server, qfile, 2)
    hz = os.sysconf("SC_CLK_TCK")
    c0 = _cpu_ticks(pids)
    s = _summary(_dnsperf(ns, server, qfile, DURATION))
    cpu = (_cpu_ticks(pids) - c0) / hz
    answered = s["sent"] - s["lost"]
    s["cpu_us"] = cpu / answered * 1e6 if answered else float("nan")
    s["p99"] = _p99(_dnsperf(ns, server, qfile, LAT_DURATION, verbose=True))
    return s


def unbound_conf(tmp: str, records: dict[str, list[str]]) -> str:
    lines = ["server:", f"  interface: {UNBOUND_ADDR}", "  port: 53", "  num-threads: 2",
             "  do-daemonize: no", "  username: \"\"", "  chroot: \"\"",
             f"  directory: \"{tmp}\"", f"  pidfile: \"{tmp}/unbound.pid\"",
             "  use-syslog: no", "  logfile: \"\"", "  verbosity: 0",
             "  access-control: 127.0.0.0/8 allow", "  do-ip6: no"]
    for name, addrs in sorted(records.items()):
        lines.append(f"  local-zone: \"{name}.\" static")
        lines += [f"  local-data: \"{name}. 600 IN A {a}\"" for a in addrs]
    return "\n".join(lines) + "\n"


def docker_anchor(names: list[str], qfile: str) -> dict[str, float] | None:
    """Docker's embedded resolver (dockerd, a user-defined bridge network): every query
    name is a network alias of one container, queried from a second container's
    namespace at 127.0.0.11 (through Docker's own NAT redirect). None when no dockerd
    can be started here."""
    script = str(ROOT / "scripts" / "dockerd.sh")
    if subprocess.run([script, "start"], capture_output=True).returncode != 0:
        return None
    ours = subprocess.run([script, "owned"], capture_output=True).returncode == 0
    tag = f"mn-dnsbench-{os.getpid()}"
    try:
        subprocess.run(["docker", "network", "create", tag], check=True, capture_output=True)
        aliases = [a for n in names for a in ("--network-alias", n)]
        subprocess.run(["docker", "run", "-d", "--name", f"{tag}-t", "--network", tag,
                        *aliases, "meshnet-test/busybox", "sleep", "3600"], check=True,
                       capture_output=True)
        subprocess.run(["docker", "run", "-d", "--name", f"{tag}-c", "--network", tag,
                        "meshnet-test/busybox", "sleep", "3600"], check=True,
                       capture_output=True)
        pid = subprocess.run(["docker", "inspect", "-f", "{{.State.Pid}}", f"{tag}-c"],
                             capture_output=True, text=True, check=True).stdout.strip()
        ns = f"/proc/{pid}/ns/net"
        _wait_udp(ns, "127.0.0.11", names[1])
        dockerd = [int(p) for p in subprocess.run(["pidof", "dockerd"], capture_output=True,
                                                  text=True).stdout.split()]
        return measure(ns, "127.0.0.11", qfile, dockerd)
    finally:
        subprocess.run(["docker", "rm", "-f", f"{tag}-t", f"{tag}-c"], capture_output=True)
        subprocess.run(["docker", "network", "rm", tag], capture_output=True)
        if ours:
            subprocess.run([script, "stop"], capture_output=True)


def run() -> list[Result]:
    from meshnet.api.client import ApiClient
    from meshnet.lab.lab import Lab
    from meshnet.lab.topology import LabSpec

    _ensure_dnsperf()
    if shutil.which("unbound") is None:
        raise RuntimeError("unbound is not installed (make bench installs it)")
    names, records = names_and_records()
    tmp = tempfile.mkdtemp(prefix="mn-dnsbench-")
    lab = Lab(LabSpec(name=f"bd{os.getpid() % 1000}", hosts=1))
    procs: list[subprocess.Popen] = []
    made: list[str] = []
    results: dict[str, dict[str, float]] = {}
    try:
        lab.up()
        a = ApiClient(lab.spec.api_socket("h1"), timeout=30)
        a.post("/v1/networks", {"name": "bench", "subnet": SUBNET})
        for s in range(SERVICES):
            svc = a.post("/v1/services", {"name": f"svc{s}", "network": "bench",
                                          "mode": "vip" if s % 2 == 0 else "dnsrr",
                                          "ports": ["80/tcp"]})
            tasks = []
            for t in range(TASKS):
                ns = lab.spec.container_ns(f"t{s}x{t}")
                netns.create(ns)
                made.append(ns)
                ep = a.post("/v1/endpoints", {"netns": ns, "network": "bench",
                                              "name": f"t{s}x{t}", "service": f"svc{s}"})
                records[f"t{s}x{t}"] = [ep["ip"]]
                tasks.append(ep["ip"])
            records[f"tasks.svc{s}"] = tasks
            records[f"svc{s}"] = [svc["vip"]] if svc.get("vip") else tasks
        client = lab.spec.container_ns("client")
        netns.create(client)
        made.append(client)
        a.post("/v1/endpoints", {"netns": client, "network": "bench", "name": "client"})
        qfile = Path(tmp, "queries")
        qfile.write_text("".join(f"{n} A\n" for n in names))
        hosts = []
        for name, addrs in records.items():
            hosts += [f"{ip} {name}" for ip in addrs]
        Path(tmp, "hosts").write_text("\n".join(hosts) + "\n")
        Path(tmp, "unbound.conf").write_text(unbound_conf(tmp, records))
        subprocess.run(["ip", "-n", client, "link", "set", "lo", "up"], check=True)
        procs.append(subprocess.Popen(
            ["dnsmasq", "--no-daemon", "--no-resolv", "--no-hosts", "--keep-in-foreground",
             f"--addn-hosts={tmp}/hosts", f"--listen-address={DNSMASQ_ADDR}",
             "--bind-interfaces", "--port=53", "--local-ttl=600", "--cache-size=10000",
             f"--pid-file={tmp}/dnsmasq.pid", "--user=root"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=lambda: netns.enter(client)))
        procs.append(subprocess.Popen(
            ["unbound", "-d", "-c", f"{tmp}/unbound.conf"], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, preexec_fn=lambda: netns.enter(client)))
        for addr in (MESH_ADDR, DNSMASQ_ADDR, UNBOUND_ADDR):
            _wait_udp(client, addr, names[1])
        for who, addr, pids in (("meshnet", MESH_ADDR, [lab.agent_pid("h1")]),
                                ("dnsmasq", DNSMASQ_ADDR, [procs[0].pid]),
                                ("unbound", UNBOUND_ADDR, [procs[1].pid])):
            results[who] = measure(client, addr, str(qfile), pids)
            if results[who]["noerror_pct"] != 100.0:
                raise RuntimeError(f"{who} did not answer every query NOERROR: {results[who]}")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
        for ns in made:
            netns.remove(ns)
        lab.down()
    # MESHNET_BENCH_DNS_NO_DOCKER=1: without Docker (quicker, while iterating)
    docker = None if os.environ.get("MESHNET_BENCH_DNS_NO_DOCKER") == "1" else \
        docker_anchor(names, str(qfile))
    shutil.rmtree(tmp, ignore_errors=True)
    m = results["meshnet"]
    mix = (f"{len(names)} names: {SERVICES} x (svc, tasks.svc, a task), dnsperf -c 4 "
           f"-l {DURATION} in a container")
    anchors = [("dnsmasq", "dnsmasq (hosts file), same client and queries", ">= 1.0 x"),
               ("unbound", "unbound (num-threads 2, local-data), same client and queries",
                "(figures)")]
    if docker:
        results["docker"] = docker
        anchors.append(("docker", "Docker's embedded resolver (127.0.0.11 in a container, "
                        "every name an alias)", ">= 1.25 x"))
    out = []
    for who, label, goal in anchors:
        d = results[who]
        out += [
            Result(bench="dns", metric=f"queries per second, 127.0.0.11 through the NAT "
                   f"({mix})", unit="qps", meshnet=m["qps"], anchor_name=label,
                   anchor=d["qps"], goal=f"{goal} {who}" if "x" in goal else goal,
                   higher_is_better=True,
                   notes=f"{who}: lost {d['lost']:.0f}/{d['sent']:.0f} (meshnet "
                         f"{m['lost']:.0f}/{m['sent']:.0f}); NOERROR {d['noerror_pct']}%"),
            Result(bench="dns", metric="server CPU per query (process utime+stime / "
                   "answers)", unit="us", meshnet=m["cpu_us"], anchor_name=label,
                   anchor=d["cpu_us"], goal="(figures)"),
            Result(bench="dns", metric=f"p99 latency (dnsperf -v, {LAT_DURATION} s, -c 4)",
                   unit="ms", meshnet=m["p99"] * 1e3, anchor_name=label,
                   anchor=d["p99"] * 1e3, goal="no worse than Docker's"),
        ]
    return out


if __name__ == "__main__":
    for r in run():
        print(r.to_dict())
