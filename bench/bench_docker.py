"""meshnet as Docker's network plugin, with real dockerds (a 2-host lab with --docker).

1. ``docker run --network NET`` to the first successful ping of a container on the other
   host (meshnet), against ``docker run --network BRIDGE`` to the first successful ping of
   a container on the same host over Docker's own bridge network (the floor: no overlay,
   no plugin, no remote peer). Same dockerd, image, command and run, interleaved. The
   clock: the host's CLOCK_BOOTTIME before the docker CLI starts; inside the container,
   /proc/uptime (the same clock, 10 ms resolution) when the ping answered.
2. Plugin call latency as dockerd sees it: a timing proxy sits on h1's plugin socket
   (the agent listens behind it) and times every call from request to answer; p50/p99 of
   CreateEndpoint and Join over MESHNET_BENCH_DOCKER_RUNS (default 200) ``docker run``s.
"""

from __future__ import annotations

import asyncio
import os
import re
import statistics
import threading
import time
from pathlib import Path

from bench.common import Result
from meshnet.lab import dockerd
from meshnet.lab.lab import Lab
from meshnet.lab.topology import LabSpec

IMAGE = dockerd.IMAGE
RUNS = int(os.environ.get("MESHNET_BENCH_DOCKER_RUNS", "200"))
PINGS = int(os.environ.get("MESHNET_BENCH_DOCKER_PINGS", "20"))
PING = ("until ping -c1 -W1 {t} >/dev/null 2>&1; do :; done; cut -d' ' -f1 /proc/uptime")


class TimingProxy:
    """Forwards HTTP/1.1 requests from ``listen`` to ``target`` one at a time per
    connection, and records (method, seconds from request sent to answer received)."""

    def __init__(self, listen: str, target: str) -> None:
        self.listen, self.target = listen, target
        self.calls: list[tuple[str, float]] = []
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.thread.start()
        self.ready.wait(10)

    def stop(self) -> None:
        async def shutdown() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        Path(self.listen).unlink(missing_ok=True)
        self.loop.run_until_complete(asyncio.start_unix_server(self._conn, self.listen))
        self.ready.set()
        self.loop.run_forever()

    @staticmethod
    async def _message(reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        m = re.search(rb"(?i)content-length: *(\d+)", head)
        return head + (await reader.readexactly(int(m.group(1))) if m else b"")

    async def _conn(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        sr, sw = await asyncio.open_unix_connection(self.target)
        try:
            while True:
                req = await self._message(cr)
                method = req.split(b" ", 2)[1].decode().lstrip("/")
                t0 = time.perf_counter()
                sw.write(req)
                await sw.drain()
                resp = await self._message(sr)
                self.calls.append((method, time.perf_counter() - t0))
                cw.write(resp)
                await cw.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            sw.close()
            cw.close()


def _uptime_now() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def _time_to_ping(spec: LabSpec, host: str, net: str, target: str) -> float:
    t0 = _uptime_now()
    r = dockerd.docker(spec, host, "run", "--rm", "--network", net, IMAGE, "sh", "-c",
                       PING.format(t=target), timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"docker run on {net}: {r.stderr.decode().strip()}")
    return float(r.stdout.decode().split()[-1]) - t0


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def _check(r) -> None:
    if r.returncode != 0:
        raise RuntimeError(r.stderr.decode().strip())


def run() -> list[Result]:
    spec = LabSpec(name=f"b{os.getpid() % 10000}", hosts=2, docker=True)
    lab = Lab(spec)
    proxy = None
    try:
        lab.up()
        real = str(spec.state_dir / "h1-plugin-real.sock")
        lab.stop_agent("h1")
        proxy = TimingProxy(dockerd.plugin_socket(spec, "h1"), real)
        proxy.start()
        lab.restart_agent("h1", [*lab.saved_agent_args(), "--docker-plugin-socket", real])
        _check(dockerd.docker(spec, "h1", "network", "create", "-d", "meshnet",
                              "--ipam-driver", "meshnet", "--subnet", "10.70.0.0/24", "mnet"))
        _check(dockerd.docker(spec, "h1", "network", "create", "bnet"))  # Docker's bridge
        deadline = time.monotonic() + 20
        while b"mnet" not in dockerd.docker(spec, "h2", "network", "ls").stdout:
            if time.monotonic() > deadline:
                raise RuntimeError("mnet did not appear on h2")
            time.sleep(0.1)
        _check(dockerd.docker(spec, "h2", "run", "-d", "--name", "target", "--network", "mnet",
                              IMAGE, "sleep", "36000"))
        _check(dockerd.docker(spec, "h1", "run", "-d", "--name", "btarget", "--network",
                              "bnet", IMAGE, "sleep", "36000"))
        _time_to_ping(spec, "h1", "mnet", "target")  # warm both paths (image, caches)
        _time_to_ping(spec, "h1", "bnet", "btarget")
        mesh, bridge = [], []
        for _ in range(PINGS):
            mesh.append(_time_to_ping(spec, "h1", "mnet", "target"))
            bridge.append(_time_to_ping(spec, "h1", "bnet", "btarget"))
        proxy.calls.clear()
        totals = []
        for _ in range(RUNS):
            t0 = time.perf_counter()
            _check(dockerd.docker(spec, "h1", "run", "--rm", "--network", "mnet", IMAGE, "true"))
            totals.append(time.perf_counter() - t0)
        calls = proxy.calls[:]
    finally:
        if proxy is not None:
            proxy.stop()
        lab.down()
    by: dict[str, list[float]] = {}
    for method, secs in calls:
        by.setdefault(method, []).append(secs * 1000)
    ce, join = by.get("NetworkDriver.CreateEndpoint", []), by.get("NetworkDriver.Join", [])
    ra = by.get("IpamDriver.RequestAddress", [])
    total_ms = [t * 1000 for t in totals]
    note_calls = ", ".join(f"{m.split('.')[-1]} {len(v)}x p50 {statistics.median(v):.1f} ms"
                           for m, v in sorted(by.items()))
    out = [
        Result("docker", "docker run --network to first ping, p50 (meshnet: other host)", "s",
               statistics.median(mesh), "Docker bridge network, same host",
               statistics.median(bridge), goal="close to the floor",
               samples={"meshnet": mesh, "anchor": bridge},
               notes=f"{PINGS} runs each, interleaved, same dockerd and image; the command "
                     "pings until the first answer; times from before the docker CLI "
                     "starts to the answer (CLOCK_BOOTTIME / the container's /proc/uptime)"),
        Result("docker", "docker run --network to first ping, p99 (meshnet: other host)", "s",
               _pct(mesh, 0.99), "Docker bridge network, same host", _pct(bridge, 0.99)),
        Result("docker", "CreateEndpoint latency p50 (as dockerd sees it)", "ms",
               statistics.median(ce), "the whole docker run --rm, p50",
               statistics.median(total_ms),
               notes=f"{RUNS} x `docker run --rm --network mnet IMAGE true` on h1; a proxy "
                     f"on the plugin socket times each call; calls seen: {note_calls}"),
        Result("docker", "CreateEndpoint latency p99", "ms", _pct(ce, 0.99),
               "the whole docker run --rm, p99", _pct(total_ms, 0.99)),
        Result("docker", "Join latency p50", "ms", statistics.median(join),
               "the whole docker run --rm, p50", statistics.median(total_ms)),
        Result("docker", "Join latency p99", "ms", _pct(join, 0.99),
               "the whole docker run --rm, p99", _pct(total_ms, 0.99)),
        Result("docker", "RequestAddress latency p50 (cluster-wide address claim)", "ms",
               statistics.median(ra), "the whole docker run --rm, p50",
               statistics.median(total_ms)),
    ]
    return out
