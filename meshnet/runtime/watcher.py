"""The Docker runtime: follow dockerd and keep labelled containers attached.

Two tasks, one cache (``containers``: id -> running labelled :class:`Container`):

* the *event follower* connects to ``/events`` (container start/die/stop/destroy, label
  ``meshnet.network``), and on every (re)connect kicks a full sync. Each event only
  updates the cache (``start``: inspect; ``die``/``stop``/``destroy``: forget) and kicks
  the sync runner. When the stream breaks (dockerd restarting) it reconnects with
  exponential backoff (0.1 s .. 5 s).
* the *sync runner* (:class:`~meshnet.syncer.SyncRunner`, one run per many kicks) plans
  from the cache and the agent's local endpoints (:func:`containers.plan`) and applies
  it through ``agent.attach`` / ``agent.detach``. A full sync first re-lists the
  containers from dockerd (periodically too, so a missed event is repaired), under the
  same lock as the event handler, so a list and an event never interleave.

Detach goes by endpoint record (``agent.detach(netns, network)`` matches the stored
netns string); the ``/proc/PID/ns/net`` path of a dead container is gone by then. After a
container's first attach the watcher rewrites Docker's ``ResolvConfPath`` *in place*
(the file is bind-mounted into the container, so a rename would not be seen):
``nameserver 127.0.0.11`` / ``options ndots:0``.

Failures: an attach that fails (network not created yet, namespace gone) is logged once
per (container, network, reason) and retried on the next sync (the runner is also kicked
when the networks table changes). Labels that cannot be used are logged once per
container; the container stays unattached.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from meshnet.errors import Conflict, NotFound, UserError
from meshnet.model import Endpoint
from meshnet.runtime.containers import (
    LABEL_NETWORK,
    Attach,
    Container,
    LabelError,
    Observed,
    container_from_inspect,
    desired,
    plan,
)
from meshnet.runtime.docker import DockerClient, DockerError, DockerPort, DockerUnavailable
from meshnet.syncer import SyncRunner

log = logging.getLogger("meshnet.docker")

EVENTS = ("start", "die", "stop", "destroy")
FILTERS = {"type": ["container"], "event": list(EVENTS), "label": [LABEL_NETWORK]}
RESOLV_CONF = "nameserver 127.0.0.11\noptions ndots:0\n"


class AgentPort(Protocol):
    """What the watcher uses of the agent."""

    node: str

    async def attach(self, body: dict[str, Any]) -> Endpoint: ...

    async def detach(self, ns: str, network: str | None = None) -> list[Endpoint]: ...

    def local_endpoints(self) -> list[Endpoint]: ...


def write_resolv_conf(path: str) -> None:
    """Rewrite in place: the inode is bind-mounted into the container."""
    with open(path, "w") as f:
        f.write(RESOLV_CONF)


class DockerWatcher:
    def __init__(self, agent: AgentPort, client: DockerPort | None = None, *,
                 full_interval: float = 30.0, min_interval: float = 0.02,
                 backoff: tuple[float, float] = (0.1, 5.0),
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 ns_exists: Callable[[str], bool] = os.path.exists,
                 resolv_writer: Callable[[str], None] = write_resolv_conf) -> None:
        self.agent = agent
        self.client: DockerPort = client or DockerClient()
        self.containers: dict[str, Container] = {}
        self.docker_names: set[str] = set()
        self.owned: set[tuple[str, str]] = set()  #: (netns, network) attached by us
        self.connected = False
        self.relists = 0
        self.events_seen = 0
        self._backoff = backoff
        self._sleep = sleep
        self._ns_exists = ns_exists
        self._write_resolv = resolv_writer
        self._resolv_done: set[tuple[str, int]] = set()  #: (container id, pid)
        self._logged: dict[tuple[str, str], str] = {}  #: last failure logged per key
        self._lock = asyncio.Lock()
        self.runner = SyncRunner("docker", self.sync, min_interval=min_interval,
                                 full_interval=full_interval, logger=log)
        self._task: asyncio.Task[None] | None = None

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        store = getattr(self.agent, "store", None)
        if store is not None:
            store.listeners.append(self._table_changed)
        self.runner.start()
        self._task = asyncio.create_task(self.follow(), name="docker-events")

    async def stop(self) -> None:
        """Stop following Docker; attached containers stay attached (for the next start)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        await self.runner.stop()
        await self.client.close()

    def _table_changed(self, table: str, key: str) -> None:
        if table == "networks":
            self.runner.kick()

    # --- the event follower --------------------------------------------------------------

    async def follow(self) -> None:
        delay = self._backoff[0]
        down_logged = False
        while True:
            try:
                stream = await self.client.events(FILTERS)
            except (DockerUnavailable, DockerError) as exc:
                if not down_logged:
                    log.warning("docker events unavailable (%s); retrying every <= %.0fs",
                                exc, self._backoff[1])
                    down_logged = True
                await self._sleep(delay)
                delay = min(delay * 2, self._backoff[1])
                continue
            delay, down_logged = self._backoff[0], False
            self.connected = True
            log.info("following docker events; full resync")
            self.runner.kick(full=True)
            try:
                async for event in stream:
                    await self.handle(event)
            except DockerUnavailable as exc:
                log.warning("docker events lost (%s); reconnecting", exc)
            finally:
                self.connected = False
                await stream.close()

    async def handle(self, event: dict[str, Any]) -> None:
        """Record one event in the cache and kick the runner."""
        action = str(event.get("Action") or event.get("status") or "")
        actor = event.get("Actor") or {}
        cid = str(actor.get("ID") or event.get("id") or "")
        if event.get("Type", "container") != "container" or not cid:
            return
        action = action.split(":", 1)[0]  # "exec_start: sh" style actions
        if action not in EVENTS:
            return
        self.events_seen += 1
        name = str((actor.get("Attributes") or {}).get("name") or cid[:12])
        async with self._lock:
            if action == "start":
                c = await self._inspect(cid)
                if c is None:
                    log.info("container %s (%s) started but is gone or unlabelled", name,
                             cid[:12])
                else:
                    self.containers[cid] = c
                    self.docker_names.add(c.name)
                    log.info("container %s (%s) started: pid %d, networks %s", name,
                             cid[:12], c.pid, ",".join(c.networks))
            else:
                known = self.containers.pop(cid, None)
                log.info("container %s (%s) %s%s", name, cid[:12], action,
                         ": detaching" if known else "")
        self.runner.kick()

    async def _inspect(self, cid: str) -> Container | None:
        try:
            data = await self.client.inspect(cid)
        except DockerError as exc:
            self._log_once(("inspect", cid), f"cannot inspect container {cid[:12]}: {exc}")
            return None
        if data is None:
            return None
        try:
            return container_from_inspect(data)
        except LabelError as exc:
            name = str(data.get("Name") or cid).lstrip("/")
            self._log_once(("labels", cid), f"container {name} is not attached: {exc}")
            return None

    # --- the sync ------------------------------------------------------------------------

    async def relist(self) -> None:
        """Replace the cache with what dockerd says is running now."""
        summaries = await self.client.containers(labels=[LABEL_NETWORK], all=True)
        names = {str(n).lstrip("/") for s in summaries for n in (s.get("Names") or ())}
        fresh: dict[str, Container] = {}
        for s in summaries:
            if s.get("State") != "running" or not s.get("Id"):
                continue
            c = await self._inspect(str(s["Id"]))
            if c is not None:
                fresh[c.id] = c
        self.containers = fresh
        self.docker_names = names
        ids = {str(s.get("Id")) for s in summaries}
        self._logged = {k: v for k, v in self._logged.items()
                        if k[0] not in ("inspect", "labels") or k[1] in ids}
        self.relists += 1

    async def sync(self, full: bool) -> None:
        if full:
            async with self._lock:
                try:
                    await self.relist()
                except (DockerUnavailable, DockerError) as exc:
                    # keep the cache: an unreachable daemon does not mean no containers
                    self._log_once(("relist", ""), f"cannot list containers ({exc}); "
                                   "keeping the last known set")
                else:
                    self._logged.pop(("relist", ""), None)
        live = [c for c in self.containers.values() if self._ns_exists(c.netns)]
        want = desired(live)
        observed = [Observed(e.netns, e.network, e.name) for e in self.agent.local_endpoints()]
        ops = plan(want, observed, self.owned, self.docker_names)
        attached: set[str] = set()
        for op in ops:
            if isinstance(op, Attach):
                if await self._attach(op.attachment.body(), op.attachment.key):
                    attached.add(op.attachment.container)
            else:
                await self._detach(op.netns, op.network, op.name)
        have = {(e.netns, e.network) for e in self.agent.local_endpoints()}
        for c in live:
            if c.id in attached or (c.id, c.pid) not in self._resolv_done:
                if any((c.netns, n) in have for n in c.networks):
                    self._fix_resolv(c)

    async def _attach(self, body: dict[str, Any], key: tuple[str, str]) -> bool:
        self.owned.add(key)
        try:
            await self.agent.attach(body)
        except TimeoutError:
            # published, but the data plane did not settle in time: it will, keep it
            self._log_once(("attach", f"{key[0]} {key[1]}"),
                           f"attach of container {body['name']} to {key[1]} is slow to settle")
            return True
        except (UserError, OSError) as exc:  # NotFound, Conflict, ModelError; netns gone
            if not isinstance(exc, Conflict) and any(
                    (e.netns, e.network) == key for e in self.agent.local_endpoints()):
                await self._detach(key[0], key[1], body["name"], quiet=True)  # half done
            self.owned.discard(key)
            self._log_once(("attach", f"{key[0]} {key[1]}"),
                           f"cannot attach container {body['name']} to {key[1]}: {exc} "
                           "(will retry)")
            return False
        self._logged.pop(("attach", f"{key[0]} {key[1]}"), None)
        return True

    async def _detach(self, netns: str, network: str, name: str, quiet: bool = False) -> None:
        try:
            await self.agent.detach(netns, network)
        except NotFound:
            pass  # already gone (the agent saw the namespace vanish first)
        except (UserError, OSError, TimeoutError) as exc:
            self._log_once(("detach", f"{netns} {network}"),
                           f"cannot detach container {name} from {network}: {exc}")
            return
        self.owned.discard((netns, network))
        if not quiet:
            log.info("container %s is gone: detached from %s", name, network)

    def _fix_resolv(self, c: Container) -> None:
        """Point the container at 127.0.0.11 (once per start of the container)."""
        self._resolv_done = {k for k in self._resolv_done if k[0] in self.containers}
        self._resolv_done.add((c.id, c.pid))
        if not c.resolv_conf:
            return
        try:
            self._write_resolv(c.resolv_conf)
        except OSError as exc:
            self._log_once(("resolv", c.id), f"cannot rewrite {c.resolv_conf} for "
                           f"container {c.name}: {exc}")

    def _log_once(self, key: tuple[str, str], message: str) -> None:
        if self._logged.get(key) != message:
            self._logged[key] = message
            log.warning("%s", message)
