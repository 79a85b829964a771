"""DNS wire format, fast path: read a query's header and first question, splice answers.

Design notes
------------
* :func:`parse_query` reads only what the responder needs: the header, the first
  question (QNAME, QTYPE, QCLASS; the question bytes are kept verbatim so the answer
  echoes the client's 0x20 case mix) and, when ARCOUNT > 0, the additional section far
  enough to find an EDNS0 OPT record (UDP size, version, DO). Anything unusual (a
  compression pointer in the question, records in the answer/authority sections of a
  query) goes to :func:`parse_query_slow` (dnslib).
* Answers are built by splicing bytes: header + the query's question bytes + pre-encoded
  RRs + our OPT. RRs whose owner is the question name use the pointer ``0xC00C`` (the
  question always starts at offset 12), so one encoded RR fits every query for that
  name whatever its case. RDATA names are written uncompressed.
* Truncation (:func:`build`): whole RRs are added while they fit the limit; if an answer
  RR does not fit, TC is set and the additional section is left out (clients that ignore
  TC, e.g. musl, still get as many addresses as fit).
* Peer faults: :class:`WireError` carries ``rcode`` (FORMERR/NOTIMP) when the header is
  readable enough to answer, ``None`` when the packet must be dropped. Nothing else
  escapes; callers never see IndexError/struct errors from peer bytes.
* No I/O, no clock: used by the responder and the forwarder cores.
"""

from __future__ import annotations

from typing import NamedTuple

from meshnet.errors import PeerError
from meshnet.model import IPAddress

# RR types and classes
A, NS, CNAME, SOA, PTR, MX, TXT, AAAA, SRV, OPT, ANY = 1, 2, 5, 6, 12, 15, 16, 28, 33, 41, 255
IN = 1
# rcodes
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
BADVERS = 16  # extended rcode (upper 8 bits in OPT)

QR, AA, TC, RD = 0x8000, 0x0400, 0x0200, 0x0100
RA, AD, CD = 0x0080, 0x0020, 0x0010

MAX_TCP = 65535


class WireError(PeerError):
    """A malformed message. ``rcode``: answer with it; None: drop silently."""

    def __init__(self, msg: str, rcode: int | None = FORMERR) -> None:
        super().__init__(msg)
        self.rcode = rcode


class Question(NamedTuple):
    id: bytes  #: 2 bytes, echoed
    flags: int
    qname: str  #: lower-case, dotted, no trailing dot ("" for the root); "\x00" if unusable
    qtype: int
    qclass: int
    qbytes: bytes  #: the question section exactly as it will be echoed
    edns: bool
    udp_size: int  #: the client's EDNS0 size (512 without EDNS)
    edns_version: int
    do: bool

    @property
    def rd(self) -> bool:
        return bool(self.flags & RD)

    @property
    def opcode(self) -> int:
        return (self.flags >> 11) & 0xF


BAD_NAME = "\x00"  #: qname of a question whose labels hold dots or non-ASCII bytes


def parse_query(data: bytes) -> Question:
    """The header and first question of a query; raises :class:`WireError` only."""
    n = len(data)
    if n < 12:
        raise WireError("short header", None)
    flags = (data[2] << 8) | data[3]
    if flags & QR:
        raise WireError("a response sent to the resolver", None)
    qd = (data[4] << 8) | data[5]
    if (flags >> 11) & 0xF:
        raise WireError("opcode not implemented", NOTIMP)
    if qd != 1:
        raise WireError(f"{qd} questions")
    if data[6] or data[7] or data[8] or data[9]:
        return parse_query_slow(data)
    labels: list[bytes] = []
    off = 12
    total = 0
    while True:
        if off >= n:
            raise WireError("question runs past the end")
        ln = data[off]
        if ln == 0:
            off += 1
            break
        if ln > 63:
            return parse_query_slow(data)  # pointer or extended label type
        labels.append(data[off + 1:off + 1 + ln])
        off += 1 + ln
        total += 1 + ln
        if total > 254:
            raise WireError("name too long")
    if off + 4 > n:
        raise WireError("question runs past the end")
    qtype = (data[off] << 8) | data[off + 1]
    qclass = (data[off + 2] << 8) | data[off + 3]
    off += 4
    edns, udp_size, version, do = False, 512, 0, False
    if data[10] or data[11]:
        edns, udp_size, version, do = _find_opt(data, off, (data[10] << 8) | data[11])
    return Question(data[:2], flags, _qname(labels), qtype, qclass, data[12:off],
                    edns, udp_size, version, do)


def _qname(labels: list[bytes]) -> str:
    for lb in labels:
        if b"." in lb:
            return BAD_NAME
    try:
        return b".".join(labels).lower().decode("ascii")
    except UnicodeDecodeError:
        return BAD_NAME


def _find_opt(data: bytes, off: int, count: int) -> tuple[bool, int, int, bool]:
    n = len(data)
    found: tuple[bool, int, int, bool] | None = None
    for _ in range(count):
        name_start = off
        off = skip_name(data, off)
        if off + 10 > n:
            raise WireError("additional record runs past the end")
        rtype = (data[off] << 8) | data[off + 1]
        rdlen = (data[off + 8] << 8) | data[off + 9]
        if rtype == OPT:
            if found is not None:
                raise WireError("two OPT records")
            if data[name_start] != 0:
                raise WireError("OPT owner is not the root")
            size = max(512, (data[off + 2] << 8) | data[off + 3])
            version = data[off + 5]
            do = bool(data[off + 6] & 0x80)
            found = (True, size, version, do)
        off += 10 + rdlen
        if off > n:
            raise WireError("additional record runs past the end")
    return found or (False, 512, 0, False)


def parse_query_slow(data: bytes) -> Question:
    """dnslib fallback for unusual but possibly valid queries."""
    import dnslib  # only here: the fast path never pays for it

    try:
        rec = dnslib.DNSRecord.parse(data)
    except Exception as exc:  # dnslib raises many types on garbage  # noqa: BLE001
        raise WireError(f"undecodable query: {exc.__class__.__name__}") from None
    if len(rec.questions) != 1:
        raise WireError(f"{len(rec.questions)} questions")
    q = rec.questions[0]
    labels = list(q.qname.label)
    try:
        qbytes = encode_name_labels(labels) + (q.qtype).to_bytes(2, "big") + \
            (q.qclass).to_bytes(2, "big")
    except (ValueError, OverflowError):
        raise WireError("unencodable question") from None
    edns, size, version, do = False, 512, 0, False
    opts = [r for r in rec.ar if r.rtype == OPT]
    if len(opts) > 1:
        raise WireError("two OPT records")
    if opts:
        o = opts[0]
        edns, size = True, max(512, int(o.rclass))
        version, do = (int(o.ttl) >> 16) & 0xFF, bool(int(o.ttl) & 0x8000)
    flags = (data[2] << 8) | data[3]
    return Question(data[:2], flags, _qname(labels), int(q.qtype), int(q.qclass), qbytes,
                    edns, size, version, do)


def header_of(data: bytes) -> tuple[bytes, int] | None:
    """(id, flags) when the header is readable and is a query, else None."""
    if len(data) < 12 or data[2] & 0x80:
        return None
    return data[:2], (data[2] << 8) | data[3]


# --- encoding ----------------------------------------------------------------------


def encode_name_labels(labels: list[bytes]) -> bytes:
    out = bytearray()
    for lb in labels:
        if not 0 < len(lb) <= 63:
            raise ValueError(f"bad label {lb!r}")
        out.append(len(lb))
        out += lb
    out.append(0)
    if len(out) > 255:
        raise ValueError("name too long")
    return bytes(out)


def encode_name(name: str) -> bytes:
    name = name.rstrip(".")
    return encode_name_labels([p.encode("ascii") for p in name.split(".")] if name else [])


_PTR_OWNER = b"\xc0\x0c"


def rr(rtype: int, ttl: int, rdata: bytes, owner: bytes = _PTR_OWNER) -> bytes:
    """One RR; ``owner`` defaults to a pointer to the question name."""
    return (owner + rtype.to_bytes(2, "big") + b"\x00\x01" + ttl.to_bytes(4, "big")
            + len(rdata).to_bytes(2, "big") + rdata)


def rr_addr(ip: IPAddress, ttl: int, owner: bytes = _PTR_OWNER) -> bytes:
    return rr(A if ip.version == 4 else AAAA, ttl, ip.packed, owner)


def rr_ptr(target: str, ttl: int) -> bytes:
    return rr(PTR, ttl, encode_name(target))


def rr_srv(priority: int, weight: int, port: int, target: str, ttl: int) -> bytes:
    data = (priority.to_bytes(2, "big") + weight.to_bytes(2, "big") + port.to_bytes(2, "big")
            + encode_name(target))
    return rr(SRV, ttl, data)


def opt_rr(udp_size: int, ext_rcode: int = 0, version: int = 0) -> bytes:
    return (b"\x00\x00\x29" + udp_size.to_bytes(2, "big") + bytes([ext_rcode, version])
            + b"\x00\x00\x00\x00")


def response_flags(q_flags: int, rcode: int, aa: bool, ra: bool) -> int:
    f = QR | (q_flags & (0x7800 | RD | CD)) | (rcode & 0xF)
    if aa:
        f |= AA
    if ra:
        f |= RA
    return f


def build(q: Question, rcode: int, answers: list[bytes] | tuple[bytes, ...],
          additional: list[bytes] | tuple[bytes, ...], *, aa: bool, ra: bool, limit: int,
          opt: bytes = b"") -> bytes:
    """A complete response to ``q``; see the module notes for truncation."""
    size = 12 + len(q.qbytes) + len(opt)
    an: list[bytes] = []
    tc = False
    for r in answers:
        size += len(r)
        if size > limit:
            tc = True
            break
        an.append(r)
    ar: list[bytes] = []
    if not tc:
        for r in additional:
            size += len(r)
            if size > limit:
                break
            ar.append(r)
    flags = response_flags(q.flags, rcode, aa, ra) | (TC if tc else 0)
    head = q.id + flags.to_bytes(2, "big") + b"\x00\x01" + len(an).to_bytes(2, "big") + \
        b"\x00\x00" + (len(ar) + (1 if opt else 0)).to_bytes(2, "big")
    return head + q.qbytes + b"".join(an) + b"".join(ar) + opt


def error_reply(data: bytes, rcode: int) -> bytes | None:
    """A header-only answer (no question) with ``rcode``, or None if unanswerable."""
    h = header_of(data)
    if h is None:
        return None
    qid, flags = h
    f = response_flags(flags, rcode, False, False)
    return qid + f.to_bytes(2, "big") + b"\x00" * 8


# --- reading responses (forwarder) --------------------------------------------------


def skip_name(data: bytes, off: int) -> int:
    """Offset just past the (possibly compressed) name at ``off``."""
    n = len(data)
    while True:
        if off >= n:
            raise WireError("name runs past the end")
        ln = data[off]
        if ln == 0:
            return off + 1
        if ln & 0xC0 == 0xC0:
            if off + 2 > n:
                raise WireError("pointer runs past the end")
            return off + 2
        if ln > 63:
            raise WireError("bad label type")
        off += 1 + ln


def question_end(data: bytes) -> int:
    """Offset just past the (single) question section of a message."""
    if len(data) < 12 or ((data[4] << 8) | data[5]) != 1:
        raise WireError("not exactly one question")
    off = skip_name(data, 12) + 4
    if off > len(data):
        raise WireError("question runs past the end")
    return off


class RRInfo(NamedTuple):
    section: int  #: 0 answer, 1 authority, 2 additional
    rtype: int
    ttl_off: int
    ttl: int
    rdata_off: int
    rdlen: int


def walk_rrs(data: bytes) -> list[RRInfo]:
    """Every RR of a response after its single question; raises WireError on garbage."""
    off = question_end(data)
    counts = ((data[6] << 8) | data[7], (data[8] << 8) | data[9], (data[10] << 8) | data[11])
    out: list[RRInfo] = []
    n = len(data)
    for section, count in enumerate(counts):
        for _ in range(count):
            off = skip_name(data, off)
            if off + 10 > n:
                raise WireError("record runs past the end")
            rtype = (data[off] << 8) | data[off + 1]
            ttl = int.from_bytes(data[off + 4:off + 8], "big")
            rdlen = (data[off + 8] << 8) | data[off + 9]
            out.append(RRInfo(section, rtype, off + 4, ttl, off + 10, rdlen))
            off += 10 + rdlen
            if off > n:
                raise WireError("record runs past the end")
    return out


def cache_ttl(data: bytes, rrs: list[RRInfo]) -> int:
    """How long a response may be cached (RFC 2181 min TTL; RFC 2308 for negatives)."""
    rcode = data[3] & 0xF
    answers = [r for r in rrs if r.section == 0]
    if rcode == NOERROR and answers:
        return min(r.ttl for r in rrs if r.rtype != OPT)
    for r in rrs:  # negative: SOA in authority, min(SOA TTL, SOA MINIMUM)
        if r.section == 1 and r.rtype == SOA and r.rdlen >= 20:
            minimum = int.from_bytes(data[r.rdata_off + r.rdlen - 4:r.rdata_off + r.rdlen],
                                     "big")
            return min(r.ttl, minimum)
    return 0


def with_ttls_aged(data: bytes, rrs: list[RRInfo], age: int) -> bytes:
    """``data`` with every TTL (not OPT's) lowered by ``age`` seconds (floor 0)."""
    if age <= 0:
        return data
    buf = bytearray(data)
    for r in rrs:
        if r.rtype != OPT:
            buf[r.ttl_off:r.ttl_off + 4] = max(0, r.ttl - age).to_bytes(4, "big")
    return bytes(buf)


def truncated(data: bytes, limit: int) -> bytes:
    """A response cut to header + question with TC set, when it exceeds ``limit``."""
    if len(data) <= limit:
        return data
    try:
        qend = question_end(data)
    except WireError:
        qend = 12
    flags = ((data[2] << 8) | data[3]) | TC
    qd = b"\x00\x01" if qend > 12 else b"\x00\x00"
    return data[:2] + flags.to_bytes(2, "big") + qd + b"\x00" * 6 + data[12:qend]
