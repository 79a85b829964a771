"""The asyncio driver of :class:`meshnet.ipvs.health.HealthCore`: sockets and one timer.

Checks connect to the task's IP from inside the network's sandbox (or the task's own
namespace): a worker thread ``setns``-es into the namespace, creates a non-blocking socket
and returns to its own namespace (a socket keeps the namespace it was made in, the trick of
:func:`meshnet.netns.ipr`); the event loop then uses it with ``loop.sock_*``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

from meshnet.ipvs.health import Check, HealthCore, Target
from meshnet.model import TaskHealth

log = logging.getLogger("meshnet.health")


def socket_in(ns: str | None, family: int = socket.AF_INET) -> socket.socket:
    """A non-blocking TCP socket created inside namespace ``ns`` (None: here). Blocking
    (setns): call it from a worker thread, never from the event loop."""
    from meshnet import netns

    s = netns.open_in(ns, lambda: socket.socket(family, socket.SOCK_STREAM))
    s.setblocking(False)
    return s


async def probe(loop: asyncio.AbstractEventLoop, sock: socket.socket, check: Check) -> str:
    """Run one check over ``sock``; '' on success, else why it failed."""
    family_ip = check.ip
    try:
        await asyncio.wait_for(loop.sock_connect(sock, (family_ip, check.port)), check.timeout)
        if check.kind == "tcp":
            return ""
        req = (f"GET {check.path} HTTP/1.0\r\nHost: {check.ip}\r\n"
               "User-Agent: meshnet-health\r\n\r\n").encode()
        await asyncio.wait_for(loop.sock_sendall(sock, req), check.timeout)
        head = await asyncio.wait_for(loop.sock_recv(sock, 64), check.timeout)
        parts = head.split(b" ", 2)
        if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1][:1] in (b"2", b"3"):
            return ""
        return f"HTTP status {parts[1].decode(errors='replace') if len(parts) > 1 else '?'}"
    except TimeoutError:
        return "timeout"
    except OSError as exc:
        return exc.strerror or type(exc).__name__


class HealthChecker:
    """Feeds the loop clock into a HealthCore, runs its checks, emits changes."""

    def __init__(self, emit: Callable[[TaskHealth], None], core: HealthCore | None = None,
                 opener: Callable[[str | None], socket.socket] = socket_in) -> None:
        self.core = core or HealthCore()
        self.emit = emit
        self.opener = opener
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="health-netns")
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()

    def set_targets(self, targets: Iterable[Target]) -> None:
        self.core.set_targets(targets, asyncio.get_running_loop().time())
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="health")

    async def stop(self) -> None:
        for t in [self._task, *self._running]:
            if t:
                t.cancel()
        self._pool.shutdown(wait=False)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            for change in self.core.expire(loop.time()):
                self._emit(change)
            for check in self.core.due(loop.time()):
                t = asyncio.create_task(self._run(check))
                self._running.add(t)
                t.add_done_callback(self._running.discard)
            deadline = self.core.next_deadline()
            wait = 3600.0 if deadline is None else max(0.0, deadline - loop.time())
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
            except TimeoutError:
                pass

    async def _run(self, check: Check) -> None:
        loop = asyncio.get_running_loop()
        sock = None
        try:
            sock = await loop.run_in_executor(self._pool, self.opener, check.netns or None)
            why = await probe(loop, sock, check)
        except Exception as exc:  # the namespace is gone, ...: a failed check
            why = f"{type(exc).__name__}: {exc}"
        finally:
            if sock is not None:
                sock.close()
        for change in self.core.result(check.key, check.seq, not why, why, loop.time()):
            self._emit(change)
        self._wake.set()

    def _emit(self, change: TaskHealth) -> None:
        log.info("task %s of %s is now %s (%s)", change.ip, change.service,
                 "healthy" if change.healthy else "unhealthy", change.reason)
        self.emit(change)


