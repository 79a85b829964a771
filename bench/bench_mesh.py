"""The routing mesh and failover, on a 3-host lab, side by side in one run.

* Requests per second through the mesh (client outside the cluster -> published port on
  h2, which runs no task -> overlay -> the task on h1) vs straight to the task (a client
  container on h2 -> the task's overlay address). Both cross the overlay once; the server
  is busybox httpd, the load generator wrk (2 threads, 32 connections, 5 s).
* Failover: two tasks behind a VIP, one task's server killed; the time from the kill until
  no request goes to it any more (the last failed request), with meshnet's default health
  check (interval 5 s, timeout 2 s, 3 retries), a fast one (0.2 s, 0.2 s, 1), and Docker's
  defaults (interval 30 s, timeout 30 s, 3 retries) run through the same mechanism.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.common import Result
from meshnet.api.client import ApiClient
from meshnet.lab.lab import Lab
from meshnet.lab.topology import LabSpec

PY = [sys.executable, "-m", "meshnet.testing.traffic"]


def _wait(pred, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if pred():
                return
        except Exception:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"timed out: {what}")


def _wrk(ns: str, url: str) -> float:
    out = subprocess.run(["ip", "netns", "exec", ns, "wrk", "-t2", "-c32", "-d5s", url],
                         capture_output=True, text=True, timeout=60).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m:
        raise RuntimeError(f"wrk gave no figure: {out}")
    errors = re.search(r"Socket errors: (.*)", out)
    if errors:
        raise RuntimeError(f"wrk socket errors: {errors.group(1)}")
    return float(m.group(1))


def _setup(tag: str, lb: str = "auto") -> tuple[Lab, ApiClient]:
    lab = Lab(LabSpec(name=f"bm{os.getpid() % 1000}{tag}", hosts=3))
    lab.up(agent_args=("--lb", lb))
    a = ApiClient(lab.spec.api_socket("h1"))
    a.post("/v1/networks", {"name": "app", "subnet": "10.120.0.0/24"})
    for h in lab.spec.host_names:
        _wait(lambda h=h: ApiClient(lab.spec.api_socket(h)).get("/v1/networks"), 10, "network")
    return lab, a


def mesh_rps(lb: str = "auto") -> tuple[float, float]:
    lab, a = _setup(f"r{lb[0]}", lb)
    try:
        a.post("/v1/services", {"name": "web", "network": "app", "ports": ["80/tcp"]})
        www = lab.spec.state_dir / "www"
        www.mkdir()
        (www / "index.html").write_text("hello\n")
        ep = lab.run("h1", "web1", ["busybox", "httpd", "-f", "-p", "80", "-h", str(www)],
                     {"network": "app", "name": "web1", "service": "web", "aliases": []})
        lab.run("h2", "cl", ["sleep", "600"], {"network": "app", "name": "cl", "aliases": []})
        a.post("/v1/published", {"published": 8080, "target": 80})
        outside = lab.add_bare_host("h9")
        direct = f"http://{ep['endpoint']['ip']}/index.html"
        mesh = "http://192.0.2.2:8080/index.html"
        for ns, url in ((outside, mesh), (lab.spec.container_ns("cl"), direct)):
            _wait(lambda ns=ns, url=url: subprocess.run(
                ["ip", "netns", "exec", ns, *PY, "get", url, "1"], capture_output=True
            ).returncode == 0, 30, f"{url} answering")
        _wrk(outside, mesh)  # warm up both paths (ARP, conntrack)
        _wrk(lab.spec.container_ns("cl"), direct)
        ms, ds = [], []
        for _ in range(3):  # alternate, so a noisy moment of this 2-core box hits both
            ms.append(_wrk(outside, mesh))
            ds.append(_wrk(lab.spec.container_ns("cl"), direct))
        return sorted(ms)[1], sorted(ds)[1]
    finally:
        lab.down()


def failover(interval: float, timeout: float, retries: int) -> float:
    lab, a = _setup(f"f{int(interval * 10)}")
    try:
        svc = a.post("/v1/services", {
            "name": "fo", "network": "app", "ports": ["80/tcp"],
            "health": {"kind": "tcp", "interval": interval, "timeout": timeout,
                       "retries": retries}})
        for i in (1, 2):
            lab.run(f"h{i}", f"t{i}", [*PY, "http", "80", f"t{i}"],
                    {"network": "app", "name": f"t{i}", "service": "fo", "aliases": []})
        lab.run("h3", "cl", ["sleep", "600"], {"network": "app", "name": "cl", "aliases": []})
        time.sleep(max(2.0, interval * 2))
        span = interval * (retries + 1) + timeout + 5
        n = int(span / 0.05)
        client = subprocess.Popen(["ip", "netns", "exec", lab.spec.container_ns("cl"), *PY,
                                   "hits", f"http://{svc['vip']}/", str(n), "0.05"],
                                  stdout=subprocess.PIPE, text=True)
        time.sleep(1.0)
        pid = lab.containers()["t2"]["pid"]
        os.killpg(pid, signal.SIGKILL)
        killed = time.time()
        out, _ = client.communicate(timeout=span * 3 + 60)
        log = json.loads(out)["log"]
        failed = [t for t, body in log if body == "error" and t >= killed - 0.1]
        return (max(failed) - killed) if failed else 0.0
    finally:
        lab.down()


def run() -> list[Result]:
    m, d = mesh_rps()
    out = [Result("mesh", "requests/s, published port on a host without a task "
                  "(wrk -c32, median of 3)", "req/s", m, "straight to the task over the overlay", d,
                  goal=">= 0.9 x direct", higher_is_better=True)]
    m, d = mesh_rps("nftables")
    out.append(Result("mesh", "--lb nftables: requests/s, published port on a host without "
                      "a task (wrk -c32, median of 3)", "req/s", m,
                      "straight to the task over the overlay", d, goal=">= 0.9 x direct",
                      higher_is_better=True))
    docker = failover(30.0, 30.0, 3)
    default = failover(5.0, 2.0, 3)
    fast = failover(0.2, 0.2, 1)
    out.append(Result("mesh", "failover: task killed -> last request sent to it, meshnet "
                      "default health check (5 s x 3)", "s", default,
                      "same mechanism with Docker's defaults (30 s x 3, timeout 30 s)", docker,
                      goal="faster than Docker's defaults"))
    out.append(Result("mesh", "failover with --health-interval 0.2 --health-retries 1", "s",
                      fast, "Docker's defaults (as above)", docker, goal="(figure)"))
    return out


if __name__ == "__main__":
    print(Path(__file__).name, run())
