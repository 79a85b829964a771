"""TCP half of the core: push/pull state sync, join, reconnect, stream messages.

Design notes
------------
* ``Syncer``, a collaborator of :class:`~meshnet.gossip.core.Memberlist`: it holds the
  streams in flight and the joins, and reaches its node only through ``SyncNode``
  (member table, keys, the app-message and Lamport-time hooks), so it imports no
  core. All TCP is sans-IO: outbound work is a ``StreamRequest`` the driver runs,
  feeding the reply to ``stream_reply``; inbound connections are ``InboundStream``
  objects fed by the driver.
* Push/pull (notes 7.1): our state is every known node (dead and left too) with a
  6-byte Vsn and ``UserStateLen`` 0. The initiator sends first and merges the reply;
  the responder **replies first, then merges** (so an initiator can see success while
  the responder rejected its versions, as with memberlist). Merges are refused when
  ``verify_protocol`` fails. A peer's user state is skipped (serf's is only read for
  its Lamport time).
* Periodic push/pull every ``PushPullInterval`` (scaled above 32 nodes) with one
  random alive node, ``Join=false``; ``join()`` does ``Join=true`` to each address;
  reconnect (serf's behaviour) does ``Join=true`` to a random failed member.
* Every stream is framed as serf does: always LZW-wrapped when compression is on,
  then ``[10]``-encrypted when a keyring is set. With a keyring, plaintext input is
  refused and answered with an encrypted ``errResp``; undecodable input is answered
  with an ``errResp`` too (memberlist does the same).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from random import Random
from typing import Protocol

from meshnet.gossip import codec
from meshnet.gossip.config import GossipConfig
from meshnet.gossip.events import Address, JoinCompleted, StreamRequest
from meshnet.gossip.messages import Ack, DecodeError, ErrResp, Ping, PushPullHeader
from meshnet.gossip.security import Keyring
from meshnet.gossip.state import Membership, NodeRecord, NodeState
from meshnet.gossip.stream import (
    Limits,
    ParsedStream,
    PushPull,
    StreamParser,
    StreamUser,
    encode_push_pull,
    frame_stream,
)

SERF_PUSH_PULL = 2
INF = float("inf")


@dataclass
class PendingStream:
    req: StreamRequest
    parser: StreamParser | None
    join_id: int | None = None
    probe_seq: int | None = None


@dataclass
class JoinOp:
    remaining: int
    ok: int = 0
    errors: list[str] = field(default_factory=list)


class SyncNode(Protocol):
    """What the syncer uses of its node."""

    name: str
    config: GossipConfig
    metrics: Counter[str]
    rng: Random
    keyring: Keyring | None
    encrypting: bool
    _ms: Membership
    _limits: Limits
    _leave_phase: str | None

    def num_alive(self) -> int: ...

    def _k_random(self, k: int, skip: Callable[[NodeRecord], bool]) -> list[NodeRecord]: ...

    def _drop(self, reason: str, src: Address | None = None,
              exc: Exception | None = None) -> None: ...

    def _ensure_started(self, now: float) -> None: ...

    def _on_user(self, payload: bytes, src: Address, now: float, reliable: bool) -> None: ...

    def _witness_serf_ltime(self, body: bytes) -> None: ...

    def _tcp_ping_answered(self, seq: int) -> None: ...


class Syncer:
    """One node's TCP side: outbound stream requests and their replies, joins, inbound
    streams."""

    def __init__(self, node: SyncNode) -> None:
        self.n = node
        self.streams: list[StreamRequest] = []  #: requests for the driver (drained)
        self._pending: dict[int, PendingStream] = {}
        self._joins: dict[int, JoinOp] = {}
        self._stream_id = 0
        self._join_id = 0

    def next_deadline(self) -> float:
        return min((x.req.deadline for x in self._pending.values()), default=INF)

    def expire(self, now: float) -> None:
        """Fail the outbound streams past their deadline (the driver should have)."""
        for sid, pend in list(self._pending.items()):
            if now >= pend.req.deadline:
                self.stream_reply(sid, None, now)

    def join(self, addrs: list[Address], now: float) -> int:
        self._join_id += 1
        jid = self._join_id
        self._joins[jid] = JoinOp(remaining=len(addrs))
        if not addrs:
            self._finish_join(jid)
        for a in addrs:
            self.start_push_pull(a, True, now, jid)
        return jid

    def tcp_ping(self, addr: Address, ping: bytes, now: float, deadline: float,
                 seq: int) -> None:
        sid = self.new_stream(addr, ping, True, now, "ping", deadline=deadline)
        self._pending[sid].probe_seq = seq

    def new_stream(self, addr: Address, message: bytes, expect_reply: bool, now: float,
                    purpose: str, deadline: float | None = None, join_id: int | None = None,
                    compress: bool | None = None) -> int:
        self._stream_id += 1
        if compress is None:
            compress = self.n.config.enable_compression
        data = frame_stream(message, compress=compress,
                            keyring=self.n.keyring if self.n.encrypting else None)
        req = StreamRequest(self._stream_id, addr, data, expect_reply,
                            deadline if deadline is not None else now + self.n.config.tcp_timeout,
                            purpose)
        self.streams.append(req)
        self.n.metrics[f"sent.stream.{purpose}"] += 1
        if expect_reply:
            self._pending[req.id] = PendingStream(req, StreamParser(self.n.keyring, self.n._limits), join_id)
        return req.id

    def _local_push_pull(self, join: bool) -> bytes:
        nodes = self.n._ms.local_state()
        return encode_push_pull(PushPullHeader(len(nodes), 0, join), nodes)

    def start_push_pull(self, addr: Address, join: bool, now: float, join_id: int | None) -> None:
        self.new_stream(addr, self._local_push_pull(join), True, now, "push_pull",
                         join_id=join_id)

    def push_pull_period(self) -> float:
        """memberlist's pushPullScale: the interval grows with log2 of the size past 32."""
        n = self.n._ms.num_nodes()
        interval = self.n.config.push_pull_interval
        if n > 32:
            interval *= math.ceil(math.log2(n) - math.log2(32)) + 1
        return interval

    def periodic_push_pull(self, now: float) -> None:
        peers = self.n._k_random(1, lambda r: r.name == self.n.name or r.state != NodeState.ALIVE)
        if peers:
            self.start_push_pull(peers[0].address, False, now, None)

    def reconnect(self, now: float) -> None:
        """serf's reconnect: Join push/pull with a random failed member, with
        probability failed/alive so a big cluster does not storm."""
        failed = self.n._ms.failed
        for name, (_, since) in list(failed.items()):
            if now - since > self.n.config.reconnect_timeout:
                del failed[name]
        if not failed or self.n._leave_phase is not None:
            return
        if self.n.rng.random() > len(failed) / max(1, self.n.num_alive()):
            return
        name = self.n.rng.choice(sorted(failed))
        self.n.metrics["reconnect.attempts"] += 1
        self.start_push_pull(failed[name][0], True, now, None)

    def stream_reply(self, request_id: int, data: bytes | None, now: float) -> bool:
        """Feed reply bytes of an outbound stream; None = failed/EOF. True = close it."""
        pend = self._pending.get(request_id)
        if pend is None or pend.parser is None:
            return True
        error = None
        msg = None
        if data is None:
            error = "connection failed or closed without a reply"
        else:
            try:
                msg = pend.parser.feed(data)
            except DecodeError as exc:
                self.n._drop(exc.reason, pend.req.addr, exc)
                error = str(exc)
            if msg is None and error is None:
                return False
        del self._pending[request_id]
        if msg is not None:
            error = self._on_reply(pend, msg, now)
        if error is not None:
            self.n.metrics[f"stream.{pend.req.purpose}.failed"] += 1
        if pend.join_id is not None:
            op = self._joins.get(pend.join_id)
            if op is not None:
                op.remaining -= 1
                if error is None:
                    op.ok += 1
                else:
                    op.errors.append(f"{pend.req.addr[0]}:{pend.req.addr[1]}: {error}")
                if op.remaining <= 0:
                    self._finish_join(pend.join_id)
        return True

    def _finish_join(self, jid: int) -> None:
        op = self._joins.pop(jid)
        self.n._ms.events.append(JoinCompleted(jid, op.ok, tuple(op.errors)))

    def _on_reply(self, pend: PendingStream, parsed: ParsedStream, now: float) -> str | None:
        msg = parsed.message
        if isinstance(msg, ErrResp):
            self.n.metrics["recv.err"] += 1
            return f"remote error: {msg.error}"
        if self.n.keyring and self.n.config.gossip_verify_incoming and not parsed.encrypted:
            self.n._drop("plaintext_when_encrypted", pend.req.addr)
            return "Encryption is configured but remote state is not encrypted"
        if pend.probe_seq is not None:
            if isinstance(msg, Ack) and msg.seq_no == pend.probe_seq:
                self.n._tcp_ping_answered(pend.probe_seq)
                return None
            return "unexpected reply to TCP ping"
        if not isinstance(msg, PushPull):
            self.n._drop("unexpected_stream_reply", pend.req.addr)
            return "expected a push/pull reply"
        return self._merge_remote(msg, pend.req.addr, now)

    def _merge_remote(self, pp: PushPull, src: Address, now: float) -> str | None:
        self.n.metrics["recv.push_pull"] += 1
        err = self.n._ms.verify_protocol(pp.nodes)
        if err is not None:
            self.n._drop("incompatible", src, DecodeError(err))
            return err
        self.n._ms.merge(pp.nodes, now)
        if pp.user_state and pp.user_state[0] == SERF_PUSH_PULL:
            self.n._witness_serf_ltime(pp.user_state[1:])
        return None

    def open_stream(self, src: Address) -> InboundStream:
        """A peer connected to our TCP port; feed its bytes to the returned object."""
        return InboundStream(self, src)

    def handle_inbound(self, parsed: ParsedStream, src: Address, now: float) -> bytes | None:
        msg = parsed.message
        if self.n.keyring and self.n.config.gossip_verify_incoming and not parsed.encrypted:
            self.n._drop("plaintext_when_encrypted", src)
            return self.frame(codec.encode(ErrResp(
                "Encryption is configured but remote state is not encrypted")))
        if isinstance(msg, PushPull):
            reply = self.frame(self._local_push_pull(msg.header.join))
            self._merge_remote(msg, src, now)  # reply first, then merge (as memberlist)
            return reply
        if isinstance(msg, Ping):
            self.n.metrics["recv.stream.ping"] += 1
            if msg.node and msg.node != self.n.name:
                self.n._drop("ping_wrong_node", src)
                return None
            return self.frame(codec.encode(Ack(msg.seq_no)))
        if isinstance(msg, StreamUser):
            self.n.metrics["recv.stream.user"] += 1
            self.n._on_user(msg.payload, src, now, reliable=True)
            return None
        self.n._drop("unexpected_stream_message", src)
        return None

    def frame(self, message: bytes) -> bytes:
        return frame_stream(message, compress=self.n.config.enable_compression,
                            keyring=self.n.keyring if self.n.encrypting else None)


class InboundStream:
    """One accepted TCP connection, sans-IO: feed bytes, get at most one reply."""

    def __init__(self, syncer: Syncer, src: Address) -> None:
        self._sync = syncer
        self.src = src
        self._parser = StreamParser(syncer.n.keyring, syncer.n._limits)
        self.done = False

    def feed(self, data: bytes, now: float) -> bytes | None:
        """Bytes from the peer. Returns the reply to write (then close) if any;
        after ``done`` is set the connection should be closed."""
        if self.done:
            return None
        sync = self._sync
        try:
            parsed = self._parser.feed(data)
        except DecodeError as exc:
            self.done = True
            sync.n._drop(exc.reason, self.src, exc)
            return sync.frame(codec.encode(ErrResp(str(exc))))
        if parsed is None:
            return None
        self.done = True
        try:
            return sync.handle_inbound(parsed, self.src, now)
        except DecodeError as exc:
            sync.n._drop(exc.reason, self.src, exc)
            return None

    def eof(self, now: float) -> None:
        """The peer closed before sending a complete message."""
        if not self.done:
            self.done = True
            self._sync.n._drop("truncated", self.src)
