"""Sans-IO SWIM core speaking memberlist v0.2.2's wire protocol (serf 0.9.4).

Design notes
------------
* No I/O, no clock, no global randomness: every entry point takes ``now`` (float
  seconds, any monotonic origin) and randomness comes from the injected
  ``random.Random``. The driver (asyncio adapter or the test fabric) does:

  - ``handle_datagram(data, src, now)`` for each UDP datagram;
  - ``open_stream(src, now)`` per accepted TCP connection, then
    ``InboundStream.feed(chunk, now)`` until it returns a reply (write it, close)
    or ``done`` is set;
  - for each ``StreamRequest`` from ``drain_streams()``: connect, write ``data``
    and, if ``expect_reply``, feed what it reads to ``stream_reply(id, chunk, now)``
    until that returns True (``None`` on error, EOF or deadline);
  - ``tick(now)`` whenever ``now >= next_deadline()``;
  - after any call: send ``drain_outbox()`` datagrams, run ``drain_streams()``,
    consume ``drain_events()``.
* Protocol behaviour follows the notes sections 4-10: probe cycle over a shuffled
  list with ping (+ suspect compound for suspect targets), indirect pings with nacks,
  TCP fallback ping, Lifeguard awareness and suspicion, gossip rounds within the UDP
  budget, periodic push/pull, reaping, refutation. Transitions live in ``state.py``;
  probing and relaying in ``probe.py`` (``Prober``) and everything over TCP in
  ``sync.py`` (``Syncer``): collaborators the node owns, each seeing the node only
  through a small protocol of its own; this module holds the public API, the datagram
  dispatch, the UDP send path, gossip rounds, timers and leave.
* Peer garbage never raises out of this module: it is converted to ``DecodeError`` in
  the codec, counted in ``metrics["drop.<reason>"]`` and logged once per reason.
* serf interop: we advertise Vsn ``[1,5,2,2,5,5]``, send UserStateLen 0, skip the
  peer's user state, answer TCP pings at once, and ignore serf user messages
  (first payload byte 0..9; counted as ``recv.serf.<type>``) except that we track
  their Lamport time so our own serf leave intent is newer than anything seen.
* Application messages (the tables layer): ``send_user`` goes point to point, only to
  members tagged ``mn`` (see ``state.MESHNET_TAG``), never through the broadcast
  queue, and its first byte must not be a serf type. Received ones become
  ``UserMessage`` events.
"""

from __future__ import annotations

import logging
from collections import Counter
from random import Random

from meshnet.gossip import codec
from meshnet.gossip.awareness import Awareness
from meshnet.gossip.broadcast import Broadcast, BroadcastQueue
from meshnet.gossip.config import GossipConfig
from meshnet.gossip.events import Address, Event, StreamRequest, UserMessage
from meshnet.gossip.member import Member
from meshnet.gossip.messages import (
    TYPE_NAMES,
    USER,
    Ack,
    Alive,
    Dead,
    DecodeError,
    IndirectPing,
    Message,
    Nack,
    Ping,
    Suspect,
    User,
    addr_to_wire,
    claimed_source,
)
from meshnet.gossip.probe import Prober
from meshnet.gossip.security import Keyring, encrypt_overhead
from meshnet.gossip.state import Membership, NodeRecord, NodeState
from meshnet.gossip.stream import Limits, encode_user_stream
from meshnet.gossip.sync import InboundStream, Syncer

log = logging.getLogger("meshnet.gossip")

#: sync_unknown_pinger's budget over all members: a burst of joins needs a few push/pulls
#: at once, pings under made-up names must not buy one each
PINGER_SYNC_BURST = 8
PINGER_SYNC_RATE = 2.0  # per second

SERF_MAX_TYPE = 9  # serf user message types are 0..9
SERF_LEAVE_INTENT = 0
SERF_JOIN_INTENT = 1
SERF_PUSH_PULL = 2
INF = float("inf")


class Memberlist:
    """One memberlist node. See the module notes for the driver contract."""

    def __init__(self, config: GossipConfig, name: str, addr: str, port: int,
                 meta: bytes = b"", rng: Random | None = None,
                 keyring: Keyring | None = None) -> None:
        if rng is None:
            raise ValueError("Memberlist needs an injected random.Random")
        if not name:
            raise ValueError("node name must not be empty")
        self.config = config
        self.name = name
        self.addr = addr
        self.port = port
        self._addr_wire = addr_to_wire(addr)
        self._meta = meta
        self.rng = rng
        self.keyring = keyring if keyring else None
        self.metrics: Counter[str] = Counter()
        self._bq = BroadcastQueue(config.retransmit_mult)
        self._aw = Awareness(config.awareness_max_multiplier)
        self._late_at = -1e18
        self._ms = Membership(config, name, rng, self._bq, self._aw, self.metrics)
        self._ms.send = lambda rec, msg: self._send_msg(rec.address, msg, rec)
        #: wall clock minus ``now``'s clock: aligns ``probe_ring`` rounds across hosts
        #: (the driver sets it; the simulation shares one clock and leaves 0)
        self.wall_offset = 0.0
        self._limits = Limits(config.max_stream_bytes, config.max_decompressed_bytes,
                              config.max_push_nodes)
        self._outbox: list[tuple[bytes, Address]] = []
        self._seq = 0
        self._prober = Prober(self)
        self._sync = Syncer(self)
        self._started = False
        self._next_gossip = self._next_push_pull = INF
        self._next_reconnect = INF
        self._reconnect_waits: dict[int, tuple[str, Address, float]] = {}
        self._reconnect_last = ""
        self._catch_up: list[float] = []  # join_catch_up: when to push/pull again
        self._pinger_syncs: dict[str, float] = {}  # sync_unknown_pinger: name -> when
        self._pinger_tokens = (float(PINGER_SYNC_BURST), 0.0)  # (tokens, as of)
        self._serf_ltime = 0
        self._leave_phase: str | None = None  # None, "intent", "dead"
        self._leave_intent: Broadcast | None = None
        self._leave_dead_at = INF
        self._leave_dead: Broadcast | None = None
        self._logged: set[str] = set()

    # -- lifecycle --------------------------------------------------------------

    def start(self, now: float) -> None:
        """Become alive (incarnation 1) and schedule the staggered timers."""
        if self._started:
            return
        self._started = True
        inc = self._ms.next_incarnation()
        self._ms.alive(Alive(inc, self.name, self._addr_wire, self.port, self._meta,
                             self.config.vsn), now, bootstrap=True)
        c = self.config
        # (the draw is made for every preset: the simulations' seeds depend on it)
        self._prober.schedule(now + self.rng.uniform(0, c.probe_interval))
        if c.probe_ring:
            self._prober.schedule(self._prober._next_ring_start(now))
        self._next_gossip = now + self.rng.uniform(0, c.gossip_interval)
        if c.push_pull_interval > 0:
            self._next_push_pull = now + self.rng.uniform(0, c.push_pull_interval)
        if c.reconnect_interval > 0:
            self._next_reconnect = now + c.reconnect_interval

    def _ensure_started(self, now: float) -> None:
        if not self._started:
            self.start(now)

    @property
    def health_score(self) -> int:
        return self._aw.score

    @property
    def incarnation(self) -> int:
        return self._ms.incarnation

    @property
    def encrypting(self) -> bool:
        return self.keyring is not None and self.config.gossip_verify_outgoing

    def members(self) -> list[Member]:
        return sorted((r.member() for r in self._ms.nodes.values()), key=lambda m: m.name)

    def member(self, name: str) -> Member | None:
        rec = self._ms.nodes.get(name)
        return rec.member() if rec else None

    def num_alive(self) -> int:
        return sum(1 for r in self._ms.nodes.values() if r.state == NodeState.ALIVE)

    def drain_outbox(self) -> list[tuple[bytes, Address]]:
        out, self._outbox = self._outbox, []
        return out

    def drain_streams(self) -> list[StreamRequest]:
        out, self._sync.streams = self._sync.streams, []
        return out

    def drain_events(self) -> list[Event]:
        out, self._ms.events = self._ms.events, []
        return out

    def stream_reply(self, request_id: int, data: bytes | None, now: float) -> bool:
        """Feed reply bytes of an outbound stream; None = failed/EOF. True = close it."""
        return self._sync.stream_reply(request_id, data, now)

    def open_stream(self, src: Address, now: float) -> InboundStream:
        """A peer connected to our TCP port; feed its bytes to the returned object."""
        self._ensure_started(now)
        return self._sync.open_stream(src)

    def push_pull_period(self) -> float:
        return self._sync.push_pull_period()

    def _tcp_ping(self, addr: Address, ping: bytes, now: float, deadline: float,
                  seq: int) -> None:
        self._sync.tcp_ping(addr, ping, now, deadline, seq)

    def _tcp_ping_answered(self, seq: int) -> None:
        self._prober.tcp_ping_answered(seq)

    # -- commands -----------------------------------------------------------------

    def join(self, addrs: list[Address], now: float) -> int:
        """Push/pull (Join=true) with each address; a JoinCompleted event follows."""
        self._ensure_started(now)
        self._catch_up = sorted(now + dt for dt in self.config.join_catch_up)
        return self._sync.join(addrs, now)

    def set_meta(self, meta: bytes, now: float) -> None:
        """Change our meta (tags): gossip alive with a higher incarnation."""
        self._ensure_started(now)
        self._meta = meta
        inc = self._ms.next_incarnation()
        self._ms.alive(Alive(inc, self.name, self._addr_wire, self.port, meta, self.config.vsn),
                       now, bootstrap=True)

    def leave(self, now: float) -> None:
        """Gossip a serf leave intent, then (once spread) dead{self, From: self}."""
        self._ensure_started(now)
        if self._leave_phase is not None:
            return
        self._leave_phase = "intent"
        self._serf_ltime += 1
        body = codec.pack({"LTime": self._serf_ltime, "Node": self.name, "Prune": False})
        self._leave_intent = self._bq.queue(bytes([USER, SERF_LEAVE_INTENT]) + body,
                                            key=f"serf:intent:{self.name}")
        # Gossip alone may miss a serf peer (meshnet members do not re-gossip serf
        # intents), and a serf that never saw the intent shows us "failed", not "left":
        # tell every serf peer directly, over UDP and over TCP (a reliable user message).
        for rec in list(self._ms.nodes.values()):
            if rec.name == self.name or rec.state not in (NodeState.ALIVE, NodeState.SUSPECT):
                continue
            if rec.member().is_meshnet:
                continue
            self._send_msg(rec.address, bytes([USER, SERF_LEAVE_INTENT]) + body, rec)
            self._sync.new_stream(rec.address, encode_user_stream(bytes([SERF_LEAVE_INTENT]) + body),
                             False, now, "user")
            self.metrics["sent.leave_intent.direct"] += 1
        self._leave_dead_at = now + self.config.leave_intent_wait
        if not self._any_alive_peer():
            self._leave_dead_at = now
        self._leave_progress(now)

    @property
    def leave_done(self) -> bool:
        """True once the self-dead broadcast was fully sent (or nobody is left to tell)."""
        if self._leave_phase != "dead":
            return False
        b = self._leave_dead
        return b is None or b.finished or not self._any_alive_peer()

    def send_user(self, node: str, payload: bytes, now: float, reliable: bool = False) -> bool:
        """Send an application message to one meshnet member.

        UDP ``[8]+payload`` (with piggybacked gossip) unless ``reliable`` or too big
        for a packet, then a TCP user message. False if the node is unknown, not
        alive/suspect, or not a meshnet member (serf agents must never get these).
        """
        if not payload or payload[0] <= SERF_MAX_TYPE:
            raise ValueError("application payloads must not start with a serf type byte 0..9")
        self._ensure_started(now)
        rec = self._ms.nodes.get(node)
        if rec is None or rec.state not in (NodeState.ALIVE, NodeState.SUSPECT):
            self.metrics["user.no_route"] += 1
            return False
        if not rec.member().is_meshnet:
            self.metrics["user.not_meshnet"] += 1
            return False
        msg = bytes([USER]) + payload
        budget = self.config.udp_buffer_size - (encrypt_overhead() if self.encrypting else 0)
        if reliable or len(msg) > budget:
            # Not LZW-compressed: only meshnet agents get these, and compressing a table
            # state of megabytes in pure Python costs ~0.1 s per megabyte (memberlist
            # readers take compressed and plain streams alike)
            self._sync.new_stream(rec.address, encode_user_stream(payload), False, now, "user",
                             compress=False)
        else:
            self._send_msg(rec.address, msg, rec)
        self.metrics["sent.user.app"] += 1
        return True

    # -- datagrams ----------------------------------------------------------------

    def handle_datagram(self, data: bytes, src: Address, now: float) -> None:
        self._ensure_started(now)
        self.metrics["recv.packets"] += 1
        try:
            pkt = codec.decode_packet(
                data, self.keyring,
                require_encryption=self.config.gossip_verify_incoming,
                max_decompressed=self.config.max_decompressed_bytes)
        except DecodeError as exc:
            self._drop(exc.reason, src, exc)
            return
        for reason in pkt.drops:
            self._drop(reason, src)
        for msg in pkt.messages:
            try:
                self._dispatch(msg, src, now)
            except DecodeError as exc:
                self._drop(exc.reason, src, exc)

    def _dispatch(self, msg: Message, src: Address, now: float) -> None:
        if isinstance(msg, User):
            self.metrics["recv.user"] += 1
            self._on_user(msg.payload, src, now, reliable=False)
            return
        self.metrics["recv." + TYPE_NAMES[msg.TYPE]] += 1
        if isinstance(msg, Ping):
            self._prober.on_ping(msg, src)
            if self.config.sync_unknown_pinger and msg.source_node:
                self._sync_pinger(msg, src, now)
        elif isinstance(msg, IndirectPing):
            self._prober.on_indirect(msg, src, now)
        elif isinstance(msg, Ack):
            self._prober.on_ack(msg, now)
        elif isinstance(msg, Nack):
            self._prober.on_nack(msg, src)
        elif isinstance(msg, Alive):
            self._ms.alive(msg, now)
        elif isinstance(msg, Suspect):
            self._ms.suspect(msg, now)
        elif isinstance(msg, Dead):
            self._ms.dead(msg, now)

    def _on_user(self, payload: bytes, src: Address, now: float, reliable: bool) -> None:
        if not payload:
            self._drop("empty_user", src)
            return
        t = payload[0]
        if t <= SERF_MAX_TYPE:
            self.metrics[f"recv.serf.{t}"] += 1
            if t in (SERF_LEAVE_INTENT, SERF_JOIN_INTENT, SERF_PUSH_PULL):
                self._witness_serf_ltime(payload[1:])
            return
        self.metrics["recv.user.app"] += 1
        self._ms.events.append(UserMessage(src, self._node_at(src, reliable), payload, reliable))

    def _witness_serf_ltime(self, body: bytes) -> None:
        try:
            obj, _ = codec.unpack_one(body, max_len=len(body) + 1)
        except DecodeError:
            return
        lt = obj.get(b"LTime") if isinstance(obj, dict) else None
        if isinstance(lt, int) and not isinstance(lt, bool) and 0 <= lt < 1 << 63:
            self._serf_ltime = max(self._serf_ltime, lt)

    def _node_at(self, src: Address, by_ip_only: bool) -> str | None:
        found = [r.name for r in self._ms.nodes.values()
                 if r.addr == src[0] and (by_ip_only or r.port == src[1])]
        return found[0] if len(found) == 1 else None

    # -- sending ------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        return self._seq

    def _send_msg(self, addr: Address, msg: bytes, node: NodeRecord | None = None) -> None:
        """Send one message, piggybacking queued broadcasts (memberlist sendMsg)."""
        self.metrics["sent." + TYPE_NAMES.get(msg[0], str(msg[0]))] += 1
        avail = self.config.udp_buffer_size - len(msg) - codec.COMPOUND_HEADER_OVERHEAD
        if self.encrypting:
            avail -= encrypt_overhead()
        extra = self._bq.get(codec.COMPOUND_PART_OVERHEAD, avail, self._ms.num_nodes())
        if extra:
            self.metrics["sent.piggybacked"] += len(extra)
            msg = codec.make_compound([msg, *extra])
        self._raw_send(addr, msg, node)

    def _raw_send(self, addr: Address, packet: bytes, node: NodeRecord | None) -> None:
        if self.config.enable_compression:
            packet = codec.compress_packet(packet)
        if node is not None and node.pmax >= 5:
            packet = codec.add_crc(packet)
        if self.encrypting:
            packet = self.keyring.encrypt_packet(packet)  # type: ignore[union-attr]
        self.metrics["sent.packets"] += 1
        self._outbox.append((packet, addr))

    def _k_random(self, k: int, skip) -> list[NodeRecord]:
        """memberlist kRandomNodes: up to 3n random draws, filtered, no repeats."""
        nodes = self._ms.order
        n = len(nodes)
        out: list[NodeRecord] = []
        for _ in range(3 * n):
            if len(out) >= k:
                break
            rec = nodes[self.rng.randrange(n)]
            if skip(rec) or rec in out:
                continue
            out.append(rec)
        return out

    def _any_alive_peer(self) -> bool:
        return any(r.name != self.name and r.state in (NodeState.ALIVE, NodeState.SUSPECT)
                   for r in self._ms.nodes.values())

    def _drop(self, reason: str, src: Address | None = None, exc: Exception | None = None) -> None:
        self.metrics["drop." + reason] += 1
        self._log_once("drop:" + reason, "dropped input from %s: %s (%s)", src, reason, exc or "")

    def _log_once(self, key: str, fmt: str, *args: object) -> None:
        """Warn the first time per key, then log at debug level (no log floods)."""
        level = logging.DEBUG if key in self._logged else logging.WARNING
        self._logged.add(key)
        log.log(level, "node=%s subsystem=gossip " + fmt, self.name, *args)

    # -- timers -------------------------------------------------------------------

    def next_deadline(self) -> float:
        if not self._started:
            return INF
        d = min(self._next_gossip, self._next_push_pull, self._next_reconnect,
                self._catch_up[0] if self._catch_up else INF,
                self._ms.next_suspicion_deadline(), self._prober.next_deadline(),
                self._sync.next_deadline())
        if self._leave_phase == "intent":
            d = min(d, self._leave_dead_at)
        return d

    def interval_scale(self) -> float:
        """How much the probe and gossip intervals are stretched for the cluster's size
        (``scale_knee``/``scale_max``; 1 for the memberlist presets)."""
        knee = self.config.scale_knee
        if not knee:
            return 1.0
        return min(max(self._ms.num_nodes() / knee, 1.0), self.config.scale_max)

    def timer_late(self, late: float, now: float) -> None:
        """The driver ran our timer ``late`` seconds after the deadline we gave it.

        Late timers mean this node is short of CPU: acks it waits for arrive "late" by
        its own clock, and its own acks leave late. Raise the health score (at most once
        per probe interval), so it probes less and gives peers longer, as for a missed
        nack; successful probes lower it again."""
        thr = self.config.late_threshold
        if not thr or late <= thr:
            return
        if now - self._late_at < self.config.probe_interval:
            return
        self._late_at = now
        self._aw.apply_delta(1)
        self.metrics["awareness.late_timer"] += 1

    def tick(self, now: float) -> None:
        self._ensure_started(now)
        self._ms.interval_scale = self.interval_scale()
        self._sync.expire(now)
        self._prober.probe_tick(now)
        self._prober.relay_tick(now)
        if now >= self._next_gossip:
            self._gossip(now)
            self._next_gossip = max(
                self._next_gossip + self.config.gossip_interval * self._ms.interval_scale, now)
        if now >= self._next_push_pull:
            self._next_push_pull = now + self.push_pull_period()
            self._sync.periodic_push_pull(now)
        if self._catch_up and now >= self._catch_up[0]:
            del self._catch_up[0]
            self.metrics["sync.join_catch_up"] += 1
            self._sync.periodic_push_pull(now)
        if now >= self._next_reconnect:
            if self.config.reconnect_ping:
                scale = max(1.0, self._ms.num_nodes() / 100)
                self._next_reconnect = now + self.config.reconnect_interval * scale
                self._reconnect_ping(now)
            else:
                self._next_reconnect = now + self.config.reconnect_interval
                self._sync.reconnect(now)
        self._leave_progress(now)
        # Last: a confirmation earlier in this tick may have pulled a deadline to now.
        self._ms.expire_suspicions(now)

    def _reconnect_ping(self, now: float) -> None:
        """``reconnect_ping``: ping the next failed member (in name order, in turn)."""
        failed = self._ms.failed
        for name, (_, since) in list(failed.items()):
            if now - since > self.config.reconnect_timeout:
                del failed[name]
        for seq, (_, _, deadline) in list(self._reconnect_waits.items()):
            if now >= deadline:
                del self._reconnect_waits[seq]
        if not failed or self._leave_phase is not None:
            return
        names = sorted(failed)
        later = [n for n in names if n > self._reconnect_last]
        name = later[0] if later else names[0]
        self._reconnect_last = name
        addr = failed[name][0]
        seq = self._next_seq()
        self._reconnect_waits[seq] = (name, addr, now + self.config.tcp_timeout)
        self.metrics["reconnect.pings"] += 1
        self._send_msg(addr, codec.encode(Ping(seq, name, self._addr_wire, self.port, self.name)))

    def _other_ack(self, seq: int, now: float) -> bool:
        """An ack that is not a probe's nor a relay's: a reconnect ping's answer."""
        wait = self._reconnect_waits.pop(seq, None)
        if wait is None:
            return False
        name, addr, _ = wait
        if name in self._ms.failed:
            self.metrics["reconnect.attempts"] += 1
            self._sync.start_push_pull(addr, True, now, None)
        return True

    def _sync_pinger(self, p: Ping, src: Address, now: float) -> None:
        """``sync_unknown_pinger``: a member we do not know (or hold dead) probed us, so
        we missed its alive: push/pull with it (rate-limited per member)."""
        name = p.source_node
        if name == self.name or self._leave_phase is not None:
            return
        rec = self._ms.nodes.get(name)
        if rec is not None and rec.state != NodeState.DEAD:
            return
        window = self.config.push_pull_interval / 6
        last = self._pinger_syncs.get(name)
        if last is not None and now - last < window:
            return
        tokens, since = self._pinger_tokens
        tokens = min(float(PINGER_SYNC_BURST), tokens + (now - since) * PINGER_SYNC_RATE)
        if tokens < 1.0:
            self._pinger_tokens = (tokens, now)
            self.metrics["sync.unknown_pinger_limited"] += 1
            return
        self._pinger_tokens = (tokens - 1.0, now)
        if len(self._pinger_syncs) >= 4096:
            self._pinger_syncs = {k: t for k, t in self._pinger_syncs.items()
                                  if now - t < window}
        self._pinger_syncs[name] = now
        self.metrics["sync.unknown_pinger"] += 1
        dest = claimed_source(p.source_addr, p.source_port, src)
        self._sync.start_push_pull(dest, rec is not None, now, None)

    def _leave_progress(self, now: float) -> None:
        if self._leave_phase != "intent":
            return
        intent = self._leave_intent
        if now >= self._leave_dead_at or (intent is not None and intent.finished):
            self._leave_phase = "dead"
            self._ms.leaving = True
            self._leave_dead = self._ms.dead(Dead(self._ms.incarnation, self.name, self.name), now)

    # -- gossip -------------------------------------------------------------------

    def _gossip(self, now: float) -> None:
        if not len(self._bq):
            return
        dead_limit = self.config.gossip_to_the_dead_time

        def skip(r: NodeRecord) -> bool:
            if r.name == self.name:
                return True
            if r.state in (NodeState.ALIVE, NodeState.SUSPECT):
                return False
            return r.state == NodeState.LEFT or now - r.state_change > dead_limit

        avail = self.config.udp_buffer_size - codec.COMPOUND_HEADER_OVERHEAD
        if self.encrypting:
            avail -= encrypt_overhead()
        for rec in self._k_random(self.config.gossip_nodes, skip):
            msgs = self._bq.get(codec.COMPOUND_PART_OVERHEAD, avail, self._ms.num_nodes())
            if not msgs:
                return
            self.metrics["sent.gossip"] += 1
            self._raw_send(rec.address, msgs[0] if len(msgs) == 1 else codec.make_compound(msgs),
                           rec)
