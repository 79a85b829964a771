"""Sans-IO upstream forwarding: upstream health, ID rewriting, a small cache.

Design notes
------------
* Inputs: ``submit`` (a query the responder could not answer), ``on_udp`` /
  ``on_udp_error`` / ``on_tcp`` (what the upstream sockets produced) and ``tick(now)``.
  Outputs: actions for the adapter: :class:`SendUdp`, :class:`SendTcp` (one exchange
  over a fresh TCP connection; report the reply or None with ``on_tcp``) and
  :class:`Reply` (bytes for the client handle the adapter passed in). The adapter
  re-arms one timer at :meth:`Forwarder.next_deadline`.
* Upstream choice (pain point 8: Docker waits 4 s per dead upstream, every query):

  - upstreams are tried in configured order, **skipping dead ones**; an upstream is dead
    after an exchange timed out (``attempt_timeout``) with no reply from it since, or an
    ICMP error (``on_udp_error``), and stays dead for a backoff (1 s doubling to 30 s);
  - with no answer after ``hedge_after`` the next upstream is asked too (first good
    answer wins), so even the first query after an upstream dies answers in ~150 ms;
    the late upstream becomes *suspect* and goes last for new queries until it answers
    (an exchange that still times out after its query was answered elsewhere marks it
    dead all the same);
  - when a dead upstream's backoff has passed, a *copy* of the next query is sent to it
    in parallel with the live one: recovery is noticed at no cost in latency;
  - SERVFAIL/REFUSED moves on to the next upstream at once; the last one is relayed.
  - TC over UDP: the same upstream is asked again over TCP.
* Each exchange gets a fresh random 16-bit ID unique per upstream; a reply is accepted
  only from the upstream it was sent to, with that ID and the same question bytes
  (else counted as ``unmatched`` and dropped). The client's own ID is restored.
* Identical queries in flight are coalesced (one upstream exchange, many waiters).
* Memory is bounded, with no low cap on concurrency (pain point 7): at most
  ``max_inflight`` waiting client queries (SERVFAIL at once beyond it, counted as
  ``overloaded``); the cache holds at most ``cache_entries`` answers and
  ``cache_bytes`` bytes (LRU), each for min(its TTL, ``cache_max_ttl``), negative answers
  per RFC 2308 capped at ``cache_neg_ttl``; TTLs are aged on the way out.
* Peer faults (garbage from an upstream) are counted and dropped, never raised.
"""

from __future__ import annotations

import heapq
import ipaddress
from collections import OrderedDict
from dataclasses import dataclass, field
from random import Random

from meshnet.dns import wire
from meshnet.dns.config import DnsConfig
from meshnet.dns.wire import Question, WireError

# --- upstream list -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Upstream:
    host: str
    port: int = 53

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_resolv_conf(text: str, include_loopback: bool = False) -> list[Upstream]:
    """The ``nameserver`` lines of a resolv.conf: 127.0.0.11 (ourselves) always dropped,
    other loopback stubs (systemd-resolved's 127.0.0.53) unless ``include_loopback``."""
    out: list[Upstream] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 2 or parts[0] != "nameserver":
            continue
        host = parts[1].split("%", 1)[0]
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            continue
        if str(ip) == "127.0.0.11" or (ip.is_loopback and not include_loopback):
            continue
        up = Upstream(str(ip))
        if up not in out:
            out.append(up)
    return out


def parse_upstream(text: str) -> Upstream:
    """``ADDR``, ``ADDR:PORT`` or ``[V6]:PORT``; raises ValueError."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else 53
    elif text.count(":") == 1:
        host, p = text.split(":")
        port = int(p)
    else:
        host, port = text, 53
    ipaddress.ip_address(host)
    if not 1 <= port <= 65535:
        raise ValueError(f"bad port {port}")
    return Upstream(host, port)


# --- actions -------------------------------------------------------------------------


@dataclass(slots=True)
class SendUdp:
    upstream: int  #: index into Forwarder.upstreams
    data: bytes


@dataclass(slots=True)
class SendTcp:
    token: int  #: report the outcome with Forwarder.on_tcp(token, ...)
    upstream: int
    data: bytes  #: the message, without the 2-byte length prefix


@dataclass(slots=True)
class Reply:
    client: object  #: the adapter's handle, as given to submit()
    data: bytes


Action = SendUdp | SendTcp | Reply


# --- state ---------------------------------------------------------------------------


@dataclass(slots=True)
class UpstreamState:
    up: Upstream
    dead_until: float = 0.0  #: skipped until then (0: alive)
    failures: int = 0  #: consecutive
    last_ok: float = -1.0
    srtt: float = 0.0
    suspect: bool = False  #: an exchange is late (past hedge_after): others go first
    sent: int = 0
    answered: int = 0


@dataclass(slots=True)
class _Waiter:
    client: object
    qid: bytes
    qbytes: bytes
    limit: int


@dataclass(slots=True)
class _Pending:
    key: tuple
    query: bytes  #: the client's message; the ID is replaced per exchange
    qbytes: bytes  #: question section as sent (replies must echo it)
    waiters: list[_Waiter]
    started: float
    tried: list[int] = field(default_factory=list)
    live: dict[tuple[int, int], float] = field(default_factory=dict)  #: (up, id) -> sent at
    tcp: set[int] = field(default_factory=set)
    last_bad: bytes | None = None
    done: bool = False


@dataclass(slots=True)
class _Cached:
    data: bytes  #: full response (ID irrelevant)
    rrs: list[wire.RRInfo]
    stored: float
    ttl: int


class Forwarder:
    def __init__(self, upstreams: list[Upstream], config: DnsConfig | None = None,
                 rng: Random | None = None) -> None:
        self.config = config or DnsConfig()
        self.rng = rng or Random()
        self.upstreams = [UpstreamState(u) for u in upstreams]
        self._exchanges: dict[tuple[int, int], _Pending] = {}
        #: exchanges of finished queries still unanswered: (up, id) -> sent at. A late
        #: reply proves the upstream alive; a timeout marks it dead.
        self._orphans: dict[tuple[int, int], float] = {}
        self._by_key: dict[tuple, _Pending] = {}
        self._tcp: dict[int, tuple[_Pending, int, int]] = {}
        self._next_token = 1
        self._timers: list[tuple[float, int, str, _Pending, object]] = []
        self._seq = 0
        self._cache: OrderedDict[tuple, _Cached] = OrderedDict()
        self._cache_bytes = 0
        self.inflight = 0  #: client queries waiting (sum of waiters)
        self.stats: dict[str, int] = {
            "submitted": 0, "cache_hits": 0, "coalesced": 0, "sent_udp": 0, "sent_tcp": 0,
            "replies": 0, "servfail": 0, "overloaded": 0, "unmatched": 0, "malformed": 0,
            "timeouts": 0, "hedged": 0, "probes": 0, "truncated_retries": 0}

    # --- inputs ---------------------------------------------------------------------

    def submit(self, query: bytes, q: Question, client: object, limit: int,
               now: float) -> list[Action]:
        """Forward ``query`` (parsed as ``q``) for ``client``; ``limit`` is the largest
        reply the client accepts (UDP: truncated above it)."""
        self.stats["submitted"] += 1
        key = (q.qname if q.qname != wire.BAD_NAME else q.qbytes.lower(), q.qtype, q.qclass,
               q.edns, q.do, bool(q.flags & wire.CD))
        w = _Waiter(client, q.id, q.qbytes, limit)
        hit = self._cache.get(key)
        if hit is not None:
            age = int(now - hit.stored)
            if age < hit.ttl:
                self._cache.move_to_end(key)
                self.stats["cache_hits"] += 1
                return [self._reply(w, wire.with_ttls_aged(hit.data, hit.rrs, age))]
            self._uncache(key)
        if not self.upstreams:
            self.stats["servfail"] += 1
            return [self._reply(w, self._servfail(query, q))]
        if self.inflight >= self.config.max_inflight:
            self.stats["overloaded"] += 1
            self.stats["servfail"] += 1
            return [self._reply(w, self._servfail(query, q))]
        self.inflight += 1
        p = self._by_key.get(key)
        if p is not None:
            self.stats["coalesced"] += 1
            p.waiters.append(w)
            return []
        p = _Pending(key, query, q.qbytes, [w], now)
        self._by_key[key] = p
        self._timer(now + self.config.query_timeout, "deadline", p, None)
        out: list[Action] = []
        self._start(p, now, out)
        return out

    def on_udp(self, upstream: int, data: bytes, now: float) -> list[Action]:
        """A datagram from upstream ``upstream``."""
        if len(data) < 12:
            self.stats["malformed"] += 1
            return []
        xid = (data[0] << 8) | data[1]
        p = self._exchanges.get((upstream, xid))
        if p is None and data[2] & 0x80:
            sent = self._orphans.pop((upstream, xid), None)
            if sent is not None:  # late, after another upstream answered: still alive
                self._alive(upstream, now, now - sent)
                return []
        if p is None or not data[2] & 0x80 or not self._same_question(data, p.qbytes):
            self.stats["unmatched"] += 1
            return []
        del self._exchanges[(upstream, xid)]
        sent = p.live.pop((upstream, xid), now)
        self._alive(upstream, now, now - sent)
        out: list[Action] = []
        if data[2] & 0x02:  # TC: same upstream over TCP
            self.stats["truncated_retries"] += 1
            self._send_tcp(p, upstream, now, out)
            return out
        self._outcome(p, data, now, out)
        return out

    def on_udp_error(self, upstream: int, now: float) -> list[Action]:
        """An ICMP error (port/host unreachable) on the socket of ``upstream``."""
        self._dead(upstream, now)
        out: list[Action] = []
        for (u, xid), p in list(self._exchanges.items()):
            if u == upstream:
                del self._exchanges[(u, xid)]
                p.live.pop((u, xid), None)
                self._next(p, now, out)
        return out

    def on_tcp(self, token: int, data: bytes | None, now: float) -> list[Action]:
        entry = self._tcp.pop(token, None)
        if entry is None:
            return []
        p, upstream, xid = entry
        p.tcp.discard(token)
        if p.done:
            return []
        out: list[Action] = []
        if data is None or len(data) < 12 or not data[2] & 0x80 \
                or (data[0] << 8 | data[1]) != xid or not self._same_question(data, p.qbytes):
            if data is not None:
                self.stats["unmatched"] += 1
            self._dead(upstream, now)
            self._next(p, now, out)
            return out
        self._alive(upstream, now, None)
        self._outcome(p, data, now, out)
        return out

    def tick(self, now: float) -> list[Action]:
        out: list[Action] = []
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, kind, p, arg = heapq.heappop(timers)
            if p.done:
                sent = self._orphans.pop(arg, None) if kind == "attempt" else None  # type: ignore[call-overload]
                if sent is not None and self.upstreams[arg[0]].last_ok < sent:  # type: ignore[index]
                    self.stats["timeouts"] += 1
                    self._dead(arg[0], now)  # type: ignore[index]
                continue
            if kind == "attempt":
                ex = arg  # (upstream, xid)
                if ex in p.live:  # type: ignore[operator]
                    del p.live[ex]  # type: ignore[arg-type]
                    self._exchanges.pop(ex, None)  # type: ignore[arg-type]
                    self.stats["timeouts"] += 1
                    u = ex[0]  # type: ignore[index]
                    if self.upstreams[u].last_ok < now - self.config.attempt_timeout:
                        self._dead(u, now)
                    if not p.live and not p.tcp:
                        self._next(p, now, out)
            elif kind == "hedge":
                for (u, _), sent in p.live.items():
                    if self.upstreams[u].last_ok < sent:
                        self.upstreams[u].suspect = True
                if len(p.tried) < len(self.upstreams):
                    before = len(p.tried)
                    self._next(p, now, out, hedge=True)
                    if len(p.tried) > before:
                        self.stats["hedged"] += 1
            elif kind == "deadline":
                self._fail(p, out)
        return out

    def next_deadline(self) -> float:
        timers = self._timers
        while timers and timers[0][3].done and timers[0][2] != "attempt":
            heapq.heappop(timers)
        return timers[0][0] if timers else float("inf")

    # --- upstream health ------------------------------------------------------------

    def _alive(self, u: int, now: float, rtt: float | None) -> None:
        s = self.upstreams[u]
        s.dead_until, s.failures, s.last_ok, s.suspect = 0.0, 0, now, False
        s.answered += 1
        if rtt is not None:
            s.srtt = rtt if not s.srtt else 0.875 * s.srtt + 0.125 * rtt

    def _dead(self, u: int, now: float) -> None:
        s = self.upstreams[u]
        backoff = min(self.config.dead_backoff_max,
                      self.config.dead_backoff_min * (2 ** min(s.failures, 16)))
        s.failures += 1
        s.dead_until = now + backoff

    def is_dead(self, u: int, now: float) -> bool:
        return self.upstreams[u].dead_until > now

    # --- exchanges ------------------------------------------------------------------

    def _start(self, p: _Pending, now: float, out: list[Action]) -> None:
        live = [i for i, s in enumerate(self.upstreams) if s.dead_until <= now and not s.failures]
        live.sort(key=lambda i: self.upstreams[i].suspect)  # stable: configured order
        due = [i for i, s in enumerate(self.upstreams) if s.failures and s.dead_until <= now]
        if not live:
            # everything dead: try the first one due for a probe, else the soonest back
            first = due[0] if due else min(range(len(self.upstreams)),
                                           key=lambda i: self.upstreams[i].dead_until)
            live, due = [first], [d for d in due if d != first]
        self._send_udp(p, live[0], now, out)
        for d in due:  # probe copies, in parallel
            self.stats["probes"] += 1
            self.upstreams[d].dead_until = now + self.config.attempt_timeout  # one at a time
            self._send_udp(p, d, now, out)
        self._timer(now + self.config.hedge_after, "hedge", p, None)

    def _next(self, p: _Pending, now: float, out: list[Action], hedge: bool = False) -> None:
        """Ask the next upstream not tried yet (live ones first); fail if none is left."""
        untried = [i for i in range(len(self.upstreams)) if i not in p.tried]
        untried.sort(key=lambda i: (self.upstreams[i].dead_until > now,
                                    self.upstreams[i].suspect, i))
        if untried:
            self._send_udp(p, untried[0], now, out)
            if hedge:
                self._timer(now + self.config.hedge_after, "hedge", p, None)
        elif not hedge and not p.live and not p.tcp:
            if p.last_bad is not None:
                self._finish(p, p.last_bad, now, out, cache=False)
            else:
                self._fail(p, out)

    def _send_udp(self, p: _Pending, u: int, now: float, out: list[Action]) -> None:
        xid = self._new_id(u)
        self._exchanges[(u, xid)] = p
        p.live[(u, xid)] = now
        if u not in p.tried:
            p.tried.append(u)
        self.upstreams[u].sent += 1
        self.stats["sent_udp"] += 1
        self._timer(now + self.config.attempt_timeout, "attempt", p, (u, xid))
        out.append(SendUdp(u, xid.to_bytes(2, "big") + p.query[2:]))

    def _send_tcp(self, p: _Pending, u: int, now: float, out: list[Action]) -> None:
        token = self._next_token
        self._next_token += 1
        xid = self.rng.getrandbits(16)
        self._tcp[token] = (p, u, xid)
        p.tcp.add(token)
        self.stats["sent_tcp"] += 1
        out.append(SendTcp(token, u, xid.to_bytes(2, "big") + p.query[2:]))

    def _new_id(self, u: int) -> int:
        while True:
            xid = self.rng.getrandbits(16)
            if (u, xid) not in self._exchanges and (u, xid) not in self._orphans:
                return xid

    def _outcome(self, p: _Pending, data: bytes, now: float, out: list[Action]) -> None:
        rcode = data[3] & 0xF
        if rcode in (wire.SERVFAIL, wire.REFUSED):
            p.last_bad = data
            if not p.live and not p.tcp:
                self._next(p, now, out)
            return
        self._finish(p, data, now, out, cache=True)

    def _finish(self, p: _Pending, data: bytes, now: float, out: list[Action],
                cache: bool) -> None:
        self._close(p)
        if cache:
            self._store(p.key, data, now)
        for w in p.waiters:
            out.append(self._reply(w, data))

    def _fail(self, p: _Pending, out: list[Action]) -> None:
        self._close(p)
        for w in p.waiters:
            self.stats["servfail"] += 1
            out.append(Reply(w.client, self._servfail_for(w, p.query)))

    def _close(self, p: _Pending) -> None:
        p.done = True
        self.inflight -= len(p.waiters)
        if self._by_key.get(p.key) is p:
            del self._by_key[p.key]
        for ex, sent in p.live.items():
            self._exchanges.pop(ex, None)
            self._orphans[ex] = sent
        p.live.clear()
        for token in p.tcp:
            self._tcp.pop(token, None)
        p.tcp.clear()

    def _reply(self, w: _Waiter, data: bytes) -> Reply:
        """``data`` for one waiter: its ID, its question bytes (0x20 case), its limit."""
        self.stats["replies"] += 1
        qb = w.qbytes
        body = data[2:12] + qb + data[12 + len(qb):]
        return Reply(w.client, wire.truncated(w.qid + body, w.limit))

    def _servfail(self, query: bytes, q: Question) -> bytes:
        return wire.build(q, wire.SERVFAIL, (), (), aa=False, ra=True, limit=512)

    def _servfail_for(self, w: _Waiter, query: bytes) -> bytes:
        flags = ((query[2] << 8) | query[3])
        f = wire.response_flags(flags, wire.SERVFAIL, False, True)
        return w.qid + f.to_bytes(2, "big") + b"\x00\x01" + b"\x00" * 6 + w.qbytes

    @staticmethod
    def _same_question(data: bytes, qbytes: bytes) -> bool:
        return data[4:6] == b"\x00\x01" and data[12:12 + len(qbytes)] == qbytes

    def _timer(self, at: float, kind: str, p: _Pending, arg: object) -> None:
        self._seq += 1
        heapq.heappush(self._timers, (at, self._seq, kind, p, arg))

    # --- cache ----------------------------------------------------------------------

    def _store(self, key: tuple, data: bytes, now: float) -> None:
        rcode = data[3] & 0xF
        if rcode not in (wire.NOERROR, wire.NXDOMAIN) or data[2] & 0x02:
            return
        try:
            rrs = wire.walk_rrs(data)
        except WireError:
            self.stats["malformed"] += 1
            return
        has_answer = any(r.section == 0 for r in rrs)
        cap = self.config.cache_max_ttl if has_answer and rcode == wire.NOERROR \
            else self.config.cache_neg_ttl
        ttl = min(wire.cache_ttl(data, rrs), cap)
        if ttl <= 0 or len(data) > self.config.cache_bytes // 4:
            return
        self._uncache(key)
        self._cache[key] = _Cached(data, rrs, now, ttl)
        self._cache_bytes += len(data)
        while len(self._cache) > self.config.cache_entries or \
                self._cache_bytes > self.config.cache_bytes:
            old, entry = self._cache.popitem(last=False)
            self._cache_bytes -= len(entry.data)

    def _uncache(self, key: tuple) -> None:
        entry = self._cache.pop(key, None)
        if entry is not None:
            self._cache_bytes -= len(entry.data)

    def cache_size(self) -> tuple[int, int]:
        return len(self._cache), self._cache_bytes
