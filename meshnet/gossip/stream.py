"""Sans-IO parser for one memberlist TCP ("stream") message.

Design notes
------------
* A TCP connection carries one request and at most one reply, each a single message
  with no outer length (notes section 7). A :class:`StreamParser` is fed bytes as
  they arrive and returns a :class:`ParsedStream` the moment the message is complete;
  the caller must answer right away (the peer keeps the socket open waiting).
* Layers, outermost first: optional label ``[244][len][label]`` (stripped) ->
  optional ``[10][len u32][blob]`` (decrypted with AAD = the 5 header bytes) ->
  optional ``[9]`` compress object (decompressed) -> body:
  ``6`` push/pull (header, ``Nodes`` node states, ``UserStateLen`` raw bytes),
  ``0`` ping, ``2`` ack, ``13`` err (one object each), ``8`` user (header + raw).
* msgpack objects are pulled from a streaming ``Unpacker`` (which rolls back on
  partial objects), raw tails with ``read_bytes``. Sizes are capped: the whole stream
  (20 MiB), decompressed data (40 MiB), node count, user state and user message length.
* Anything malformed raises :class:`DecodeError` (a PeerError) and nothing else.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import msgpack

from meshnet.gossip import codec
from meshnet.gossip.messages import (
    ACK,
    COMPRESS,
    ENCRYPT,
    ERR,
    HAS_LABEL,
    PING,
    PUSH_PULL,
    USER,
    Ack,
    Compress,
    DecodeError,
    ErrResp,
    Ping,
    PushNodeState,
    PushPullHeader,
    UserMsgHeader,
)
from meshnet.gossip.security import Keyring

MAX_STREAM_BYTES = 20 * 1024 * 1024
MAX_DECOMPRESSED = 40 * 1024 * 1024
MAX_PUSH_NODES = 100_000
MAX_USER_BYTES = 20 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class PushPull:
    header: PushPullHeader
    nodes: tuple[PushNodeState, ...]
    user_state: bytes = b""


@dataclass(frozen=True, slots=True)
class StreamUser:
    payload: bytes


StreamBody = PushPull | Ping | Ack | ErrResp | StreamUser


@dataclass(frozen=True, slots=True)
class ParsedStream:
    message: StreamBody
    encrypted: bool
    compressed: bool


@dataclass(frozen=True, slots=True)
class Limits:
    max_stream: int = MAX_STREAM_BYTES
    max_decompressed: int = MAX_DECOMPRESSED
    max_nodes: int = MAX_PUSH_NODES
    max_user: int = MAX_USER_BYTES


class StreamParser:
    """Feed bytes with :meth:`feed`; call :meth:`finish` at EOF."""

    def __init__(self, keyring: Keyring | None = None, limits: Limits = Limits()) -> None:
        self._keyring = keyring
        self._limits = limits
        self._prefix = bytearray()
        self._body: _Body | None = None
        self._total = 0
        self.result: ParsedStream | None = None

    def feed(self, data: bytes) -> ParsedStream | None:
        if self.result is not None:
            return self.result  # trailing bytes after the message are ignored
        self._total += len(data)
        if self._total > self._limits.max_stream:
            raise DecodeError(f"stream exceeds {self._limits.max_stream} bytes", "oversized")
        if self._body is not None:
            return self._done(self._body.feed(data), encrypted=False)
        self._prefix += data
        return self._parse_prefix()

    def finish(self) -> ParsedStream:
        """The peer closed its side: return the message or raise (truncated)."""
        if self.result is None:
            raise DecodeError("stream closed before a complete message", "truncated")
        return self.result

    def _done(self, body: tuple[StreamBody, bool] | None, encrypted: bool) -> ParsedStream | None:
        if body is None:
            return None
        self.result = ParsedStream(body[0], encrypted, body[1])
        return self.result

    def _parse_prefix(self) -> ParsedStream | None:
        buf = self._prefix
        if not buf:
            return None
        if buf[0] == HAS_LABEL:
            if len(buf) < 2 or len(buf) < 2 + buf[1]:
                return None
            if buf[1] == 0:
                raise DecodeError("empty label header")
            del buf[: 2 + buf[1]]
            return self._parse_prefix()
        if buf[0] == ENCRYPT:
            if len(buf) < 5:
                return None
            (size,) = struct.unpack(">I", buf[1:5])
            if size > self._limits.max_stream:
                raise DecodeError(f"encrypted stream of {size} bytes", "oversized")
            if len(buf) < 5 + size:
                return None
            if not self._keyring:
                raise DecodeError(
                    "Remote state is encrypted and encryption is not configured",
                    "encrypted_without_key",
                )
            plain = self._keyring.decrypt_stream(bytes(buf[:5]), bytes(buf[5 : 5 + size]))
            self._prefix = bytearray()
            return self._done(_parse_complete(plain, self._limits, True), encrypted=True)
        t = buf[0]
        rest = bytes(buf[1:])
        self._prefix = bytearray()
        self._body = _Body(t, self._limits, allow_compress=True)
        return self._done(self._body.feed(rest), encrypted=False)


def _parse_complete(data: bytes, limits: Limits, allow_compress: bool) -> tuple[StreamBody, bool]:
    if not data:
        raise DecodeError("empty stream message", "truncated")
    body = _Body(data[0], limits, allow_compress)
    r = body.feed(data[1:])
    if r is None:
        raise DecodeError("incomplete stream message", "truncated")
    return r


class _Body:
    """Incremental parse of one body once its type byte is known."""

    def __init__(self, t: int, limits: Limits, allow_compress: bool) -> None:
        if t not in (PING, ACK, ERR, PUSH_PULL, USER) and not (t == COMPRESS and allow_compress):
            raise DecodeError(f"stream message type {t} not supported", "unknown_type")
        self._t = t
        self._limits = limits
        cap = limits.max_decompressed if not allow_compress else limits.max_stream
        self._u = msgpack.Unpacker(
            raw=True,
            strict_map_key=False,
            max_buffer_size=cap,
            max_str_len=cap,
            max_bin_len=cap,
            max_array_len=1 << 20,
            max_map_len=1 << 16,
            max_ext_len=1 << 16,
        )
        self._header: Any = None
        self._nodes: list[PushNodeState] = []
        self._tail = bytearray()

    def feed(self, data: bytes) -> tuple[StreamBody, bool] | None:
        try:
            self._u.feed(data)
            return self._step()
        except msgpack.OutOfData:
            return None
        except DecodeError:
            raise
        except Exception as exc:  # msgpack's many exception types: all peer faults
            raise DecodeError(f"bad msgpack in stream: {type(exc).__name__}") from None

    def _obj(self, cls: Any) -> Any:
        return codec.body_from_obj(cls, self._u.unpack())

    def _raw(self, want: int) -> bool:
        while len(self._tail) < want:
            chunk = self._u.read_bytes(want - len(self._tail))
            if not chunk:
                return False
            self._tail += chunk
        return True

    def _step(self) -> tuple[StreamBody, bool] | None:
        t = self._t
        if t == PING:
            return self._obj(Ping), False
        if t == ACK:
            return self._obj(Ack), False
        if t == ERR:
            return self._obj(ErrResp), False
        if t == COMPRESS:
            c = self._obj(Compress)
            inner = codec.decompress_obj(c, self._limits.max_decompressed)
            msg, _ = _parse_complete(inner, self._limits, allow_compress=False)
            return msg, True
        if t == USER:
            if self._header is None:
                self._header = self._obj(UserMsgHeader)
                if self._header.user_msg_len > self._limits.max_user:
                    raise DecodeError("user message too large", "oversized")
            if not self._raw(self._header.user_msg_len):
                return None
            return StreamUser(bytes(self._tail)), False
        # PUSH_PULL
        if self._header is None:
            h = self._obj(PushPullHeader)
            if h.nodes > self._limits.max_nodes:
                raise DecodeError(f"push/pull with {h.nodes} nodes", "oversized")
            if h.user_state_len > self._limits.max_stream:
                raise DecodeError("push/pull user state too large", "oversized")
            self._header = h
        while len(self._nodes) < self._header.nodes:
            self._nodes.append(self._obj(PushNodeState))
        if not self._raw(self._header.user_state_len):
            return None
        return PushPull(self._header, tuple(self._nodes), bytes(self._tail)), False


def encode_push_pull(header: PushPullHeader, nodes: list[PushNodeState], user_state: bytes = b"") -> bytes:
    parts = [bytes([PUSH_PULL]), codec.pack(header.body())]
    parts.extend(codec.pack(n.body()) for n in nodes)
    parts.append(user_state)
    return b"".join(parts)


def encode_user_stream(payload: bytes) -> bytes:
    return bytes([USER]) + codec.pack(UserMsgHeader(len(payload)).body()) + payload


def frame_stream(message: bytes, *, compress: bool, keyring: Keyring | None) -> bytes:
    """Writer side: optionally ``[9]``-wrap (always, when on), then ``[10]``-encrypt."""
    if compress:
        message = codec.compress_message(message)
    if keyring:
        message = keyring.encrypt_stream(message)
    return message
