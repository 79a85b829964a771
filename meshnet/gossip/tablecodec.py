"""Wire format of the replicated tables layer (see ``tables.py`` for the protocol).

Every message is ``b"m"`` (0x6d), one version byte (``VERSION`` = 1), then one msgpack
array (``use_bin_type=True``; this never goes to serf, so bin is fine)::

    gossip     [1, [entry, ...]]            UDP (or TCP for one entry too big for UDP)
    push/pull  [2, reply: bool, [entry, ...]]  TCP; reply=True asks for the peer's state
    digest     [3, [[owner: str, rows: int, hash: int], ...]]
                                            TCP; per owner, its live rows: how many and
                                            a 64-bit sum of their hashes (tabledigest)
    sync       [4, reply: bool, [owner, ...], [entry, ...]]
                                            TCP; every row of these owners; reply=True
                                            asks for the peer's rows of the same owners

    entry      [table: str, key: str, owner: str, ltime: int, deleted: bool,
                value: bin, reap_ms: int]

``value`` is empty and ``reap_ms`` (residual time before the tombstone is reaped, so
the whole cluster reaps at about the same moment) is > 0 only for tombstones
(``deleted``); live entries carry ``reap_ms`` = 0.

Decoding is strict: exact array lengths, exact types (``bool`` is not an ``int`` here),
size limits on every string, value and count. Any violation raises ``TableDecodeError``
(a ``PeerError``) with a short ``reason`` that the core counts as a metric.

Encoding helpers work on pre-encoded entry blobs, so the broadcast queue can size a
UDP batch exactly without re-encoding (msgpack arrays concatenate: header + items).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import msgpack

from meshnet.errors import PeerError

MAGIC = 0x6D  # b"m"
VERSION = 1
PREFIX = bytes((MAGIC, VERSION))

KIND_GOSSIP = 1
KIND_PUSH_PULL = 2
KIND_DIGEST = 3
KIND_SYNC = 4
MAX_HASH = 2**64 - 1

# Limits, in bytes of UTF-8 for strings. Local callers are held to the same limits
# (``check_table`` etc. raise ValueError) so that whatever we send, peers accept.
MAX_TABLE = 64
MAX_KEY = 512
MAX_NODE = 128
MAX_VALUE = 256 * 1024
MAX_LTIME = 2**63 - 1
MAX_REAP_MS = 2**32 - 1
MAX_ENTRIES = 1_000_000
MAX_MESSAGE = 64 * 1024 * 1024

# Bytes around the entry blobs in a gossip message: prefix (2) + fixarray (1) + kind (1)
# + entries array header (at most 3 bytes for < 65536 entries).
GOSSIP_OVERHEAD = 7
# Same for push/pull: prefix (2) + fixarray (1) + kind (1) + bool (1) + header (<= 5).
PUSH_PULL_OVERHEAD = 10


class TableDecodeError(PeerError):
    """A peer sent a tables message we cannot accept; ``reason`` names the metric."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class WireEntry:
    """One entry as it travels (see the module docstring for field meanings)."""

    table: str
    key: str
    owner: str
    ltime: int
    deleted: bool
    value: bytes
    reap_ms: int


@dataclass(frozen=True, slots=True)
class GossipMsg:
    entries: tuple[WireEntry, ...]


@dataclass(frozen=True, slots=True)
class PushPullMsg:
    reply: bool
    entries: tuple[WireEntry, ...]


@dataclass(frozen=True, slots=True)
class DigestMsg:
    digest: tuple[tuple[str, int, int], ...]  #: (owner, live rows, hash)


@dataclass(frozen=True, slots=True)
class SyncMsg:
    reply: bool
    owners: tuple[str, ...]
    entries: tuple[WireEntry, ...]


# --- local validation (our misuse raises ValueError) -------------------------------


def _utf8_len(s: str) -> int:
    return len(s) if s.isascii() else len(s.encode("utf-8", "surrogatepass"))


def _check_str(what: str, s: object, limit: int) -> None:
    if not isinstance(s, str):
        raise TypeError(f"{what} must be str, not {type(s).__name__}")
    if not s or _utf8_len(s) > limit:
        raise ValueError(f"{what} must be 1..{limit} bytes of UTF-8: {s[:40]!r}")
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{what} is not valid UTF-8: {s[:40]!r}") from exc


def check_table(table: object) -> None:
    _check_str("table", table, MAX_TABLE)


def check_key(key: object) -> None:
    _check_str("key", key, MAX_KEY)


def check_node(node: object) -> None:
    _check_str("node name", node, MAX_NODE)


def check_value(value: object) -> None:
    if not isinstance(value, bytes):
        raise TypeError(f"value must be bytes, not {type(value).__name__}")
    if len(value) > MAX_VALUE:
        raise ValueError(f"value is {len(value)} bytes, limit {MAX_VALUE}")


# --- encoding ----------------------------------------------------------------------


def encode_entry(e: WireEntry) -> bytes:
    """One entry as a msgpack blob, to be concatenated into a message."""
    return msgpack.packb(
        [e.table, e.key, e.owner, e.ltime, e.deleted, e.value, e.reap_ms], use_bin_type=True
    )


def _array_header(n: int) -> bytes:
    packer = msgpack.Packer()
    return packer.pack_array_header(n)


def pack_gossip(blobs: Sequence[bytes]) -> bytes:
    return b"".join(
        (PREFIX, b"\x92", msgpack.packb(KIND_GOSSIP), _array_header(len(blobs)), *blobs)
    )


def pack_push_pull(reply: bool, blobs: Sequence[bytes]) -> bytes:
    head = b"\x93" + msgpack.packb(KIND_PUSH_PULL) + msgpack.packb(reply)
    return b"".join((PREFIX, head, _array_header(len(blobs)), *blobs))


def chunk_push_pull(reply: bool, blobs: Iterable[bytes], max_size: int) -> list[bytes]:
    """Split a full state into push/pull messages of at most ``max_size`` bytes.

    Only the first chunk carries ``reply`` (the peer answers once). An empty state
    still gives one (empty) message, so a peer with nothing still asks for a reply.
    """
    return _chunks(blobs, max_size - PUSH_PULL_OVERHEAD,
                   lambda first, items: pack_push_pull(reply and first, items))


def _chunks(blobs: Iterable[bytes], budget: int,
            pack: Callable[[bool, list[bytes]], bytes]) -> list[bytes]:
    """Entry blobs packed into messages of at most ``budget`` bytes of entries each
    (``pack(first, items)``); at least one message, even for no entries."""
    out: list[bytes] = []
    cur: list[bytes] = []
    size = 0
    for blob in blobs:
        if cur and size + len(blob) > budget:
            out.append(pack(not out, cur))
            cur, size = [], 0
        cur.append(blob)
        size += len(blob)
    if cur or not out:
        out.append(pack(not out, cur))
    return out


def pack_digest(digest: dict[str, tuple[int, int]]) -> bytes:
    rows = [[owner, n, h] for owner, (n, h) in sorted(digest.items())]
    return PREFIX + msgpack.packb([KIND_DIGEST, rows], use_bin_type=True)


def chunk_sync(reply: bool, owners: Sequence[str], blobs: Iterable[bytes],
               max_size: int) -> list[bytes]:
    """The rows of ``owners`` in sync messages of at most ``max_size`` bytes; only the
    first carries ``reply``; every one names the owners."""
    head_owners = msgpack.packb(list(owners), use_bin_type=True)
    budget = max_size - PUSH_PULL_OVERHEAD - len(head_owners)

    def pack(first: bool, items: list[bytes]) -> bytes:
        flag = msgpack.packb(reply and first)
        head = b"\x94" + msgpack.packb(KIND_SYNC) + flag + head_owners
        return b"".join((PREFIX, head, _array_header(len(items)), *items))

    return _chunks(blobs, budget, pack)


# --- decoding (peer garbage raises TableDecodeError) ---------------------------------


def _field_str(v: object, what: str, limit: int) -> str:
    if type(v) is not str:
        raise TableDecodeError("bad_type", what)
    if not v or _utf8_len(v) > limit:
        raise TableDecodeError("bad_size", what)
    return v


def _field_int(v: object, what: str, hi: int) -> int:
    if type(v) is not int:
        raise TableDecodeError("bad_type", what)
    if not 0 <= v <= hi:
        raise TableDecodeError("bad_value", what)
    return v


def _decode_entry(raw: object) -> WireEntry:
    if type(raw) is not list or len(raw) != 7:
        raise TableDecodeError("bad_entry", "not a 7-array")
    table, key, owner, ltime, deleted, value, reap_ms = raw
    table = _field_str(table, "table", MAX_TABLE)
    key = _field_str(key, "key", MAX_KEY)
    owner = _field_str(owner, "owner", MAX_NODE)
    ltime = _field_int(ltime, "ltime", MAX_LTIME)
    if ltime == 0:
        raise TableDecodeError("bad_value", "ltime 0")
    if type(deleted) is not bool:
        raise TableDecodeError("bad_type", "deleted")
    if type(value) is not bytes:
        raise TableDecodeError("bad_type", "value")
    if len(value) > MAX_VALUE:
        raise TableDecodeError("bad_size", "value")
    reap_ms = _field_int(reap_ms, "reap_ms", MAX_REAP_MS)
    if deleted and value:
        raise TableDecodeError("bad_value", "tombstone with a value")
    if not deleted and reap_ms:
        raise TableDecodeError("bad_value", "live entry with reap time")
    return WireEntry(table, key, owner, ltime, deleted, value, reap_ms)


def _decode_entries(raw: object) -> tuple[WireEntry, ...]:
    if type(raw) is not list:
        raise TableDecodeError("bad_type", "entries")
    return tuple(_decode_entry(r) for r in raw)


def _decode_digest(raw: object) -> tuple[tuple[str, int, int], ...]:
    if type(raw) is not list:
        raise TableDecodeError("bad_type", "digest")
    out = []
    for item in raw:
        if type(item) is not list or len(item) != 3:
            raise TableDecodeError("bad_entry", "digest row")
        out.append((_field_str(item[0], "owner", MAX_NODE),
                    _field_int(item[1], "rows", MAX_ENTRIES),
                    _field_int(item[2], "hash", MAX_HASH)))
    return tuple(out)


def _decode_owners(raw: object) -> tuple[str, ...]:
    if type(raw) is not list:
        raise TableDecodeError("bad_type", "owners")
    return tuple(_field_str(o, "owner", MAX_NODE) for o in raw)


def decode(payload: bytes) -> GossipMsg | PushPullMsg | DigestMsg | SyncMsg:
    """Decode one message; raises ``TableDecodeError`` for anything malformed."""
    if len(payload) < 3:
        raise TableDecodeError("short")
    if payload[0] != MAGIC:
        raise TableDecodeError("bad_magic")
    if payload[1] != VERSION:
        raise TableDecodeError("bad_version", str(payload[1]))
    if len(payload) > MAX_MESSAGE:
        raise TableDecodeError("too_large")
    try:
        obj = msgpack.unpackb(
            memoryview(payload)[2:],
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_str_len=MAX_KEY,
            max_bin_len=MAX_VALUE,
            max_array_len=MAX_ENTRIES,
            max_map_len=0,
            max_ext_len=0,
        )
    except Exception as exc:  # any msgpack failure is the peer's fault; see errors.py
        raise TableDecodeError("bad_msgpack", type(exc).__name__) from exc
    if type(obj) is not list or not obj:
        raise TableDecodeError("bad_type", "message")
    kind = obj[0]
    if type(kind) is not int:
        raise TableDecodeError("bad_type", "kind")
    if kind == KIND_GOSSIP:
        if len(obj) != 2:
            raise TableDecodeError("bad_length", "gossip")
        return GossipMsg(_decode_entries(obj[1]))
    if kind == KIND_PUSH_PULL:
        if len(obj) != 3:
            raise TableDecodeError("bad_length", "push_pull")
        if type(obj[1]) is not bool:
            raise TableDecodeError("bad_type", "reply")
        return PushPullMsg(obj[1], _decode_entries(obj[2]))
    if kind == KIND_DIGEST:
        if len(obj) != 2:
            raise TableDecodeError("bad_length", "digest")
        return DigestMsg(_decode_digest(obj[1]))
    if kind == KIND_SYNC:
        if len(obj) != 4:
            raise TableDecodeError("bad_length", "sync")
        if type(obj[1]) is not bool:
            raise TableDecodeError("bad_type", "reply")
        return SyncMsg(obj[1], _decode_owners(obj[2]), _decode_entries(obj[3]))
    raise TableDecodeError("unknown_kind", str(kind))
