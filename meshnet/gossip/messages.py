"""memberlist message bodies as frozen dataclasses, encoded like go-msgpack v0.5.5.

Design notes
------------
* One dataclass per Go struct of memberlist v0.2.2 (see
  ``memberlist-protocol.md`` section 3). Python field names are snake_case; the wire
  keys are the Go field names, written **in alphabetical order** with the old msgpack
  spec (``use_bin_type=False``: ``str`` and ``bytes`` both become raw strings, never
  ``str8``/``bin``). ``omitempty`` fields are left out when zero; an empty ``[]byte``
  that Go holds as nil is written as msgpack nil (``c0``).
* ``Vsn`` is a Go ``[]byte`` and so goes out as a 6-byte raw string.
* Decoding (``from_body``) is tolerant like Go's decoder: unknown keys are ignored,
  missing keys and nil take the zero value, ``[]byte`` accepts str, bin or an array of
  small ints, ``bool`` accepts 0/1. Anything else raises :class:`DecodeError` (a
  :class:`~meshnet.errors.PeerError`), and nothing else escapes.
* Strings (node names) must be valid UTF-8; we refuse the rest rather than carry
  bytes we could not re-encode.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass
from typing import Any, ClassVar

from meshnet.errors import PeerError

# Message type bytes (section 2 of the notes).
PING = 0
INDIRECT_PING = 1
ACK = 2
SUSPECT = 3
ALIVE = 4
DEAD = 5
PUSH_PULL = 6
COMPOUND = 7
USER = 8
COMPRESS = 9
ENCRYPT = 10
NACK = 11
HAS_CRC = 12
ERR = 13
HAS_LABEL = 244

TYPE_NAMES = {
    PING: "ping",
    INDIRECT_PING: "indirect_ping",
    ACK: "ack",
    SUSPECT: "suspect",
    ALIVE: "alive",
    DEAD: "dead",
    PUSH_PULL: "push_pull",
    COMPOUND: "compound",
    USER: "user",
    COMPRESS: "compress",
    ENCRYPT: "encrypt",
    NACK: "nack",
    HAS_CRC: "crc",
    ERR: "err",
    HAS_LABEL: "label",
}

# Node states as carried in pushNodeState.State.
STATE_ALIVE = 0
STATE_SUSPECT = 1
STATE_DEAD = 2
STATE_LEFT = 3

VSN_LEN = 6


class DecodeError(PeerError):
    """A peer sent bytes we cannot decode. ``reason`` names the drop counter."""

    def __init__(self, message: str, reason: str = "decode_error") -> None:
        super().__init__(message)
        self.reason = reason


# -- field readers (tolerant like go-msgpack, strict about types) -------------


def _uint(m: dict, key: bytes, bits: int = 32) -> int:
    v = m.get(key)
    if v is None:
        return 0
    if isinstance(v, bool):
        raise DecodeError(f"{key.decode()}: bool where uint expected")
    if not isinstance(v, int) or v < 0 or v >= (1 << bits):
        raise DecodeError(f"{key.decode()}: bad uint{bits} {v!r}")
    return v


def _int(m: dict, key: bytes, lo: int = 0, hi: int = (1 << 63) - 1) -> int:
    v = m.get(key)
    if v is None:
        return 0
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise DecodeError(f"{key.decode()}: bad int {v!r}")
    return v


def _bool(m: dict, key: bytes) -> bool:
    v = m.get(key)
    if v is None:
        return False
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    raise DecodeError(f"{key.decode()}: bad bool {v!r}")


def _bytes(m: dict, key: bytes) -> bytes:
    v = m.get(key)
    if v is None:
        return b""
    if isinstance(v, bytes):
        return v
    if isinstance(v, (list, tuple)):
        if all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= 255 for x in v):
            return bytes(v)
    raise DecodeError(f"{key.decode()}: bad bytes {type(v).__name__}")


def _str(m: dict, key: bytes) -> str:
    v = m.get(key)
    if v is None:
        return ""
    if not isinstance(v, bytes):
        raise DecodeError(f"{key.decode()}: bad string {type(v).__name__}")
    try:
        return v.decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError(f"{key.decode()}: string is not UTF-8") from None


def _nil_if_empty(b: bytes) -> bytes | None:
    return b if b else None


@functools.lru_cache(maxsize=4096)
def addr_to_wire(addr: str) -> bytes:
    """IP string -> 4 or 16 raw bytes (Go's ``To4()`` form for IPv4)."""
    return ipaddress.ip_address(addr).packed


@functools.lru_cache(maxsize=4096)
def addr_from_wire(raw: bytes) -> str:
    """4 or 16 raw bytes -> IP string; anything else is a peer fault."""
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw))
    if len(raw) == 16:
        ip = ipaddress.IPv6Address(raw)
        return str(ip.ipv4_mapped) if ip.ipv4_mapped else str(ip)
    raise DecodeError(f"bad IP address length {len(raw)}")


def claimed_source(addr: bytes, port: int, src: tuple[str, int]) -> tuple[str, int]:
    """Where a ping's (or indirect ping's) sender wants its answer: the address and port
    it put in the message, else where the datagram came from."""
    if addr and port:
        return (addr_from_wire(addr), port)
    return src


# -- message bodies ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ping:
    TYPE: ClassVar[int] = PING
    seq_no: int
    node: str
    source_addr: bytes = b""
    source_port: int = 0
    source_node: str = ""

    def body(self) -> dict:
        d: dict[str, Any] = {"Node": self.node, "SeqNo": self.seq_no}
        if self.source_addr:
            d["SourceAddr"] = self.source_addr
        if self.source_node:
            d["SourceNode"] = self.source_node
        if self.source_port:
            d["SourcePort"] = self.source_port
        return d

    @classmethod
    def from_body(cls, m: dict) -> Ping:
        return cls(
            seq_no=_uint(m, b"SeqNo"),
            node=_str(m, b"Node"),
            source_addr=_bytes(m, b"SourceAddr"),
            source_port=_uint(m, b"SourcePort", 16),
            source_node=_str(m, b"SourceNode"),
        )


@dataclass(frozen=True, slots=True)
class IndirectPing:
    TYPE: ClassVar[int] = INDIRECT_PING
    seq_no: int
    target: bytes
    port: int
    node: str
    nack: bool = False
    source_addr: bytes = b""
    source_port: int = 0
    source_node: str = ""

    def body(self) -> dict:
        d: dict[str, Any] = {
            "Nack": self.nack,
            "Node": self.node,
            "Port": self.port,
            "SeqNo": self.seq_no,
        }
        if self.source_addr:
            d["SourceAddr"] = self.source_addr
        if self.source_node:
            d["SourceNode"] = self.source_node
        if self.source_port:
            d["SourcePort"] = self.source_port
        d["Target"] = _nil_if_empty(self.target)
        return d

    @classmethod
    def from_body(cls, m: dict) -> IndirectPing:
        return cls(
            seq_no=_uint(m, b"SeqNo"),
            target=_bytes(m, b"Target"),
            port=_uint(m, b"Port", 16),
            node=_str(m, b"Node"),
            nack=_bool(m, b"Nack"),
            source_addr=_bytes(m, b"SourceAddr"),
            source_port=_uint(m, b"SourcePort", 16),
            source_node=_str(m, b"SourceNode"),
        )


@dataclass(frozen=True, slots=True)
class Ack:
    TYPE: ClassVar[int] = ACK
    seq_no: int
    payload: bytes = b""

    def body(self) -> dict:
        return {"Payload": _nil_if_empty(self.payload), "SeqNo": self.seq_no}

    @classmethod
    def from_body(cls, m: dict) -> Ack:
        return cls(seq_no=_uint(m, b"SeqNo"), payload=_bytes(m, b"Payload"))


@dataclass(frozen=True, slots=True)
class Nack:
    TYPE: ClassVar[int] = NACK
    seq_no: int

    def body(self) -> dict:
        return {"SeqNo": self.seq_no}

    @classmethod
    def from_body(cls, m: dict) -> Nack:
        return cls(seq_no=_uint(m, b"SeqNo"))


@dataclass(frozen=True, slots=True)
class Suspect:
    TYPE: ClassVar[int] = SUSPECT
    incarnation: int
    node: str
    from_: str

    def body(self) -> dict:
        return {"From": self.from_, "Incarnation": self.incarnation, "Node": self.node}

    @classmethod
    def from_body(cls, m: dict) -> Suspect:
        return cls(_uint(m, b"Incarnation"), _str(m, b"Node"), _str(m, b"From"))


@dataclass(frozen=True, slots=True)
class Dead:
    TYPE: ClassVar[int] = DEAD
    incarnation: int
    node: str
    from_: str

    def body(self) -> dict:
        return {"From": self.from_, "Incarnation": self.incarnation, "Node": self.node}

    @classmethod
    def from_body(cls, m: dict) -> Dead:
        return cls(_uint(m, b"Incarnation"), _str(m, b"Node"), _str(m, b"From"))


@dataclass(frozen=True, slots=True)
class Alive:
    TYPE: ClassVar[int] = ALIVE
    incarnation: int
    node: str
    addr: bytes
    port: int
    meta: bytes = b""
    vsn: bytes = b""

    def body(self) -> dict:
        return {
            "Addr": _nil_if_empty(self.addr),
            "Incarnation": self.incarnation,
            "Meta": _nil_if_empty(self.meta),
            "Node": self.node,
            "Port": self.port,
            "Vsn": _nil_if_empty(self.vsn),
        }

    @classmethod
    def from_body(cls, m: dict) -> Alive:
        return cls(
            incarnation=_uint(m, b"Incarnation"),
            node=_str(m, b"Node"),
            addr=_bytes(m, b"Addr"),
            port=_uint(m, b"Port", 16),
            meta=_bytes(m, b"Meta"),
            vsn=_bytes(m, b"Vsn"),
        )


@dataclass(frozen=True, slots=True)
class PushPullHeader:
    TYPE: ClassVar[int] = PUSH_PULL
    nodes: int
    user_state_len: int = 0
    join: bool = False

    def body(self) -> dict:
        return {"Join": self.join, "Nodes": self.nodes, "UserStateLen": self.user_state_len}

    @classmethod
    def from_body(cls, m: dict) -> PushPullHeader:
        return cls(
            nodes=_int(m, b"Nodes", 0, 1 << 31),
            user_state_len=_int(m, b"UserStateLen", 0, 1 << 31),
            join=_bool(m, b"Join"),
        )


@dataclass(frozen=True, slots=True)
class PushNodeState:
    name: str
    addr: bytes
    port: int
    meta: bytes
    incarnation: int
    state: int
    vsn: bytes

    def body(self) -> dict:
        return {
            "Addr": _nil_if_empty(self.addr),
            "Incarnation": self.incarnation,
            "Meta": _nil_if_empty(self.meta),
            "Name": self.name,
            "Port": self.port,
            "State": self.state,
            "Vsn": _nil_if_empty(self.vsn),
        }

    @classmethod
    def from_body(cls, m: dict) -> PushNodeState:
        return cls(
            name=_str(m, b"Name"),
            addr=_bytes(m, b"Addr"),
            port=_uint(m, b"Port", 16),
            meta=_bytes(m, b"Meta"),
            incarnation=_uint(m, b"Incarnation"),
            state=_int(m, b"State", -(1 << 31), (1 << 31) - 1),
            vsn=_bytes(m, b"Vsn"),
        )


@dataclass(frozen=True, slots=True)
class Compress:
    TYPE: ClassVar[int] = COMPRESS
    algo: int
    buf: bytes

    def body(self) -> dict:
        return {"Algo": self.algo, "Buf": _nil_if_empty(self.buf)}

    @classmethod
    def from_body(cls, m: dict) -> Compress:
        return cls(algo=_uint(m, b"Algo", 8), buf=_bytes(m, b"Buf"))


@dataclass(frozen=True, slots=True)
class ErrResp:
    TYPE: ClassVar[int] = ERR
    error: str

    def body(self) -> dict:
        return {"Error": self.error}

    @classmethod
    def from_body(cls, m: dict) -> ErrResp:
        return cls(error=_str(m, b"Error"))


@dataclass(frozen=True, slots=True)
class UserMsgHeader:
    TYPE: ClassVar[int] = USER
    user_msg_len: int

    def body(self) -> dict:
        return {"UserMsgLen": self.user_msg_len}

    @classmethod
    def from_body(cls, m: dict) -> UserMsgHeader:
        return cls(user_msg_len=_int(m, b"UserMsgLen", 0, 1 << 31))


@dataclass(frozen=True, slots=True)
class User:
    """A UDP user message: the raw bytes after the type byte (no msgpack)."""

    TYPE: ClassVar[int] = USER
    payload: bytes


# Bodies that arrive as a single msgpack object after their type byte on UDP.
PACKET_BODIES: dict[int, Any] = {
    PING: Ping,
    INDIRECT_PING: IndirectPing,
    ACK: Ack,
    NACK: Nack,
    SUSPECT: Suspect,
    ALIVE: Alive,
    DEAD: Dead,
}

Message = Ping | IndirectPing | Ack | Nack | Suspect | Alive | Dead | User
