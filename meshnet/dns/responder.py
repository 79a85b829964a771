"""The sans-IO responder: query bytes in, an action out (answer, forward or drop).

Design notes
------------
* ``Responder.handle(query, scope, transport, now)`` returns :class:`Answer` (bytes to
  send back), :class:`Forward` (hand the query to the forwarder) or :class:`Drop`.
  ``scope`` is the frozenset of network names the asking container is attached to.
* Three tiers, fastest first:

  1. *memo*: per (scope, transport), the exact query bytes after the ID -> the answer
     bytes after the ID (``bytes``), or for a dynamic (task) answer a :data:`DynHit`
     ``(head, variants, tail)``. A hit costs one dict lookup and one concatenation, so
     an adapter can serve it inline (see :func:`render_hit`).
  2. *bodies*: per (scope, qname, qtype) the resolved answer (rcode + pre-encoded RRs),
     shared by all case and EDNS variants of a question.
  3. resolution against the :class:`~meshnet.dns.records.ScopedView`.

  Both caches belong to one view generation: :meth:`Responder.set_view` replaces them
  wholesale (a reader still holding an old dict only ever sees old answers). The memo
  is bounded per scope, the bodies per responder (cleared when full: hot entries come
  back at once).
* Dynamic answers (``tasks.<svc>``, dnsrr services) are reordered per query. With at
  most :data:`VARIANT_MAX_RRS` addresses the orders are pre-encoded once per view
  generation and served in turn (``itertools.cycle``: one C call per query): every
  permutation for up to 4 addresses, otherwise every rotation of a few random
  permutations, so over one cycle each address comes first equally often and the
  address after it varies. The cycle is shared by all case/EDNS variants of a question
  (the RR bytes do not depend on them), so memory is per (scope, name, type, size), not
  per memo entry. Larger sets are sampled at random per query (``_Dyn``, slower path).
* Answer rules (the order matters):

  - reverse names of attached networks' addresses and VIPs: PTR answer; unknown
    addresses inside an attached subnet: NXDOMAIN; other reverse names: forwarded.
  - a known name: A/AAAA (ANY: both); any other type: NOERROR with no answer (NODATA),
    e.g. AAAA for an IPv4-only container. SRV names: SRV (+ addresses of the targets in
    the additional section); other types NODATA.
  - an unknown name that is "ours" (single label, ``tasks.*``, ``*.<network>``, SRV
    form under a local name, reverse of a meshnet subnet): NXDOMAIN, authoritative,
    no SOA (so clients do not cache the negative answer; names come and go).
  - anything else: forwarded upstream, as Docker does.
* Internal networks: a container attached only to internal networks gets **REFUSED**
  for names it would forward (RA clear). REFUSED, not SERVFAIL: it is a policy answer
  that will not change on retry; glibc moves to the next nameserver at once instead of
  retrying, and no upstream traffic leaves an internal network.
* Limits: UDP answers fit 512 bytes, or the client's EDNS0 size capped at
  ``DnsConfig.edns_udp_size``; TCP 65535. See :func:`meshnet.dns.wire.build`.
* Peer faults (malformed queries) are counted: FORMERR/NOTIMP when the header is
  readable, dropped otherwise; nothing raises out of :meth:`handle`.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import cycle, permutations
from random import Random
from typing import Literal

from meshnet.dns import wire
from meshnet.dns.config import DnsConfig
from meshnet.dns.records import RecordsView, ScopedView, reverse_to_ip
from meshnet.dns.wire import Question, WireError

Transport = Literal["udp", "tcp"]
Scope = frozenset[str]


@dataclass(slots=True)
class Answer:
    data: bytes


@dataclass(slots=True)
class Forward:
    query: bytes
    question: Question
    limit: int  #: largest answer the client accepts (truncate above)


@dataclass(slots=True)
class Drop:
    reason: str


@dataclass(frozen=True, slots=True)
class _Body:
    rcode: int
    answers: tuple[bytes, ...] = ()
    additional: tuple[bytes, ...] = ()
    dynamic: bool = False  #: shuffle the answers per query


_FORWARD = _Body(-1)
BODIES_PER_MEMO = 4  #: resolved bodies kept: this many times DnsConfig.memo_entries


#: A memoised dynamic answer: (bytes after the ID up to the answers, a shared cycle of
#: pre-encoded answer sections, the bytes after the answers).
DynHit = tuple  # tuple[bytes, Iterator[bytes], bytes]
VARIANT_MAX_RRS = 32  #: dynamic answers with more addresses are sampled per query
VARIANTS = 24  #: at least this many orders per dynamic answer (n! when smaller)


def render_hit(qid: bytes, hit: bytes | DynHit) -> bytes | None:
    """The answer for a memo ``hit`` (None: not renderable here, use
    :meth:`Responder.handle`). Adapters may inline this."""
    if hit.__class__ is bytes:
        return qid + hit  # type: ignore[operator]
    if hit.__class__ is tuple:
        head, rrs, tail = hit  # type: ignore[misc]
        return qid + head + next(rrs) + tail
    return None


def variants(rrs: tuple[bytes, ...], k: int, rng: Random) -> tuple[bytes, ...]:
    """Answer sections for a dynamic answer of ``rrs`` truncated to ``k`` records, one per
    order served in turn: all n! orders for n <= 4 (in random order), otherwise every
    rotation of ceil(VARIANTS / n) random permutations (each address first equally
    often over the cycle)."""
    n = len(rrs)
    if n <= 4:
        perms = list(permutations(rrs))
        rng.shuffle(perms)
    else:
        perms = []
        for _ in range(-(-VARIANTS // n)):
            p = rng.sample(rrs, n)
            perms += [p[i:] + p[:i] for i in range(n)]
    return tuple(b"".join(p[:k]) for p in perms)


class _Dyn:
    """A memoised dynamic answer with too many addresses for pre-encoded orders: fixed
    head and tail, ``k`` of ``rrs`` sampled per query."""

    __slots__ = ("head", "rrs", "k", "tail")

    def __init__(self, head: bytes, rrs: tuple[bytes, ...], k: int, tail: bytes) -> None:
        self.head, self.rrs, self.k, self.tail = head, rrs, k, tail

    def render(self, qid: bytes, rng: Random) -> bytes:
        return qid + self.head + b"".join(rng.sample(self.rrs, self.k)) + self.tail


class Responder:
    def __init__(self, config: DnsConfig | None = None, view: RecordsView | None = None,
                 rng: Random | None = None) -> None:
        self.config = config or DnsConfig()
        self.rng = rng or Random()
        self.view = view or RecordsView.empty()
        self.generation = 0
        self._memos: dict[tuple[Scope, str], dict[bytes, bytes | DynHit | _Dyn]] = {}
        self._bodies: dict[tuple[Scope, str, int], _Body] = {}
        #: (body key, k) -> shared cycle of pre-encoded answer sections
        self._cycles: dict[tuple, object] = {}
        self._opt = wire.opt_rr(self.config.edns_udp_size)
        self.stats: dict[str, int] = {"queries": 0, "memo_hits": 0, "malformed": 0,
                                      "dropped": 0, "forwarded": 0, "refused_internal": 0}
        self.rcodes: dict[int, int] = {}

    # --- view ---------------------------------------------------------------------

    def set_view(self, view: RecordsView) -> None:
        """Swap in a new view; every cached answer of the old one is forgotten."""
        self.view = view
        self._memos = {}
        self._bodies = {}
        self._cycles = {}
        self.generation += 1

    def memo_for(self, scope: Scope,
                 transport: Transport = "udp") -> dict[bytes, bytes | DynHit | _Dyn]:
        """The memo dict of one scope (for an adapter's inlined hot path, see
        :func:`render_hit`; read-only use, re-fetch after any miss was handled or when
        :attr:`generation` changes)."""
        key = (scope, transport)
        memo = self._memos.get(key)
        if memo is None:
            memo = self._memos[key] = {}
        return memo

    # --- queries ------------------------------------------------------------------

    def handle(self, data: bytes, scope: Scope, transport: Transport = "udp",
               now: float = 0.0) -> Answer | Forward | Drop:
        if data.__class__ is not bytes:
            data = bytes(data)
        memo = self._memos.get((scope, transport))
        if memo is not None:
            hit = memo.get(data[2:])
            if hit is not None:
                self.stats["memo_hits"] += 1
                out = render_hit(data[:2], hit)
                if out is None:
                    out = hit.render(data[:2], self.rng)  # type: ignore[union-attr]
                return Answer(out)
        return self._handle_miss(data, scope, transport)

    def _handle_miss(self, data: bytes, scope: Scope, transport: Transport) -> Answer | Forward | Drop:
        self.stats["queries"] += 1
        try:
            q = wire.parse_query(data)
        except WireError as exc:
            self.stats["malformed"] += 1
            reply = wire.error_reply(data, exc.rcode) if exc.rcode is not None else None
            if reply is None:
                self.stats["dropped"] += 1
                return Drop(str(exc))
            self._count(exc.rcode or 0)
            return Answer(reply)
        try:
            return self._answer(data, q, scope, transport)
        except (WireError, ValueError):  # an unencodable name in the view: SERVFAIL
            self._count(wire.SERVFAIL)
            return Answer(wire.build(q, wire.SERVFAIL, (), (), aa=False, ra=False,
                                     limit=512))

    def _answer(self, data: bytes, q: Question, scope: Scope,
                transport: Transport) -> Answer | Forward | Drop:
        if transport == "tcp":
            limit = wire.MAX_TCP
        elif q.edns:
            limit = min(q.udp_size, self.config.edns_udp_size)
        else:
            limit = 512
        opt = self._opt if q.edns else b""
        sv = self.view.for_networks(scope)
        if q.edns and q.edns_version > 0:
            self._count(wire.BADVERS)
            return Answer(wire.build(q, 0, (), (), aa=False, ra=sv.can_forward, limit=limit,
                                     opt=wire.opt_rr(self.config.edns_udp_size, 1)))
        bkey = (scope, q.qname, q.qtype if q.qclass == wire.IN else -q.qclass)
        body = self._bodies.get(bkey)
        if body is None:
            body = self._resolve(sv, q)
            if len(self._bodies) >= BODIES_PER_MEMO * self.config.memo_entries:
                self._bodies.clear()  # e.g. a flood of distinct forwarded names
                self._cycles.clear()
            self._bodies[bkey] = body
        if body is _FORWARD:
            if not sv.can_forward:
                self.stats["refused_internal"] += 1
                self._count(wire.REFUSED)
                return Answer(wire.build(q, wire.REFUSED, (), (), aa=False, ra=False,
                                         limit=limit, opt=opt))
            self.stats["forwarded"] += 1
            return Forward(data, q, limit)
        self._count(body.rcode)
        resp = wire.build(q, body.rcode, body.answers, body.additional, aa=True,
                          ra=sv.can_forward, limit=limit, opt=opt)
        memo = self.memo_for(scope, transport)
        if len(memo) >= self.config.memo_entries:
            memo.clear()
        if body.dynamic and len(body.answers) > 1:
            k = (resp[6] << 8) | resp[7]
            head = resp[2:12] + q.qbytes
            if len(body.answers) > VARIANT_MAX_RRS:
                dyn = _Dyn(head, body.answers, k, opt)
                memo[data[2:]] = dyn
                return Answer(dyn.render(q.id, self.rng))
            ckey = (bkey, k)
            orders = self._cycles.get(ckey)
            if orders is None:
                orders = self._cycles[ckey] = cycle(variants(body.answers, k, self.rng))
            hit = (head, orders, opt)
            memo[data[2:]] = hit
            return Answer(render_hit(q.id, hit))  # type: ignore[arg-type]
        memo[data[2:]] = resp[2:]
        return Answer(resp)

    def _count(self, rcode: int) -> None:
        self.rcodes[rcode] = self.rcodes.get(rcode, 0) + 1

    # --- resolution ---------------------------------------------------------------

    def _resolve(self, sv: ScopedView, q: Question) -> _Body:
        name, qtype = q.qname, q.qtype
        if name == wire.BAD_NAME or q.qclass not in (wire.IN, 255):
            return _FORWARD
        cfg = self.config
        if name.endswith(".arpa"):
            ip = reverse_to_ip(name)
            if ip is None:
                return _FORWARD
            targets = sv.ptr(ip)
            if not targets:
                return _Body(wire.NXDOMAIN) if sv.in_subnets(ip) else _FORWARD
            if qtype not in (wire.PTR, wire.ANY):
                return _Body(wire.NOERROR)
            return _Body(wire.NOERROR, tuple(wire.rr_ptr(t, cfg.ptr_ttl) for t in targets))
        entry = sv.lookup(name)
        if entry is not None:
            ttl = cfg.task_ttl if entry.dynamic else cfg.name_ttl
            if qtype == wire.A:
                ips = entry.v4
            elif qtype == wire.AAAA:
                ips = entry.v6
            elif qtype == wire.ANY:
                return _Body(wire.NOERROR, tuple(wire.rr_addr(ip, ttl)
                                                 for ip in entry.v4 + entry.v6))
            else:
                ips = ()
            return _Body(wire.NOERROR, tuple(wire.rr_addr(ip, ttl) for ip in ips),
                         dynamic=entry.dynamic)
        if name.startswith("_"):
            srv = sv.srv(name)
            if srv is not None:
                if qtype not in (wire.SRV, wire.ANY):
                    return _Body(wire.NOERROR)
                answers = tuple(wire.rr_srv(t.priority, t.weight, t.port, t.target,
                                            cfg.srv_ttl) for t in srv)
                extra: dict[bytes, None] = {}
                for t in srv:
                    owner = wire.encode_name(t.target)
                    for ip in t.addrs:
                        extra[wire.rr_addr(ip, cfg.srv_ttl, owner)] = None
                return _Body(wire.NOERROR, answers, tuple(extra))
        if name and sv.owns(name):
            return _Body(wire.NXDOMAIN)
        return _FORWARD
