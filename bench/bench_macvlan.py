"""macvlan throughput: iperf3 between containers on two lab hosts, on a macvlan network,
against the same two hosts over the underlay (host namespace to host namespace: the
ceiling) and against an overlay network (VXLAN), in the same run.

Each path: an iperf3 server on h2's side, the client on h1's side, TCP, one stream,
MESHNET_BENCH_IPERF_SECONDS (default 3) per round, MESHNET_BENCH_IPERF_ROUNDS (default 5)
rounds with the three paths interleaved; the median of the rounds. The lab's underlay is
a veth pair per host on one bridge, so the "wire" is memory: what differs between paths
is only what each adds (macvlan: a lookup on the parent; overlay: VXLAN encapsulation).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time

from bench.common import Result
from meshnet.api.client import ApiClient
from meshnet.lab.lab import Lab
from meshnet.lab.topology import LabSpec

SECONDS = int(os.environ.get("MESHNET_BENCH_IPERF_SECONDS", "3"))
ROUNDS = int(os.environ.get("MESHNET_BENCH_IPERF_ROUNDS", "5"))


def _server(ns: str, port: int) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", ns, "iperf3", "-s", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _client(ns: str, addr: str, port: int) -> float:
    for _ in range(20):
        r = subprocess.run(["ip", "netns", "exec", ns, "iperf3", "-c", addr, "-p", str(port),
                            "-t", str(SECONDS), "-J"], capture_output=True, text=True,
                           timeout=SECONDS + 30)
        if r.returncode == 0:
            end = json.loads(r.stdout).get("end", {})
            if "sum_received" in end:  # (a run cut short by a starting server has none)
                return end["sum_received"]["bits_per_second"] / 1e9
        time.sleep(0.2)  # the server is still starting
    raise RuntimeError(f"iperf3 to {addr}:{port} from {ns}: {r.stdout[-300:]} {r.stderr}")


def run() -> list[Result]:
    lab = Lab(LabSpec(name=f"m{os.getpid() % 10000}", hosts=2))
    servers: list[subprocess.Popen] = []
    try:
        lab.up()
        a = ApiClient(lab.spec.api_socket("h1"))
        a.post("/v1/networks", {"name": "lan", "subnet": "192.0.2.0/24", "driver": "macvlan",
                                "gateway": "192.0.2.254", "ip_range": "192.0.2.128/26"})
        a.post("/v1/networks", {"name": "ov", "subnet": "10.80.0.0/24"})
        time.sleep(1.0)
        ips = {}
        for host, name, net in (("h1", "m1", "lan"), ("h2", "m2", "lan"), ("h1", "o1", "ov"),
                                ("h2", "o2", "ov")):
            ips[name] = lab.run(host, name, ["sleep", "3600"],
                                {"network": net, "name": name, "aliases": []})["endpoint"]["ip"]
        ns = lab.spec.container_ns
        paths = {"underlay": (lab.spec.host_ns("h1"), lab.spec.host_ns("h2"),
                              lab.spec.host_addr("h2"), 5201),
                 "macvlan": (ns("m1"), ns("m2"), ips["m2"], 5202),
                 "overlay": (ns("o1"), ns("o2"), ips["o2"], 5203)}
        for _client_ns, server_ns, _addr, port in paths.values():
            servers.append(_server(server_ns, port))
        got: dict[str, list[float]] = {k: [] for k in paths}
        for _ in range(ROUNDS):
            for name, (client_ns, _s, addr, port) in paths.items():
                got[name].append(_client(client_ns, addr, port))
    finally:
        for s in servers:
            s.kill()
            s.wait()
        lab.down()
    med = {k: statistics.median(v) for k, v in got.items()}
    note = (f"iperf3 TCP, 1 stream, {SECONDS} s x {ROUNDS} rounds per path, interleaved; "
            "medians; h1 -> h2 of a 2-host lab")
    return [
        Result("macvlan", "throughput between containers on two hosts, macvlan", "Gbit/s",
               med["macvlan"], "the same hosts over the underlay", med["underlay"],
               goal="~1.0x the underlay", higher_is_better=True,
               samples={k: v for k, v in got.items()}, notes=note),
        Result("macvlan", "throughput, macvlan vs the overlay (VXLAN)", "Gbit/s",
               med["macvlan"], "overlay network, same hosts", med["overlay"],
               higher_is_better=True),
    ]
