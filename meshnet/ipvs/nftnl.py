"""nf_tables set-element batches over netlink: the hot path of the nftables backend.

A backend change under ``--lb nftables`` is a change of set elements only (the rules
never change with backends, see :mod:`meshnet.ipvs.nftrules`). ``nft`` would do it in a
fresh process that first reads the table back (its cache: every chain, rule and interval
set, so its cost grows with the table) and whose exit waits for an RCU grace period; this
module builds the elements itself, in one batch (one atomic transaction), and
:class:`meshnet.ipvs.nftables.ElementWriter` sends it on one netlink socket per namespace
kept open.

This module is sans-IO (unit-tested byte for byte against what ``nft --debug=netlink``
sends): :func:`batch` builds ``NFNL_MSG_BATCH_BEGIN``, ``NFT_MSG_DELSETELEM`` /
``NFT_MSG_NEWSETELEM`` messages (at most ``CHUNK`` elements each: a netlink attribute
holds at most 64 KiB) and ``NFNL_MSG_BATCH_END``; :func:`acks` reads the kernel's answers.
Only element changes of existing sets go this way; tables, chains, rules and sets are
created by ``nft -f`` (rare: a service added or removed).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN = 0x10
NFNL_MSG_BATCH_END = 0x11
NFT_MSG_NEWSETELEM = (NFNL_SUBSYS_NFTABLES << 8) | 12
NFT_MSG_DELSETELEM = (NFNL_SUBSYS_NFTABLES << 8) | 14
NLMSG_ERROR = 2
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_CREATE = 0x400
NLA_F_NESTED = 0x8000
NFTA_SET_ELEM_LIST_TABLE = 1
NFTA_SET_ELEM_LIST_SET = 2
NFTA_SET_ELEM_LIST_ELEMENTS = 3
NFTA_LIST_ELEM = 1
NFTA_SET_ELEM_KEY = 1
NFTA_SET_ELEM_DATA = 2
NFTA_SET_ELEM_FLAGS = 3
NFTA_DATA_VALUE = 1
NFT_SET_ELEM_INTERVAL_END = 1
AF_INET = 2
CHUNK = 256  #: elements per message (each < 64 bytes encoded: well under 64 KiB)


@dataclass(frozen=True)
class Elem:
    """One set element as the kernel holds it: key bytes, data bytes (maps), and whether
    it is the end marker of an interval."""

    key: bytes
    data: bytes | None = None
    end: bool = False


    def encode(self) -> bytes:
        """The ``NFTA_LIST_ELEM`` attribute."""
        parts = [_nested(NFTA_SET_ELEM_KEY, [_attr(NFTA_DATA_VALUE, self.key)])]
        if self.end:
            parts.append(_attr(NFTA_SET_ELEM_FLAGS,
                               struct.pack(">I", NFT_SET_ELEM_INTERVAL_END)))
        if self.data is not None:
            parts.append(_nested(NFTA_SET_ELEM_DATA, [_attr(NFTA_DATA_VALUE, self.data)]))
        return _nested(NFTA_LIST_ELEM, parts)


@dataclass(frozen=True)
class SetChange:
    """Delete ``delete`` then add ``add`` in set ``name`` (same transaction). Elements
    are held encoded, in chunks of up to ``CHUNK`` (:func:`chunked`; one message each):
    a full sync's plan of 10,000 elements is ~2,000 bytes objects, cheap to build and to
    free (freeing one object per element cost the next change ~1 ms at 1,000 services)."""

    name: str
    delete: tuple[bytes, ...] = ()
    add: tuple[bytes, ...] = ()
    table: str = ""  #: "" = the batch's table


def _attr(kind: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("=HH", n, kind) + payload + b"\0" * (-n % 4)


def _nested(kind: int, parts: Iterable[bytes]) -> bytes:
    return _attr(kind | NLA_F_NESTED, b"".join(parts))


def _msg(kind: int, flags: int, seq: int, body: bytes, family: int = AF_INET,
         res_id: int = 0) -> bytes:
    payload = struct.pack(">BBH", family, 0, res_id) + body  # res_id: network order
    return struct.pack("=IHHII", 16 + len(payload), kind, flags, seq, 0) + payload


def _strz(s: str) -> bytes:
    return s.encode() + b"\0"


def batch(table: str, changes: Sequence[SetChange], seq: int) -> tuple[bytes, int]:
    """One transaction: (bytes to send, the sequence number whose answer ends it).

    Every deletion of every set comes before the additions (so an element re-added with
    new data never meets itself). Only the last message asks for an acknowledgement: the
    kernel processes the whole batch even after an error and reports every error, so the
    last answer comes after all others (one ack per message would overrun the receive
    buffer on a full sync of 1,000 sets). If the kernel cannot queue its errors it answers
    the batch's first sequence number instead."""
    msgs: list[tuple[int, int, bytes]] = []
    for kind, pick in ((NFT_MSG_DELSETELEM, lambda c: c.delete),
                       (NFT_MSG_NEWSETELEM, lambda c: c.add)):
        flags = NLM_F_REQUEST | (NLM_F_CREATE if kind == NFT_MSG_NEWSETELEM else 0)
        for c in changes:
            for chunk in pick(c):
                body = (_attr(NFTA_SET_ELEM_LIST_TABLE, _strz(c.table or table))
                        + _attr(NFTA_SET_ELEM_LIST_SET, _strz(c.name))
                        + _attr(NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED, chunk))
                msgs.append((kind, flags, body))
    if not msgs:
        raise ValueError("an empty batch")
    out = [_msg(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, b"", 0, NFNL_SUBSYS_NFTABLES)]
    for i, (kind, flags, body) in enumerate(msgs, 1):
        last = i == len(msgs)
        out.append(_msg(kind, flags | (NLM_F_ACK if last else 0), seq + i, body))
    end = seq + len(msgs)
    out.append(_msg(NFNL_MSG_BATCH_END, NLM_F_REQUEST, end + 1, b"", 0, NFNL_SUBSYS_NFTABLES))
    return b"".join(out), end


def acks(buf: bytes) -> list[tuple[int, int]]:
    """(sequence number, errno: 0 = acknowledged) of every NLMSG_ERROR in ``buf``.
    Malformed input raises ValueError."""
    out, off = [], 0
    while off + 16 <= len(buf):
        length, kind, _flags, seq, _pid = struct.unpack_from("=IHHII", buf, off)
        if length < 16 or off + length > len(buf):
            raise ValueError(f"bad netlink message length {length} at {off}")
        if kind == NLMSG_ERROR:
            if length < 20:
                raise ValueError("short NLMSG_ERROR")
            (err,) = struct.unpack_from("=i", buf, off + 16)
            out.append((seq, -err))
        off += (length + 3) & ~3
    return out


# --- encodings of the values meshnet puts in its sets ----------------------------------


def u32(v: int) -> bytes:
    """A numgen/jhash result as an interval key (the rule converts it to big endian)."""
    return struct.pack(">I", v)


_OCTET = {str(i): i for i in range(256)}


def v4(ip: str) -> bytes:
    """A dotted-quad IPv4 address (as ``str(IPv4Address)`` writes it) as 4 bytes; anything
    else raises ValueError. Octets by dict: cheaper than ``ipaddress``, and a full sync
    encodes one address per backend."""
    try:
        a, b, c, d = ip.split(".")
        return bytes((_OCTET[a], _OCTET[b], _OCTET[c], _OCTET[d]))
    except (ValueError, KeyError):
        raise ValueError(f"not an IPv4 address: {ip!r}") from None


def addr_port(ip: str, port: int) -> bytes:
    """``ip daddr . th dport`` map data: 4 address bytes, the port big endian, padded."""
    return v4(ip) + struct.pack(">H", port) + b"\0\0"


def addr_pair(a: str, b: str) -> bytes:
    return v4(a) + v4(b)


def chunked(elems: Sequence[bytes]) -> tuple[bytes, ...]:
    """Encoded elements joined into chunks of at most ``CHUNK`` (one message each)."""
    return tuple(b"".join(elems[i:i + CHUNK]) for i in range(0, len(elems), CHUNK))


def ranges_elems(ranges: Iterable[tuple[int, int, str, int]]) -> tuple[bytes, ...]:
    """Interval map elements as ``nft`` sends them, chunked: a start (with data) at ``lo``
    and an end marker at ``hi + 1``, for every range (adjacent ranges included)."""
    out: list[bytes] = []
    for lo, hi, ip, port in ranges:
        out.append(Elem(u32(lo), addr_port(ip, port)).encode())
        out.append(Elem(u32(hi + 1), None, True).encode())
    return chunked(out)
