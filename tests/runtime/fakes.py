"""In-memory Docker daemon and agent for the watcher tests (no sockets, no kernel)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from meshnet.errors import Conflict, NotFound
from meshnet.runtime.docker import DockerUnavailable

_DOWN = object()


class FakeStream:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.closed = False

    def __aiter__(self):
        return self._iter()

    async def _iter(self):
        while True:
            item = await self.queue.get()
            if item is _DOWN:
                raise DockerUnavailable("event stream closed by dockerd")
            yield item

    async def close(self) -> None:
        self.closed = True


class FakeDocker:
    """Containers as ``inspect`` answers; events go to every open stream."""

    def __init__(self) -> None:
        self.records: dict[str, dict[str, Any]] = {}
        self.streams: list[FakeStream] = []
        self.up = True
        self.next_pid = 1000
        self.connects = 0
        self.lists = 0
        self._ids = 0

    # --- driving the daemon ----------------------------------------------------------------

    def run(self, name: str, labels: Mapping[str, str] | None = None, mode: str = "none",
            emit: bool = True) -> str:
        self._ids += 1
        cid = f"{self._ids:02d}" + "c" * 62
        self.records[cid] = {
            "Id": cid, "Name": f"/{name}",
            "Config": {"Labels": dict(labels or {})},
            "HostConfig": {"NetworkMode": mode},
            "ResolvConfPath": f"/var/lib/docker/containers/{cid}/resolv.conf",
            "State": {"Running": False, "Pid": 0, "Status": "created"},
        }
        self.start(cid, emit)
        return cid

    def start(self, cid: str, emit: bool = True) -> None:
        self.next_pid += 1
        self.records[cid]["State"] = {"Running": True, "Pid": self.next_pid,
                                      "Status": "running"}
        if emit:
            self.emit("start", cid)

    def die(self, cid: str, emit: bool = True) -> None:
        self.records[cid]["State"] = {"Running": False, "Pid": 0, "Status": "exited"}
        if emit:
            self.emit("die", cid)
            self.emit("stop", cid)

    def remove(self, cid: str, emit: bool = True) -> None:
        if self.records[cid]["State"]["Running"]:
            self.die(cid, emit)
        del self.records[cid]
        if emit:
            self.emit("destroy", cid)

    def emit(self, action: str, cid: str) -> None:
        rec = self.records.get(cid, {})
        attrs = {"name": rec.get("Name", "/x").lstrip("/"),
                 **((rec.get("Config") or {}).get("Labels") or {})}
        event = {"Type": "container", "Action": action, "status": action, "id": cid,
                 "Actor": {"ID": cid, "Attributes": attrs}}
        for s in self.streams:
            s.queue.put_nowait(event)

    def stop_daemon(self) -> None:
        self.up = False
        for s in self.streams:
            s.queue.put_nowait(_DOWN)
        self.streams = []

    def start_daemon(self) -> None:
        self.up = True

    def alive(self, netns: str) -> bool:
        return any(f"/proc/{r['State']['Pid']}/ns/net" == netns
                   for r in self.records.values() if r["State"]["Running"])

    # --- the DockerPort ---------------------------------------------------------------

    def _check(self) -> None:
        if not self.up:
            raise DockerUnavailable("cannot reach dockerd: connection refused")

    async def containers(self, labels: Sequence[str] = (), all: bool = False):
        self._check()
        self.lists += 1
        out = []
        for r in self.records.values():
            if not all and not r["State"]["Running"]:
                continue
            if any(k not in r["Config"]["Labels"] for k in labels):
                continue
            out.append({"Id": r["Id"], "Names": [r["Name"]], "Labels": r["Config"]["Labels"],
                        "State": "running" if r["State"]["Running"] else "exited"})
        return out

    async def inspect(self, cid: str):
        self._check()
        rec = self.records.get(cid)
        return None if rec is None else {**rec, "State": dict(rec["State"])}

    async def events(self, filters):
        self._check()
        self.connects += 1
        s = FakeStream()
        self.streams.append(s)
        return s

    async def close(self) -> None:
        pass


@dataclass
class Ep:
    netns: str
    network: str
    name: str
    service: str = ""
    aliases: tuple[str, ...] = ()
    ip: str = ""


@dataclass
class FakeAgent:
    docker: FakeDocker
    networks: set[str] = field(default_factory=lambda: {"appnet", "other"})
    node: str = "h1"
    endpoints: dict[tuple[str, str], Ep] = field(default_factory=dict)
    attaches: list[tuple[str, str]] = field(default_factory=list)
    detaches: list[tuple[str, str]] = field(default_factory=list)
    fail_after_publish: BaseException | None = None  #: raised once, the record left behind

    def __post_init__(self) -> None:
        self.store = type("Store", (), {"listeners": []})()

    def create_network(self, name: str) -> None:
        self.networks.add(name)
        for fn in self.store.listeners:
            fn("networks", name)

    async def attach(self, body: dict[str, Any]) -> Ep:
        await asyncio.sleep(0)
        ns, net = body["netns"], body["network"]
        if net not in self.networks:
            raise NotFound(f"no network named {net}")
        if not self.docker.alive(ns):
            raise NotFound(f"no network namespace {ns}")
        if (ns, net) in self.endpoints:
            raise Conflict(f"{ns} is already attached to network {net}")
        ep = Ep(ns, net, body["name"], body.get("service", ""),
                tuple(body.get("aliases", ())), body.get("ip", ""))
        self.endpoints[(ns, net)] = ep
        if self.fail_after_publish is not None:
            exc, self.fail_after_publish = self.fail_after_publish, None
            raise exc
        self.attaches.append((body["name"], net))
        return ep

    async def detach(self, ns: str, network: str | None = None) -> list[Ep]:
        await asyncio.sleep(0)
        gone = [e for k, e in self.endpoints.items()
                if k[0] == ns and (network is None or k[1] == network)]
        if not gone:
            raise NotFound(f"{ns} is not attached")
        for e in gone:
            del self.endpoints[(e.netns, e.network)]
            self.detaches.append((e.name, e.network))
        return gone

    def local_endpoints(self) -> list[Ep]:
        return list(self.endpoints.values())

    def names(self) -> set[tuple[str, str]]:
        return {(e.name, e.network) for e in self.endpoints.values()}
