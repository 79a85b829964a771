"""Thin asyncio adapter for the sans-IO :class:`~meshnet.gossip.core.Memberlist`.

Design notes
------------
* Owns one UDP endpoint and one TCP server on the same (addr, port), one timer, and
  the tasks running outbound TCP streams. Everything else is the core's job.
* The loop clock (``loop.time()``) is fed into the core. After every call into the
  core, :meth:`_pump` sends its datagrams, starts its stream requests, hands its
  events to ``on_event`` (or the ``events`` queue) and re-arms the one timer at
  ``next_deadline()``.
* Inbound TCP: bytes go to the core's ``InboundStream`` as they arrive; the reply is
  written the moment one exists (peers keep the socket open waiting for it). Every
  connection is bounded by ``tcp_timeout``.
* Outbound TCP: ``asyncio.open_connection`` under the request's deadline; reply bytes
  go to ``stream_reply`` until it says done; errors and timeouts report ``None``.
* Before the timer acts on a deadline (a probe's end, a suspicion's expiry), every
  datagram already in the socket is handed to the core: asyncio reads one datagram per
  loop iteration and runs due timers in that same iteration, so after a stall of the
  process (a busy box), an ack queued behind other packets would otherwise arrive
  "after" the deadline it beat, and a live peer would be suspected.
* The core's ``wall_offset`` (wall clock minus loop clock, taken at start) lines up
  the probe rounds of ``probe_ring`` presets across hosts; only round numbers use it.
* Socket errors are operational, not bugs: they are logged at debug level and the
  core sees a failed stream / a lost datagram, which SWIM tolerates by design.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable

from meshnet.gossip.core import Memberlist
from meshnet.gossip.events import Address, Event, JoinCompleted, StreamRequest

log = logging.getLogger("meshnet.gossip.adapter")

READ_SIZE = 65536
MAX_INBOUND = 128  # memberlist refuses push/pulls beyond 128 in flight


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, adapter: GossipAdapter) -> None:
        self._adapter = adapter

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        a = self._adapter
        a.core.handle_datagram(data, (addr[0], addr[1]), a.now())
        a._pump()

    def error_received(self, exc: Exception) -> None:
        log.debug("node=%s subsystem=gossip udp error: %s", self._adapter.core.name, exc)


class GossipAdapter:
    def __init__(self, core: Memberlist, bind: Address | None = None,
                 on_event: Callable[[Event], None] | None = None) -> None:
        self.core = core
        self.bind = bind or (core.addr, core.port)
        self.on_event = on_event
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._sock: socket.socket | None = None
        self._server: asyncio.Server | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._armed_when = 0.0
        self._tasks: set[asyncio.Task] = set()
        self._joins: dict[int, asyncio.Future] = {}
        self._inbound = 0
        self._closed = False

    def now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in self.bind[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind(self.bind)
            self._udp, _ = await self._loop.create_datagram_endpoint(
                lambda: _Udp(self), sock=sock)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._server = await asyncio.start_server(self._serve, self.bind[0], self.bind[1])
        # probe rounds (``probe_ring``) line up across hosts on the wall clock
        self.core.wall_offset = time.time() - self.now()
        self.core.start(self.now())
        self._pump()

    async def join(self, addrs: list[Address], timeout: float | None = None) -> JoinCompleted:
        """Push/pull with each address; returns how many succeeded."""
        assert self._loop is not None
        fut: asyncio.Future[JoinCompleted] = self._loop.create_future()
        jid = self.core.join(addrs, self.now())
        self._joins[jid] = fut
        self._pump()
        return await asyncio.wait_for(fut, timeout)

    async def leave(self, timeout: float) -> bool:
        """Gossip our leave; wait until it has spread or ``timeout``. True if it did."""
        self.core.leave(self.now())
        self._pump()
        end = self.now() + timeout
        while not self.core.leave_done and self.now() < end:
            await asyncio.sleep(min(0.05, max(end - self.now(), 0)))
        return self.core.leave_done

    def send_user(self, node: str, payload: bytes, reliable: bool = False) -> bool:
        ok = self.core.send_user(node, payload, self.now(), reliable)
        self._pump()
        return ok

    def set_meta(self, meta: bytes) -> None:
        self.core.set_meta(meta, self.now())
        self._pump()

    async def stop(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        if self._server is not None:
            self._server.close()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
        if self._udp is not None:
            self._udp.close()

    # -- plumbing -------------------------------------------------------------

    def _pump(self) -> None:
        if self._closed:
            return
        core = self.core
        udp = self._udp
        for data, addr in core.drain_outbox():
            if udp is not None:
                try:
                    udp.sendto(data, addr)
                except OSError as exc:
                    log.debug("node=%s subsystem=gossip sendto %s: %s", core.name, addr, exc)
        for req in core.drain_streams():
            self._spawn(self._outbound(req))
        for ev in core.drain_events():
            if isinstance(ev, JoinCompleted):
                fut = self._joins.pop(ev.join_id, None)
                if fut is not None and not fut.done():
                    fut.set_result(ev)
            if self.on_event is not None:
                self.on_event(ev)
            else:
                self.events.put_nowait(ev)
        self._arm()

    def _arm(self) -> None:
        at = self.core.next_deadline()
        if at == self._timer_at and self._timer is not None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = at
        if at != float("inf") and self._loop is not None:
            self._armed_when = self.now()
            self._timer = self._loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        now = self.now()
        # how much later than asked the loop ran us: our own CPU (or loop) is short
        self.core.timer_late(now - max(self._timer_at, self._armed_when), now)
        self._timer = None
        self._timer_at = float("inf")
        self._drain_udp(now)
        self.core.tick(now)
        self._pump()

    def _drain_udp(self, now: float, limit: int = 1024) -> None:
        """Hand the core every datagram that has already arrived (see the notes)."""
        sock = self._sock
        if sock is None or self._closed:
            return
        for _ in range(limit):
            try:
                data, addr = sock.recvfrom(READ_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("node=%s subsystem=gossip recvfrom: %s", self.core.name, exc)
                return
            self.core.metrics["recv.drained_before_timer"] += 1
            self.core.handle_datagram(data, (addr[0], addr[1]), now)

    def _spawn(self, coro) -> None:
        assert self._loop is not None
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _outbound(self, req: StreamRequest) -> None:
        writer = None
        done = False
        try:
            async with asyncio.timeout_at(req.deadline):
                reader, writer = await asyncio.open_connection(req.addr[0], req.addr[1])
                writer.write(req.data)
                await writer.drain()
                if req.expect_reply:
                    while not done:
                        chunk = await reader.read(READ_SIZE)
                        done = self.core.stream_reply(req.id, chunk or None, self.now())
                        done = done or not chunk
                        self._pump()
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            log.debug("node=%s subsystem=gossip stream %s to %s: %r",
                      self.core.name, req.purpose, req.addr, exc)
        finally:
            if req.expect_reply and not done and not self._closed:
                self.core.stream_reply(req.id, None, self.now())
                self._pump()
            if writer is not None:
                writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("0.0.0.0", 0)
        if self._inbound >= MAX_INBOUND:
            self.core.metrics["drop.too_many_streams"] += 1
            writer.close()
            return
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self._inbound += 1
        try:
            async with asyncio.timeout(self.core.config.tcp_timeout):
                chunk: bytes | None = await reader.read(READ_SIZE)
                if not chunk:  # connected and closed: a peer asking if our host is up
                    self.core.metrics["recv.stream.empty"] += 1
                    return
                stream = self.core.open_stream((peer[0], peer[1]), self.now())
                while not stream.done:
                    if chunk is None:
                        chunk = await reader.read(READ_SIZE)
                    if not chunk:
                        stream.eof(self.now())
                        break
                    reply = stream.feed(chunk, self.now())
                    chunk = None
                    self._pump()
                    if reply is not None:
                        writer.write(reply)
                        await writer.drain()
                        break
        except (OSError, TimeoutError) as exc:
            log.debug("node=%s subsystem=gossip inbound stream from %s: %r",
                      self.core.name, peer, exc)
        finally:
            self._inbound -= 1
            if task is not None:
                self._tasks.discard(task)
            writer.close()
