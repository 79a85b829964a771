"""The asyncio adapter: container sockets and upstream sockets around the two cores.

Design notes
------------
* One :class:`DnsServer` per agent: one :class:`~meshnet.dns.responder.Responder` (the
  records view), one shared :class:`~meshnet.dns.forwarder.Forwarder`, one connected UDP
  socket per upstream (opened in the agent's own namespace, so host-loopback upstreams
  work and ICMP errors reach us), one timer re-armed at the forwarder's deadline.
* Per container, :meth:`DnsServer.serve` takes the UDP and TCP sockets already opened
  inside the container's namespace (see :mod:`meshnet.dns.sandbox`) and the container's
  scope; it returns a :class:`ContainerDns` handle (``scope`` can be changed in place
  when the container attaches/detaches; ``close()`` stops it).
* UDP uses ``loop.add_reader`` and drains the socket in the callback (up to ``BUDGET``
  datagrams per wakeup), not a DatagramProtocol: no transport layer, no per-packet
  callbacks. Memo hits (the hot path) are answered inside :mod:`meshnet.dns.udpio`
  (batched ``recvmmsg``/``sendmmsg`` on Linux, ``DnsConfig.udp_batch`` datagrams per
  syscall); everything else goes through ``Responder.handle`` (:meth:`_udp_miss`).
* TCP: RFC 7766 framing, pipelined queries allowed, idle timeout, at most
  ``tcp_max_conns`` connections per container.
* Metrics: :class:`DnsMetrics` (counters, answers by rcode, latency histogram). Memo
  hits (the hot path) are counted but not timed, to keep them cheap; every other local
  answer and every forwarded query is timed (receive to send).
* Socket errors are operational: counted, logged at debug level, never raised.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from meshnet.dns import udpio
from meshnet.dns.config import DnsConfig
from meshnet.dns.forwarder import Forwarder, Reply, SendTcp, SendUdp, Upstream
from meshnet.dns.records import RecordsView
from meshnet.dns.responder import Answer, Forward, Responder, Scope

log = logging.getLogger("meshnet.dns")

BUDGET = 128  # datagrams per readiness callback
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
           0.5, 1.0, 2.5, 5.0)


@dataclass
class DnsMetrics:
    queries_udp: int = 0
    queries_tcp: int = 0
    forwarded: int = 0
    forward_replies: int = 0
    dropped: int = 0
    socket_errors: int = 0
    tcp_refused: int = 0  #: connections over tcp_max_conns
    latency: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))

    latency_sum: float = 0.0

    def observe(self, seconds: float) -> None:
        self.latency[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.latency_sum += seconds

    def snapshot(self, responder: Responder, forwarder: Forwarder) -> dict[str, object]:
        """Everything as plain data (for the API / Prometheus exporter)."""
        return {
            "queries": self.queries_udp + self.queries_tcp,
            "queries_udp": self.queries_udp, "queries_tcp": self.queries_tcp,
            "answered_local": self.queries_udp + self.queries_tcp - self.forwarded
            - self.dropped, "forwarded": self.forwarded,
            "forward_replies": self.forward_replies, "dropped": self.dropped,
            "socket_errors": self.socket_errors, "tcp_refused": self.tcp_refused,
            "memo_hits": responder.stats["memo_hits"],
            "malformed": responder.stats["malformed"],
            "refused_internal": responder.stats["refused_internal"],
            "rcodes": dict(responder.rcodes),
            "forwarder": dict(forwarder.stats), "forwarder_inflight": forwarder.inflight,
            "cache_entries": forwarder.cache_size()[0],
            "cache_hits": forwarder.stats["cache_hits"],
            "upstreams": [{"addr": str(s.up), "dead": s.dead_until > time.monotonic(),
                           "failures": s.failures, "srtt": s.srtt, "sent": s.sent,
                           "answered": s.answered} for s in forwarder.upstreams],
            "latency_buckets": list(zip([*BUCKETS, float("inf")], self.latency, strict=True)),
            "latency_seconds_total": self.latency_sum,
        }


class ContainerDns:
    """The resolver of one container: its sockets and scope."""

    def __init__(self, server: DnsServer, udp: socket.socket, tcp: socket.socket | None,
                 scope: Scope) -> None:
        self.server = server
        self.udp = udp
        self.tcp = tcp
        self.scope = scope  #: may be reassigned when the container's networks change
        self.tcp_server: asyncio.Server | None = None
        self.tcp_conns = 0
        self.closed = False

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        loop = self.server.loop
        with contextlib.suppress(Exception):
            loop.remove_reader(self.udp.fileno())
        self.udp.close()
        if self.tcp_server is not None:
            self.tcp_server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.tcp_server.wait_closed(), 1.0)
        elif self.tcp is not None:
            self.tcp.close()
        self.server.containers.discard(self)


class DnsServer:
    def __init__(self, config: DnsConfig | None = None, upstreams: list[Upstream] | None = None,
                 view: RecordsView | None = None,
                 upstream_socket: Callable[[Upstream], socket.socket] | None = None) -> None:
        self.config = config or DnsConfig()
        self.responder = Responder(self.config, view)
        self.forwarder = Forwarder(list(upstreams or []), self.config)
        self.metrics = DnsMetrics()
        self.containers: set[ContainerDns] = set()
        self._upstream_socket = upstream_socket or _connected_udp
        self._up_socks: list[socket.socket | None] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._tasks: set[asyncio.Task] = set()
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._batch = udpio.Batch(self.config.udp_batch) \
            if self.config.udp_batch and udpio.Batch.available() else None

    # --- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._open_upstreams()

    def set_view(self, view: RecordsView) -> None:
        self.responder.set_view(view)

    async def serve(self, udp_sock: socket.socket, tcp_sock: socket.socket | None,
                    scope: Scope) -> ContainerDns:
        """Serve one container on its (already bound, TCP listening) sockets."""
        cs = ContainerDns(self, udp_sock, tcp_sock, frozenset(scope))
        udp_sock.setblocking(False)
        self.loop.add_reader(udp_sock.fileno(), self._on_udp, cs)
        if tcp_sock is not None:
            tcp_sock.setblocking(False)
            cs.tcp_server = await asyncio.start_server(
                lambda r, w: self._on_tcp_conn(cs, r, w), sock=tcp_sock)
        self.containers.add(cs)
        return cs

    async def close(self) -> None:
        for cs in list(self.containers):
            await cs.close()
        self._close_upstreams()
        if self._timer is not None:
            self._timer.cancel()
        for t in list(self._tasks):
            t.cancel()

    def snapshot(self) -> dict[str, object]:
        return self.metrics.snapshot(self.responder, self.forwarder)

    # --- container UDP (the hot path) ----------------------------------------------

    def _on_udp(self, cs: ContainerDns) -> None:
        responder = self.responder
        scope = cs.scope

        def memo() -> dict:
            return responder.memo_for(scope, "udp")

        def miss(data: bytes, addr: tuple) -> bytes | None:
            return self._udp_miss(cs, scope, data, addr)

        if self._batch is not None:
            n, hits, errors = self._batch.drain(cs.udp.fileno(), memo, miss, BUDGET, cs.udp)
        else:
            n, hits, errors = udpio.drain_plain(cs.udp, memo, miss, BUDGET)
        m = self.metrics
        m.queries_udp += n
        m.socket_errors += errors
        responder.stats["memo_hits"] += hits

    def _udp_miss(self, cs: ContainerDns, scope: Scope, data: bytes,
                  addr: tuple) -> bytes | None:
        """Everything but a memo hit: the answer to send, or None."""
        t0 = time.perf_counter()
        act = self.responder.handle(data, scope, "udp", self.loop.time())
        if act.__class__ is Answer:
            self.metrics.observe(time.perf_counter() - t0)
            return act.data  # type: ignore[union-attr]
        if act.__class__ is Forward:
            self._forward(act, (cs, addr, t0))  # type: ignore[arg-type]
        else:
            self.metrics.dropped += 1
        return None

    # --- container TCP --------------------------------------------------------------

    async def _on_tcp_conn(self, cs: ContainerDns, reader: asyncio.StreamReader,
                           writer: asyncio.StreamWriter) -> None:
        if cs.tcp_conns >= self.config.tcp_max_conns:
            self.metrics.tcp_refused += 1
            writer.close()
            return
        cs.tcp_conns += 1
        try:
            while not cs.closed:
                try:
                    head = await asyncio.wait_for(reader.readexactly(2),
                                                  self.config.tcp_idle_timeout)
                    msg = await asyncio.wait_for(reader.readexactly(int.from_bytes(head, "big")),
                                                 self.config.tcp_idle_timeout)
                except (TimeoutError, asyncio.IncompleteReadError, OSError):
                    break
                self.metrics.queries_tcp += 1
                t0 = time.perf_counter()
                act = self.responder.handle(msg, cs.scope, "tcp", self.loop.time())
                if isinstance(act, Answer):
                    writer.write(len(act.data).to_bytes(2, "big") + act.data)
                    self.metrics.observe(time.perf_counter() - t0)
                elif isinstance(act, Forward):
                    self._forward(act, (cs, writer, t0))
                else:
                    self.metrics.dropped += 1
                    break
                with contextlib.suppress(OSError):
                    await writer.drain()
        finally:
            cs.tcp_conns -= 1
            writer.close()

    # --- forwarding -----------------------------------------------------------------

    def _forward(self, act: Forward, client: tuple) -> None:
        m = self.metrics
        m.forwarded += 1
        self._perform(self.forwarder.submit(act.query, act.question, client, act.limit,
                                            self.loop.time()))

    def _perform(self, actions: list) -> None:
        for a in actions:
            if a.__class__ is Reply:
                self._reply(a)
            elif a.__class__ is SendUdp:
                s = self._up_socks[a.upstream] if a.upstream < len(self._up_socks) else None
                try:
                    if s is None:
                        raise OSError("upstream socket not open")
                    s.send(a.data)
                except OSError as exc:
                    log.debug("subsystem=dns upstream %s send: %s",
                              self.forwarder.upstreams[a.upstream].up, exc)
                    self._perform(self.forwarder.on_udp_error(a.upstream, self.loop.time()))
            elif a.__class__ is SendTcp:
                t = self.loop.create_task(self._tcp_exchange(a))
                self._tasks.add(t)
                t.add_done_callback(self._tasks.discard)
        self._arm()

    def _reply(self, r: Reply) -> None:
        cs, dest, t0 = r.client  # type: ignore[misc]
        m = self.metrics
        m.forward_replies += 1
        m.observe(time.perf_counter() - t0)
        if cs.closed:
            return
        try:
            if dest.__class__ is tuple:
                cs.udp.sendto(r.data, dest)
            else:
                dest.write(len(r.data).to_bytes(2, "big") + r.data)
        except (OSError, RuntimeError):
            m.socket_errors += 1

    async def _tcp_exchange(self, a: SendTcp) -> None:
        up = self.forwarder.upstreams[a.upstream].up
        data: bytes | None = None
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection(up.host, up.port),
                                          self.config.attempt_timeout)
            try:
                w.write(len(a.data).to_bytes(2, "big") + a.data)
                head = await asyncio.wait_for(r.readexactly(2), self.config.attempt_timeout)
                data = await asyncio.wait_for(r.readexactly(int.from_bytes(head, "big")),
                                              self.config.attempt_timeout)
            finally:
                w.close()
        except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
            log.debug("subsystem=dns upstream %s tcp: %s", up, exc)
        self._perform(self.forwarder.on_tcp(a.token, data, self.loop.time()))

    def _on_upstream(self, u: int, sock: socket.socket) -> None:
        fwd = self.forwarder
        for _ in range(BUDGET):
            try:
                data = sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # ICMP unreachable on the connected socket
                log.debug("subsystem=dns upstream %s: %s", fwd.upstreams[u].up, exc)
                self._perform(fwd.on_udp_error(u, self.loop.time()))
                return
            self._perform(fwd.on_udp(u, data, self.loop.time()))

    def _open_upstreams(self) -> None:
        self._up_socks = []
        for u, st in enumerate(self.forwarder.upstreams):
            try:
                s = self._upstream_socket(st.up)
                s.setblocking(False)
                self.loop.add_reader(s.fileno(), self._on_upstream, u, s)
            except OSError as exc:
                log.warning("subsystem=dns cannot open a socket to upstream %s: %s", st.up, exc)
                s = None
            self._up_socks.append(s)

    def _close_upstreams(self) -> None:
        for s in self._up_socks:
            if s is not None:
                with contextlib.suppress(Exception):
                    self.loop.remove_reader(s.fileno())
                s.close()
        self._up_socks = []

    # --- the one timer --------------------------------------------------------------

    def _arm(self) -> None:
        at = self.forwarder.next_deadline()
        if at >= self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = self.loop.call_at(at, self._on_timer) if at != float("inf") else None

    def _on_timer(self) -> None:
        self._timer, self._timer_at = None, float("inf")
        self._perform(self.forwarder.tick(self.loop.time()))


def _connected_udp(up: Upstream) -> socket.socket:
    family = socket.AF_INET6 if ":" in up.host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.connect((up.host, up.port))
    return s
