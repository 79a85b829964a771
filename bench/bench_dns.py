"""Embedded DNS: meshnet's resolver vs dnsmasq and vs Docker's embedded resolver, all
measured with dnsperf in the same run.

* A namespace ``mn-dnsbench-<pid>`` (removed in ``finally``) with loopback up.
* meshnet: ``DnsServer`` in a subprocess inside the namespace, bound directly on
  127.0.0.11:53 (the NAT redirect is per-packet kernel work both would pay alike, so it
  is left out), serving a synthetic view: 200 services (100 vip, 100 dnsrr), 3 tasks
  each.
* dnsmasq: the same names from a hosts file (``--addn-hosts``) on 127.0.0.12:53,
  ``--local-ttl 600``.
* Query mix: for each service, ``svc``, ``tasks.svc`` and one task name (A).
* Throughput: ``dnsperf -c 4 -l 10`` (queries per second, lost queries). p99 latency:
  a separate 3 s ``dnsperf -v`` run per server (per-query latencies; verbose output
  slows dnsperf itself, equally for both).

    python -m bench.run dns
    MESHNET_BENCH_DNS_NO_DOCKER=1 python -m bench.bench_dns   # no Docker, docs untouched
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Result
from meshnet import netns

ROOT = Path(__file__).resolve().parent.parent
SERVICES = 200
TASKS = 3
MESH_ADDR, DNSMASQ_ADDR = "127.0.0.11", "127.0.0.12"
DURATION = 10
LAT_DURATION = 3


def synthetic():
    """(networks, endpoints, services, hosts lines, query names)."""
    from meshnet.model import Endpoint, Network, Service

    net = Network("bench", 4000, "10.200.0.0/16")
    eps, svcs, hosts, names = [], [], [], []
    base = ipaddress.ip_address("10.200.1.0")
    for s in range(SERVICES):
        svc = f"svc{s}"
        mode = "vip" if s % 2 == 0 else "dnsrr"
        vip = ipaddress.ip_address("10.200.250.0") + s if mode == "vip" else None
        svcs.append(Service(svc, "bench", vip=vip, mode=mode))
        if vip is not None:
            hosts.append(f"{vip} {svc}")
        for t in range(TASKS):
            ip = base + s * TASKS + t
            name = f"{svc}.{t}.task"
            eps.append(Endpoint("bench", ip, "02:00:00:00:00:01", "h1", name, service=svc))
            hosts.append(f"{ip} {name} tasks.{svc}" + ("" if vip else f" {svc}"))
        names += [svc, f"tasks.{svc}", f"{svc}.0.task"]
    return [net], eps, svcs, hosts, names


def serve(addr: str) -> None:
    """The meshnet side (run inside the namespace by run())."""
    from meshnet.dns.config import DnsConfig
    from meshnet.dns.records import RecordsView
    from meshnet.dns.sandbox import DnsSockets
    from meshnet.dns.server import DnsServer

    nets, eps, svcs, _, _ = synthetic()

    async def main() -> None:
        import socket

        server = DnsServer(DnsConfig(), [], RecordsView.build(nets, eps, svcs))
        await server.start()
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        udp.bind((addr, 53))
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.bind((addr, 53))
        tcp.listen(64)
        socks = DnsSockets(udp, tcp, 53, 53)
        await server.serve(socks.udp, socks.tcp, frozenset({"bench"}))
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


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


def _wait_udp(ns: str, server: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        r = subprocess.run(["dig", f"@{server}", "+time=1", "+tries=1", "+short", "svc0"],
                           capture_output=True, text=True, preexec_fn=lambda: netns.enter(ns))
        if r.stdout.strip():
            return
        time.sleep(0.2)
    raise RuntimeError(f"{server} does not answer in {ns}")


def docker_anchor(count: int, tmp: str) -> dict[str, float] | None:
    """Docker's embedded resolver (dockerd, a user-defined bridge network): the same
    number of local names (network aliases of one container), queried with the same
    dnsperf settings from inside a second container's namespace, at 127.0.0.11 (through
    Docker's own NAT redirect). None when no dockerd can be started here."""
    script = str(ROOT / "scripts" / "dockerd.sh")
    if subprocess.run([script, "start"], capture_output=True).returncode != 0:
        return None
    ours = subprocess.run([script, "owned"], capture_output=True).returncode == 0
    tag = f"mn-dnsbench-{os.getpid()}"
    names = [f"d{i}" for i in range(count)]
    qfile = Path(tmp, "docker-queries")
    qfile.write_text("".join(f"{n} A\n" for n in names))
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
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            r = subprocess.run(["dig", "@127.0.0.11", "+time=1", "+tries=1", "+short", "d0"],
                               capture_output=True, text=True,
                               preexec_fn=lambda: netns.enter(ns))
            if r.stdout.strip():
                break
            time.sleep(0.2)
        _dnsperf(ns, "127.0.0.11", str(qfile), 2)
        s = _summary(_dnsperf(ns, "127.0.0.11", str(qfile), DURATION))
        s["p99"] = _p99(_dnsperf(ns, "127.0.0.11", str(qfile), LAT_DURATION, verbose=True))
        return s
    finally:
        subprocess.run(["docker", "rm", "-f", f"{tag}-t", f"{tag}-c"], capture_output=True)
        subprocess.run(["docker", "network", "rm", tag], capture_output=True)
        if ours:
            subprocess.run([script, "stop"], capture_output=True)


def run() -> list[Result]:
    _ensure_dnsperf()
    ns = f"mn-dnsbench-{os.getpid()}"
    procs: list[subprocess.Popen] = []
    tmp = tempfile.mkdtemp(prefix="mn-dnsbench-")
    try:
        netns.create(ns)
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        _, _, _, hosts, names = synthetic()
        Path(tmp, "hosts").write_text("\n".join(hosts) + "\n")
        qfile = Path(tmp, "queries")
        qfile.write_text("".join(f"{n} A\n" for n in names))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "bench.bench_dns", "serve", MESH_ADDR], cwd=ROOT,
            stdout=subprocess.PIPE, preexec_fn=lambda: netns.enter(ns)))
        procs.append(subprocess.Popen(
            ["dnsmasq", "--no-daemon", "--no-resolv", "--no-hosts", "--keep-in-foreground",
             f"--addn-hosts={tmp}/hosts", f"--listen-address={DNSMASQ_ADDR}",
             "--bind-interfaces", "--port=53", "--local-ttl=600", "--cache-size=10000",
             f"--pid-file={tmp}/dnsmasq.pid"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=lambda: netns.enter(ns)))
        _wait_udp(ns, MESH_ADDR)
        _wait_udp(ns, DNSMASQ_ADDR)
        results = {}
        for who, addr in (("dnsmasq", DNSMASQ_ADDR), ("meshnet", MESH_ADDR)):
            _dnsperf(ns, addr, str(qfile), 2)  # warm-up
            s = _summary(_dnsperf(ns, addr, str(qfile), DURATION))
            s["p99"] = _p99(_dnsperf(ns, addr, str(qfile), LAT_DURATION, verbose=True))
            results[who] = s
        # MESHNET_BENCH_DNS_NO_DOCKER=1: meshnet vs dnsmasq only (quicker, while iterating)
        docker = None if os.environ.get("MESHNET_BENCH_DNS_NO_DOCKER") == "1" else \
            docker_anchor(len(names), tmp)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
        netns.remove(ns)
        shutil.rmtree(tmp, ignore_errors=True)
    m, d = results["meshnet"], results["dnsmasq"]
    mix = f"{SERVICES} services x (svc, tasks.svc, task name), dnsperf -c 4 -l {DURATION}"
    return [
        Result(bench="dns", metric=f"queries per second ({mix})", unit="qps",
               meshnet=m["qps"], anchor_name="dnsmasq (hosts file)", anchor=d["qps"],
               goal=">= 1.0 x dnsmasq (and >= 1.25 x Docker, measured separately)",
               higher_is_better=True,
               notes=f"lost: meshnet {m['lost']:.0f}/{m['sent']:.0f}, "
                     f"dnsmasq {d['lost']:.0f}/{d['sent']:.0f}; avg latency meshnet "
                     f"{m['avg'] * 1e3:.3f} ms, dnsmasq {d['avg'] * 1e3:.3f} ms; NOERROR "
                     f"meshnet {m['noerror_pct']}%, dnsmasq {d['noerror_pct']}%"),
        Result(bench="dns", metric=f"p99 latency (dnsperf -v, {LAT_DURATION} s, -c 4)",
               unit="ms", meshnet=m["p99"] * 1e3, anchor_name="dnsmasq (hosts file)",
               anchor=d["p99"] * 1e3, goal="no worse than Docker's",
               higher_is_better=False),
    ] + ([
        Result(bench="dns", metric=f"queries per second ({len(names)} local names, "
               f"dnsperf -c 4 -l {DURATION})", unit="qps", meshnet=m["qps"],
               anchor_name="Docker's embedded resolver (dockerd, user-defined network)",
               anchor=docker["qps"], goal=">= 1.25 x Docker", higher_is_better=True,
               notes=f"Docker lost {docker['lost']:.0f}/{docker['sent']:.0f}, NOERROR "
                     f"{docker['noerror_pct']}%; Docker is queried through its NAT redirect, "
                     "meshnet here directly (the redirect is the same kernel DNAT in both)"),
        Result(bench="dns", metric=f"p99 latency (dnsperf -v, {LAT_DURATION} s, -c 4)",
               unit="ms", meshnet=m["p99"] * 1e3,
               anchor_name="Docker's embedded resolver", anchor=docker["p99"] * 1e3,
               goal="no worse than Docker's"),
    ] if docker else [])


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "serve":
        serve(sys.argv[2])
    else:
        for r in run():
            print(r.to_dict())
