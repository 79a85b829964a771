"""UDP packet framing for memberlist: type byte + msgpack, compound, compress, CRC.

Design notes
------------
* ``encode(msg)`` = type byte + old-spec msgpack of the body (keys alphabetical).
* Sending layers, innermost first (notes section 4): piggyback into a compound
  (``make_compound``), LZW-compress if that is smaller (``compress_packet``), prepend
  a CRC when the recipient's PMax >= 5 (``add_crc``), then encrypt (``security``).
* ``decode_packet`` undoes them: strip a label (type 244; memberlist >= 0.3.0 only),
  decrypt when a keyring is given (plaintext is refused when ``require_encryption``),
  check the outermost CRC, then walk compounds and compress wrappers (depth-capped)
  into a flat list of message objects. A bad compound part or a truncated compound
  tail is recorded as a *drop* and the other parts are kept, as memberlist does.
* Every decode failure is a :class:`DecodeError` (a PeerError) carrying a ``reason``
  that the core uses as a metrics key. msgpack's own exceptions are converted in one
  place, :func:`unpack_one`.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import msgpack

from meshnet.gossip import lzw
from meshnet.gossip.messages import (
    COMPOUND,
    COMPRESS,
    HAS_CRC,
    HAS_LABEL,
    PACKET_BODIES,
    USER,
    Compress,
    DecodeError,
    Message,
    User,
)
from meshnet.gossip.security import Keyring

MAX_PACKET = 65536  # Go's UDP receive buffer
MAX_NESTING = 4  # compound/compress nesting we follow
COMPOUND_HEADER_OVERHEAD = 2  # type byte + count
COMPOUND_PART_OVERHEAD = 2  # u16 length per part
MAX_COMPOUND_PARTS = 255
LZW_ALGO = 0
# Below this size LZW practically never wins; skip trying (it is only used if smaller).
MIN_COMPRESS_SIZE = 96

_MSGPACK_LIMITS = dict(
    max_str_len=MAX_PACKET * 1024,
    max_bin_len=MAX_PACKET * 1024,
    max_array_len=1 << 20,
    max_map_len=1 << 16,
    max_ext_len=1 << 16,
)


def pack(body: dict) -> bytes:
    """Old-spec msgpack with keys sorted (go-msgpack field order)."""
    return msgpack.packb(dict(sorted(body.items())), use_bin_type=False)


def encode(msg: Any) -> bytes:
    """Type byte + msgpack body. ``User`` messages carry raw bytes instead."""
    if isinstance(msg, User):
        return bytes([USER]) + msg.payload
    return bytes([msg.TYPE]) + pack(msg.body())


def unpack_one(data: bytes, *, max_len: int = MAX_PACKET) -> tuple[Any, int]:
    """Decode one msgpack object from the start of ``data``; return (obj, used)."""
    u = msgpack.Unpacker(
        raw=True,
        strict_map_key=False,
        max_buffer_size=max(max_len, 1),
        **_limits(max_len),
    )
    try:
        u.feed(data)
        obj = u.unpack()
    except msgpack.OutOfData:
        raise DecodeError("truncated msgpack body", "truncated") from None
    except Exception as exc:  # msgpack raises many types on garbage; all are peer faults
        raise DecodeError(f"bad msgpack: {type(exc).__name__}") from None
    return obj, u.tell()


def _limits(max_len: int) -> dict:
    return {k: min(v, max(max_len, 1)) for k, v in _MSGPACK_LIMITS.items()}


def decode_body(cls: Any, data: bytes) -> Any:
    """Decode a msgpack map into ``cls`` (a messages dataclass)."""
    obj, _ = unpack_one(data)
    return body_from_obj(cls, obj)


def body_from_obj(cls: Any, obj: Any) -> Any:
    if not isinstance(obj, dict):
        raise DecodeError(f"{cls.__name__}: body is not a map")
    return cls.from_body(obj)


# -- compound -----------------------------------------------------------------


def make_compound(parts: list[bytes]) -> bytes:
    if not 0 < len(parts) <= MAX_COMPOUND_PARTS:
        raise ValueError(f"compound needs 1..255 parts, got {len(parts)}")
    head = bytearray([COMPOUND, len(parts)])
    for p in parts:
        if len(p) > 0xFFFF:
            raise ValueError("compound part too large")
        head += struct.pack(">H", len(p))
    return bytes(head) + b"".join(parts)


def split_compound(body: bytes) -> tuple[list[bytes], int]:
    """Split a compound body (after the type byte) into parts.

    Returns ``(parts, truncated)`` where ``truncated`` counts declared parts that
    did not fit in the buffer.
    """
    if len(body) < 1:
        raise DecodeError("missing compound length byte", "truncated")
    count = body[0]
    body = body[1:]
    if len(body) < count * 2:
        raise DecodeError("truncated compound header", "truncated")
    lengths = struct.unpack(f">{count}H", body[: count * 2]) if count else ()
    body = body[count * 2 :]
    parts = []
    for i, n in enumerate(lengths):
        if len(body) < n:
            return parts, count - i
        parts.append(body[:n])
        body = body[n:]
    return parts, 0


# -- compress / crc -------------------------------------------------------------


def compress_message(msg: bytes) -> bytes:
    """``[9] + compress{Algo: 0, Buf: lzw(msg)}`` (always, as on TCP)."""
    return encode(Compress(LZW_ALGO, lzw.compress(msg)))


def compress_packet(packet: bytes) -> bytes:
    """UDP rule: use the compressed form only if it is smaller."""
    if len(packet) < MIN_COMPRESS_SIZE:
        return packet
    wrapped = compress_message(packet)
    return wrapped if len(wrapped) < len(packet) else packet


def decompress_body(body: bytes, max_output: int) -> bytes:
    """Body of a type-9 message (after the type byte) -> the inner message."""
    c = decode_body(Compress, body)
    return decompress_obj(c, max_output)


def decompress_obj(c: Compress, max_output: int) -> bytes:
    if c.algo != LZW_ALGO:
        raise DecodeError(f"unknown compression algorithm {c.algo}", "decompress_failed")
    try:
        out = lzw.decompress(c.buf, max_output=max_output)
    except lzw.LzwError as exc:
        raise DecodeError(str(exc), "decompress_failed") from None
    if not out:
        raise DecodeError("empty decompressed message", "decompress_failed")
    return out


def add_crc(packet: bytes) -> bytes:
    return bytes([HAS_CRC]) + struct.pack(">I", zlib.crc32(packet)) + packet


def strip_label(data: bytes) -> bytes:
    """Drop a memberlist >= 0.3.0 label header ``[244][len][label]`` if present."""
    if data and data[0] == HAS_LABEL:
        if len(data) < 2 or data[1] == 0 or len(data) < 2 + data[1]:
            raise DecodeError("truncated label header", "truncated")
        return data[2 + data[1] :]
    return data


# -- inbound -------------------------------------------------------------------


@dataclass
class DecodedPacket:
    messages: list[Message] = field(default_factory=list)
    drops: list[str] = field(default_factory=list)
    encrypted: bool = False
    had_crc: bool = False


def decode_packet(
    data: bytes,
    keyring: Keyring | None = None,
    *,
    require_encryption: bool = True,
    max_decompressed: int = lzw.DEFAULT_MAX_OUTPUT,
) -> DecodedPacket:
    """Turn one datagram into messages. Raises DecodeError only for whole-packet faults."""
    if len(data) > MAX_PACKET:
        raise DecodeError(f"datagram of {len(data)} bytes", "oversized")
    data = strip_label(data)
    out = DecodedPacket()
    if keyring:
        try:
            data = keyring.decrypt_packet(data)
            out.encrypted = True
        except DecodeError as exc:
            if require_encryption:
                if _is_plaintext(data, max_decompressed):
                    raise DecodeError(str(exc), "plaintext_when_encrypted") from None
                raise
    if len(data) >= 5 and data[0] == HAS_CRC:
        (want,) = struct.unpack(">I", data[1:5])
        data = data[5:]
        if zlib.crc32(data) != want:
            raise DecodeError("bad checksum", "bad_crc")
        out.had_crc = True
    _walk(data, out, 0, max_decompressed)
    return out


def _is_plaintext(data: bytes, max_decompressed: int) -> bool:
    """After a failed decrypt: does this parse as a plaintext memberlist packet?"""
    probe = DecodedPacket()
    try:
        if len(data) >= 5 and data[0] == HAS_CRC:
            data = data[5:]
        _walk(data, probe, 0, max_decompressed)
    except DecodeError:
        return False
    return bool(probe.messages)


def _walk(data: bytes, out: DecodedPacket, depth: int, max_decompressed: int) -> None:
    if not data:
        raise DecodeError("empty message", "truncated")
    if depth > MAX_NESTING:
        raise DecodeError("messages nested too deeply")
    t = data[0]
    if t == COMPOUND:
        parts, truncated = split_compound(data[1:])
        if truncated:
            out.drops.extend(["truncated"] * truncated)
        for p in parts:
            try:
                _walk(p, out, depth + 1, max_decompressed)
            except DecodeError as exc:
                out.drops.append(exc.reason)
        return
    if t == COMPRESS:
        _walk(decompress_body(data[1:], max_decompressed), out, depth + 1, max_decompressed)
        return
    if t == USER:
        out.messages.append(User(data[1:]))
        return
    cls = PACKET_BODIES.get(t)
    if cls is None:
        raise DecodeError(f"message type {t} not supported", "unknown_type")
    out.messages.append(decode_body(cls, data[1:]))
