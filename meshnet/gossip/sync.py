"""TCP half of the core: push/pull state sync, join, reconnect, stream messages.

Design notes
------------
* A mixin of :class:`~meshnet.gossip.core.Memberlist`; split out to keep modules
  small. All TCP is sans-IO: outbound work is a ``StreamRequest`` the driver runs,
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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from meshnet.gossip import codec
from meshnet.gossip.events import Address, JoinCompleted, StreamRequest
from meshnet.gossip.messages import Ack, DecodeError, ErrResp, Ping, PushPullHeader
from meshnet.gossip.state import NodeState
from meshnet.gossip.stream import (
    ParsedStream,
    PushPull,
    StreamParser,
    StreamUser,
    encode_push_pull,
    frame_stream,
)

if TYPE_CHECKING:
    from meshnet.gossip.core import Memberlist

    _Base = Memberlist
else:
    _Base = object

SERF_PUSH_PULL = 2


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


class SyncMixin(_Base):
    def _new_stream(self, addr: Address, message: bytes, expect_reply: bool, now: float,
                    purpose: str, deadline: float | None = None, join_id: int | None = None,
                    compress: bool | None = None) -> int:
        self._stream_id += 1
        if compress is None:
            compress = self.config.enable_compression
        data = frame_stream(message, compress=compress,
                            keyring=self.keyring if self.encrypting else None)
        req = StreamRequest(self._stream_id, addr, data, expect_reply,
                            deadline if deadline is not None else now + self.config.tcp_timeout,
                            purpose)
        self._streams.append(req)
        self.metrics[f"sent.stream.{purpose}"] += 1
        if expect_reply:
            self._pending[req.id] = PendingStream(req, StreamParser(self.keyring, self._limits), join_id)
        return req.id

    def _local_push_pull(self, join: bool) -> bytes:
        nodes = self._ms.local_state()
        return encode_push_pull(PushPullHeader(len(nodes), 0, join), nodes)

    def _start_push_pull(self, addr: Address, join: bool, now: float, join_id: int | None) -> None:
        self._new_stream(addr, self._local_push_pull(join), True, now, "push_pull",
                         join_id=join_id)

    def push_pull_period(self) -> float:
        """memberlist's pushPullScale: the interval grows with log2 of the size past 32."""
        n = self._ms.num_nodes()
        interval = self.config.push_pull_interval
        if n > 32:
            interval *= math.ceil(math.log2(n) - math.log2(32)) + 1
        return interval

    def _periodic_push_pull(self, now: float) -> None:
        self._next_push_pull = now + self.push_pull_period()
        peers = self._k_random(1, lambda r: r.name == self.name or r.state != NodeState.ALIVE)
        if peers:
            self._start_push_pull(peers[0].address, False, now, None)

    def _reconnect(self, now: float) -> None:
        """serf's reconnect: Join push/pull with a random failed member, with
        probability failed/alive so a big cluster does not storm."""
        failed = self._ms.failed
        for name, (_, since) in list(failed.items()):
            if now - since > self.config.reconnect_timeout:
                del failed[name]
        if not failed or self._leave_phase is not None:
            return
        if self.rng.random() > len(failed) / max(1, self.num_alive()):
            return
        name = self.rng.choice(sorted(failed))
        self.metrics["reconnect.attempts"] += 1
        self._start_push_pull(failed[name][0], True, now, None)

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
                self._drop(exc.reason, pend.req.addr, exc)
                error = str(exc)
            if msg is None and error is None:
                return False
        del self._pending[request_id]
        if msg is not None:
            error = self._on_reply(pend, msg, now)
        if error is not None:
            self.metrics[f"stream.{pend.req.purpose}.failed"] += 1
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
        self._ms.events.append(JoinCompleted(jid, op.ok, tuple(op.errors)))

    def _on_reply(self, pend: PendingStream, parsed: ParsedStream, now: float) -> str | None:
        msg = parsed.message
        if isinstance(msg, ErrResp):
            self.metrics["recv.err"] += 1
            return f"remote error: {msg.error}"
        if self.keyring and self.config.gossip_verify_incoming and not parsed.encrypted:
            self._drop("plaintext_when_encrypted", pend.req.addr)
            return "Encryption is configured but remote state is not encrypted"
        if pend.probe_seq is not None:
            if isinstance(msg, Ack) and msg.seq_no == pend.probe_seq:
                p = self._probe
                if p is not None and p.seq == pend.probe_seq:
                    p.fallback_ok = True
                return None
            return "unexpected reply to TCP ping"
        if not isinstance(msg, PushPull):
            self._drop("unexpected_stream_reply", pend.req.addr)
            return "expected a push/pull reply"
        return self._merge_remote(msg, pend.req.addr, now)

    def _merge_remote(self, pp: PushPull, src: Address, now: float) -> str | None:
        self.metrics["recv.push_pull"] += 1
        err = self._ms.verify_protocol(pp.nodes)
        if err is not None:
            self._drop("incompatible", src, DecodeError(err))
            return err
        self._ms.merge(pp.nodes, now)
        if pp.user_state and pp.user_state[0] == SERF_PUSH_PULL:
            self._witness_serf_ltime(pp.user_state[1:])
        return None

    def open_stream(self, src: Address, now: float) -> InboundStream:
        """A peer connected to our TCP port; feed its bytes to the returned object."""
        self._ensure_started(now)
        return InboundStream(self, src)

    def _handle_inbound(self, parsed: ParsedStream, src: Address, now: float) -> bytes | None:
        msg = parsed.message
        if self.keyring and self.config.gossip_verify_incoming and not parsed.encrypted:
            self._drop("plaintext_when_encrypted", src)
            return self._frame(codec.encode(ErrResp(
                "Encryption is configured but remote state is not encrypted")))
        if isinstance(msg, PushPull):
            reply = self._frame(self._local_push_pull(msg.header.join))
            self._merge_remote(msg, src, now)  # reply first, then merge (as memberlist)
            return reply
        if isinstance(msg, Ping):
            self.metrics["recv.stream.ping"] += 1
            if msg.node and msg.node != self.name:
                self._drop("ping_wrong_node", src)
                return None
            return self._frame(codec.encode(Ack(msg.seq_no)))
        if isinstance(msg, StreamUser):
            self.metrics["recv.stream.user"] += 1
            self._on_user(msg.payload, src, now, reliable=True)
            return None
        self._drop("unexpected_stream_message", src)
        return None

    def _frame(self, message: bytes) -> bytes:
        return frame_stream(message, compress=self.config.enable_compression,
                            keyring=self.keyring if self.encrypting else None)


class InboundStream:
    """One accepted TCP connection, sans-IO: feed bytes, get at most one reply."""

    def __init__(self, core: Memberlist, src: Address) -> None:
        self._core = core
        self.src = src
        self._parser = StreamParser(core.keyring, core._limits)
        self.done = False

    def feed(self, data: bytes, now: float) -> bytes | None:
        """Bytes from the peer. Returns the reply to write (then close) if any;
        after ``done`` is set the connection should be closed."""
        if self.done:
            return None
        core = self._core
        try:
            parsed = self._parser.feed(data)
        except DecodeError as exc:
            self.done = True
            core._drop(exc.reason, self.src, exc)
            return core._frame(codec.encode(ErrResp(str(exc))))
        if parsed is None:
            return None
        self.done = True
        try:
            return core._handle_inbound(parsed, self.src, now)
        except DecodeError as exc:
            core._drop(exc.reason, self.src, exc)
            return None

    def eof(self, now: float) -> None:
        """The peer closed before sending a complete message."""
        if not self.done:
            self.done = True
            self._core._drop("truncated", self.src)
