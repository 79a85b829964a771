"""The routing mesh and failover, on a 3-host lab, side by side in one run.

* Throughput through the mesh vs straight to the task, from the same client (a container
  on h2) with the same load generator (wrk, 1 thread, 32 connections, 5 s): the mesh path
  goes to the published port of h3, a host that runs no task (h2's gateway bridge ->
  underlay -> h3's ingress -> overlay -> the task on h1); the direct path goes to the
  task's overlay address (h2 -> overlay -> h1). The server is nginx (one worker, no
  logging, a fixed answer): not the bottleneck, unlike a server that forks per
  connection. Two loads: keep-alive requests/s, and new connections/s (``Connection:
  close`` on every request). Medians of 5 rounds, the two paths alternating within each
  round so a noisy moment of this 2-core box hits both.
* Failover: two tasks behind a VIP; one task's server is killed at a random moment of its
  health-check period, and the time from the kill to the last request that still went to
  it is measured (a client sends a request every 10 ms, one connection each: 10 ms
  resolution). ``MESHNET_BENCH_KILLS`` kills (default 10) per meshnet configuration
  (``MESHNET_BENCH_ANCHOR_KILLS``, default 3, for the anchor, whose kills take about three
  minutes each), a fresh task each time; median and p95. A kill that no request noticed is an error, not 0 s.
  Configurations: meshnet's default health check (interval 5 s, timeout 2 s, 3 retries),
  a fast one (0.2 s, 0.2 s, 1), and meshnet run with Docker's default intervals (30 s,
  timeout 30 s, 3 retries): the anchor is meshnet's own mechanism with Docker's numbers,
  not Docker.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import statistics
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


def _wrk(ns: str, url: str, close: bool = False) -> float:
    """Requests/s from wrk in NS (1 thread, 32 connections, 5 s); ``close``: a new
    connection per request."""
    cmd = ["ip", "netns", "exec", ns, "wrk", "-t1", "-c32", "-d5s", url]
    if close:
        cmd[5:5] = ["-H", "Connection: close"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m:
        raise RuntimeError(f"wrk gave no figure: {out}")
    errors = re.search(r"Socket errors: (.*)", out)
    if errors and not close:
        raise RuntimeError(f"wrk socket errors: {errors.group(1)}")
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        raise RuntimeError(f"wrk: {non2xx.group(1)} bad answers")
    return float(m.group(1))


NGINX_CONF = """worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
user root;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 1000000;
    server {{
        listen 80 reuseport;
        location / {{ return 200 "hello\\n"; }}
    }}
}}
"""


def _setup(tag: str, lb: str = "auto") -> tuple[Lab, ApiClient]:
    lab = Lab(LabSpec(name=f"bm{os.getpid() % 1000}{tag}", hosts=3))
    lab.up(agent_args=("--lb", lb))
    a = ApiClient(lab.spec.api_socket("h1"))
    a.post("/v1/networks", {"name": "app", "subnet": "10.120.0.0/24"})
    for h in lab.spec.host_names:
        _wait(lambda h=h: ApiClient(lab.spec.api_socket(h)).get("/v1/networks"), 10, "network")
    return lab, a


def mesh_rps(lb: str = "auto") -> dict[str, list[float]]:
    lab, a = _setup(f"r{lb[0]}", lb)
    try:
        a.post("/v1/services", {"name": "web", "network": "app", "ports": ["80/tcp"]})
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        if not os.path.exists(nginx):
            raise RuntimeError("nginx is not installed (make deps installs nginx-light)")
        d = lab.spec.state_dir / "nginx"
        d.mkdir()
        (d / "nginx.conf").write_text(NGINX_CONF.format(dir=d))
        ep = lab.run("h1", "web1", [nginx, "-c", str(d / "nginx.conf")],
                     {"network": "app", "name": "web1", "service": "web", "aliases": []})
        lab.run("h2", "cl", ["sleep", "600"], {"network": "app", "name": "cl", "aliases": []})
        a.post("/v1/published", {"published": 8080, "target": 80})
        client = lab.spec.container_ns("cl")
        paths = {"mesh": f"http://{lab.spec.host_addr('h3')}:8080/",
                 "direct": f"http://{ep['endpoint']['ip']}/"}
        for url in paths.values():
            _wait(lambda url=url: subprocess.run(
                ["ip", "netns", "exec", client, *PY, "get", url, "1"], capture_output=True
            ).returncode == 0, 30, f"{url} answering")
        for url in paths.values():  # warm up both paths (ARP, conntrack)
            _wrk(client, url)
        out: dict[str, list[float]] = {f"{p} {k}": [] for p in paths for k in ("ka", "new")}
        for _ in range(5):
            for kind in ("ka", "new"):
                for p, url in paths.items():
                    out[f"{p} {kind}"].append(_wrk(client, url, close=kind == "new"))
        return out
    finally:
        lab.down()


def failover(interval: float, timeout: float, retries: int, kills: int) -> list[float]:
    """Seconds from each kill to the last request that still went to the killed task."""
    lab, a = _setup(f"f{int(interval * 10)}")
    rng = random.Random(7)
    try:
        svc = a.post("/v1/services", {
            "name": "fo", "network": "app", "ports": ["80/tcp"],
            "health": {"kind": "tcp", "interval": interval, "timeout": timeout,
                       "retries": retries}})
        lab.run("h1", "t1", [*PY, "http", "80", "t1"],
                {"network": "app", "name": "t1", "service": "fo", "aliases": []})
        lab.run("h3", "cl", ["sleep", "3600"], {"network": "app", "name": "cl", "aliases": []})
        client = lab.spec.container_ns("cl")
        url = f"http://{svc['vip']}/"
        out = []
        for i in range(kills):
            name = f"t2k{i}"
            lab.run("h2", name, [*PY, "http", "80", name],
                    {"network": "app", "name": name, "service": "fo", "aliases": []})

            def answering(name=name) -> bool:
                r = subprocess.run(["ip", "netns", "exec", client, *PY, "hits", url, "6"],
                                   capture_output=True, text=True)
                return name in json.loads(r.stdout)["counts"]
            _wait(answering, interval * (retries + 2) + 30, f"{name} in the VIP's rotation")
            span = interval * (retries + 1) + timeout + 5
            proc = subprocess.Popen(["ip", "netns", "exec", client, *PY, "hitsfor", url,
                                     str(span), "0.01"], stdout=subprocess.PIPE, text=True)
            time.sleep(0.5 + rng.uniform(0, interval))  # a random phase of the checks
            os.killpg(lab.containers()[name]["pid"], signal.SIGKILL)
            killed = time.time()
            log = json.loads(proc.communicate(timeout=span * 4 + 60)[0])["log"]
            failed = [t for t, body in log if body == "error" and t >= killed - 0.05]
            if not failed:
                raise RuntimeError(f"kill {i}: no request went to the killed task")
            out.append(max(failed) - killed)
        return out
    finally:
        lab.down()


def _p95(values: list[float]) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(round(0.95 * (len(v) - 1))))]


def run() -> list[Result]:
    out = []
    for lb, label in (("auto", ""), ("nftables", "--lb nftables: ")):
        r = mesh_rps(lb)
        for kind, what, unit in (("ka", "keep-alive requests/s", "req/s"),
                                 ("new", "new connections/s", "conn/s")):
            m, d = statistics.median(r[f"mesh {kind}"]), statistics.median(r[f"direct {kind}"])
            out.append(Result(
                "mesh", f"{label}{what} through a published port on a host without a task "
                "(wrk -c32 from a container, nginx, median of 5 alternating rounds)", unit, m,
                "the same client straight to the task over the overlay", d,
                goal=">= 0.9 x direct", higher_is_better=True,
                notes=f"{label}{kind}: mesh {[round(x) for x in r[f'mesh {kind}']]}, direct "
                      f"{[round(x) for x in r[f'direct {kind}']]}"))
    kills = int(os.environ.get("MESHNET_BENCH_KILLS", "10"))
    # the anchor's kills take ~3 min each (its checks are 30 s apart): fewer of them
    anchor_kills = int(os.environ.get("MESHNET_BENCH_ANCHOR_KILLS", "3"))
    docker = failover(30.0, 30.0, 3, anchor_kills)
    default = failover(5.0, 2.0, 3, kills)
    fast = failover(0.2, 0.2, 1, kills)
    anchor = (f"meshnet with Docker's default intervals (30 s x 3, timeout 30 s), median of "
              f"{anchor_kills} kills")
    for name, vals in (("default health check (5 s x 3, timeout 2 s)", default),
                       ("--health-interval 0.2 --health-timeout 0.2 --health-retries 1",
                        fast)):
        out.append(Result("mesh", f"failover, {name}: kill -> last request to the task, "
                          f"median of {kills} kills", "s", statistics.median(vals), anchor,
                          statistics.median(docker), goal="(figures)",
                          notes=f"{name}: p95 {_p95(vals):.3f} s; anchor p95 "
                                f"{_p95(docker):.3f} s"))
    return out


if __name__ == "__main__":
    print(Path(__file__).name, run())
