"""Typed configuration of the SWIM/memberlist layer.

Design notes
------------
* One frozen dataclass, read in one place. Times are float seconds.
* ``lan()`` and ``local()`` are memberlist v0.2.2's DefaultLANConfig and
  DefaultLocalConfig (notes section 8.1), i.e. what ``serf agent -profile=lan|local``
  runs with. ``fast()`` is meshnet's preset for small clusters (5..50 hosts on one
  LAN): it probes five times a second and gossips every 50 ms, so a killed host is
  declared dead by everyone in about 1.1-1.5 s at N=5..20 in simulation (LAN
  profile: 5.5-9 s). What keeps it free of false deaths on a busy box is Lifeguard:
  a node that misses acks or nacks raises its own health score and probes more
  slowly; suspicion starts at the *max* timeout (6 x the minimum) and only shrinks
  with independent confirmations (k = SuspicionMult - 2 = 2), the accused refutes
  within a gossip round or two if it is alive, and the TCP fallback ping rescues
  probes whose UDP was lost. SuspicionMult is 4 (not local()'s 3): in simulation
  with 150-300 ms jitter on every packet and 15-20 % loss, 3 produced false deaths
  and 4 mostly did not, at a cost of ~0.25 s of detection time.
* ``swift()`` is meshnet's default (shipped and lab): a ``kill -9`` seen everywhere in
  about 1.2-1.8 s at N=3..1,000 (simulated, up to 10 % loss), a partition healed within a
  second or two of its end, at about serf's bandwidth. It probes twice a second (memberlist: once) and adds these
  things, each behind its own flag, so ``lan()``/``local()``/``fast()`` are untouched:

  - ``probe_ring``: rounds aligned to the wall clock over the sorted member list, member
    i probing i + 1 + (r mod (n-1)): every member is probed exactly once a round, so a
    dead one is found within a round (memberlist's shuffled lists leave ~37 % of
    members unprobed in any one interval, and a tail of several intervals);
  - ``nack_confirms``: relays that nacked (they could not reach the target either)
    count as Lifeguard's independent confirmations, so the accuser's timer starts at the
    minimum (0.6 s) instead of waiting for other probes to confirm it;
  - ``direct_notify``: the accused hears its suspicion at once (it refutes within an
    RTT, straight back to the accuser); a death our timer declares goes to every live
    member in one packet each, not through log(n) gossip rounds; a stale accusation of
    us (older incarnation) is answered with our alive;
  - ``reconnect_ping``: failed members are pinged in turn every second (x n/100), an
    ack starting the Join push/pull, instead of serf's random 30 s reconnect;
  - ``sync_unknown_pinger`` and ``join_catch_up``: a ping from a member we do not know
    starts a push/pull with it, and a node that joined push/pulls again 2 and 8 s later
    with random members, so a burst of joins converges in seconds, not at the next 60 s
    push/pull.

  It costs nothing while idle beyond the doubled probe rate, which the 60 s push/pull
  (memberlist: 30 s) pays back as the cluster grows. Serf peers see only standard
  messages.
* ``reconnect_*`` are serf-layer behaviour (memberlist has none): without them two
  sides of a healed partition would never talk again once each declared the other
  dead, since push/pull and probes only go to live members.
* Encryption-related fields live here, the keys themselves in ``security.Keyring``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from meshnet.errors import ConfigError

# [PMin, PMax, PCur, DMin, DMax, DCur], exactly what a serf 0.9.4 agent advertises.
DEFAULT_VSN = bytes([1, 5, 2, 2, 5, 5])


@dataclass(frozen=True, slots=True)
class GossipConfig:
    probe_interval: float = 1.0
    """Time between failure-detection probes (scaled by the local health score)."""
    probe_timeout: float = 0.5
    """Wait for a direct ack before trying indirect probes; not scaled."""
    gossip_interval: float = 0.2
    """Time between gossip rounds (only sent when broadcasts are queued)."""
    gossip_nodes: int = 3
    """Random nodes each gossip round goes to."""
    gossip_to_the_dead_time: float = 30.0
    """Keep gossiping to dead nodes this long; then they may be reaped."""
    suspicion_mult: int = 4
    """Minimum suspicion = mult x max(1, log10(n)) x probe_interval."""
    suspicion_max_timeout_mult: int = 6
    """Maximum suspicion = this x minimum."""
    push_pull_interval: float = 30.0
    """Anti-entropy TCP state sync with one random node (0 disables)."""
    retransmit_mult: int = 4
    """Each broadcast is sent mult x ceil(log10(n+1)) times."""
    indirect_checks: int = 3
    """Peers asked to probe a node that missed its direct ack."""
    awareness_max_multiplier: int = 8
    """Health score is clamped to [0, this - 1]."""
    tcp_timeout: float = 10.0
    """Deadline of a push/pull or reliable user message connection."""
    udp_buffer_size: int = 1400
    """Largest UDP packet we build (piggybacking budget)."""
    disable_tcp_pings: bool = False
    enable_compression: bool = True
    """LZW: UDP only when smaller; TCP always (as serf)."""
    gossip_verify_incoming: bool = True
    """With a keyring, refuse plaintext input."""
    gossip_verify_outgoing: bool = True
    """With a keyring, encrypt output."""
    vsn: bytes = DEFAULT_VSN
    """Advertised [PMin, PMax, PCur, DMin, DMax, DCur]; must stay 6 bytes."""
    leave_intent_wait: float = 1.0
    """On leave, max time to let the serf leave intent spread before the self-dead."""
    max_stream_bytes: int = 20 * 1024 * 1024
    max_decompressed_bytes: int = 40 * 1024 * 1024
    max_push_nodes: int = 100_000
    reconnect_interval: float = 30.0
    """Like serf: push/pull (Join=true) with a random failed member this often, which
    is what heals a partition after both sides declared each other dead (0 = off)."""
    reconnect_ping: bool = False
    """Reconnect by UDP ping instead: every ``reconnect_interval`` x max(1, n/100), ping
    the next failed member in turn (not a random one with probability failed/alive);
    an ack starts the Join push/pull. Nothing is sent while no member is failed, and a
    node whose view of one member stayed wrong after a heal corrects it in seconds."""
    sync_unknown_pinger: bool = False
    """A ping from a member we do not know, or hold dead, starts a push/pull with it (at
    most once per member per ``push_pull_interval`` / 6, and at most
    ``core.PINGER_SYNC_BURST`` at once and ``core.PINGER_SYNC_RATE`` a second in all, so pings
    under made-up names cannot make us push/pull without end): a member whose alive we
    missed (a burst of joins outruns the gossip's retransmit budget) is learnt at its
    first probe of us, not at the next periodic push/pull."""
    join_catch_up: tuple[float, ...] = ()
    """Seconds after a join at which to push/pull once more with a random live member:
    the join's own push/pull only carries what its target knew then, and in a burst of
    joins the target learns of many members after it answered."""
    reconnect_timeout: float = 24 * 3600.0
    """Stop trying to reconnect to a failed member after this long."""
    dead_node_reclaim_time: float = 0.0
    """A dead node's name may be reused from a new address after this (0 = never)."""
    scale_knee: int = 0
    """Above this many members (0: never), the probe and gossip intervals, and with them
    the suspicion timeouts, grow as n / scale_knee, up to ``scale_max`` times: for
    presets whose timings only suit small clusters (``fast``)."""
    scale_max: float = 1.0
    probe_ring: bool = False
    """Probe in rounds of ``probe_interval`` aligned to the clock (the driver sets the
    core's ``wall_offset``), round r: the member at sorted position i probes position
    i + 1 + (r mod (n - 1)). Every member is then probed by someone exactly once per
    round (memberlist's shuffled lists: ~63 %), so a dead one is found within a round."""
    nack_confirms: bool = False
    """The relays of an indirect probe that answered with a nack (they could not reach
    the target either) count as independent confirmations of the suspicion it starts."""
    suspicion_min: float = 0.0
    """Absolute minimum suspicion timeout in seconds (0: memberlist's formula)."""
    suspicion_max: float = 0.0
    """Absolute maximum suspicion timeout in seconds (0: ``suspicion_max_timeout_mult`` x
    the minimum)."""
    direct_notify: bool = False
    """Besides gossip: a suspicion we start goes straight to the accused (it refutes at
    once), a refutation straight back to the accuser, and a death our own timer
    declares to every live member (one packet each, once per failure)."""
    late_threshold: float = 0.0
    """A timer that fires more than this late (seconds; 0: off) means our own CPU or
    event loop is short: the health score goes up as for a missed nack (Lifeguard's local
    health, fed by our own lateness), so we probe less and wait longer before accusing."""

    def __post_init__(self) -> None:
        if len(self.vsn) != 6 or self.vsn[0] == 0 or self.vsn[1] == 0 or self.vsn[0] > self.vsn[1]:
            raise ConfigError("gossip vsn must be 6 bytes with 0 < PMin <= PMax")
        for name in ("probe_interval", "probe_timeout", "gossip_interval", "tcp_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"gossip {name} must be positive")
        if self.probe_timeout >= self.probe_interval:
            raise ConfigError("gossip probe_timeout must be shorter than probe_interval")
        if self.suspicion_mult < 1 or self.suspicion_max_timeout_mult < 1:
            raise ConfigError("gossip suspicion multipliers must be >= 1")
        if self.awareness_max_multiplier < 1 or self.retransmit_mult < 1:
            raise ConfigError("gossip multipliers must be >= 1")
        if self.udp_buffer_size < 200:
            raise ConfigError("gossip udp_buffer_size is too small")
        if self.suspicion_min < 0 or self.suspicion_max < self.suspicion_min:
            raise ConfigError("gossip 0 <= suspicion_min <= suspicion_max")
        if self.scale_knee < 0 or self.scale_max < 1 or self.late_threshold < 0:
            raise ConfigError("gossip scale_knee >= 0, scale_max >= 1, late_threshold >= 0")

    @classmethod
    def lan(cls) -> GossipConfig:
        """memberlist DefaultLANConfig (serf agent default), plus local health fed by our
        own timer lateness (invisible on the wire)."""
        return cls(late_threshold=0.25)

    @classmethod
    def local(cls) -> GossipConfig:
        """memberlist DefaultLocalConfig (``serf agent -profile=local``)."""
        return cls(
            probe_interval=1.0,
            probe_timeout=0.2,
            gossip_interval=0.1,
            gossip_to_the_dead_time=15.0,
            suspicion_mult=3,
            push_pull_interval=15.0,
            retransmit_mult=2,
            indirect_checks=1,
            tcp_timeout=1.0,
        )

    @classmethod
    def fast(cls) -> GossipConfig:
        """meshnet's small-cluster preset: ~1.5 s failure detection at N <= 20."""
        return cls(
            probe_interval=0.2,
            probe_timeout=0.1,
            gossip_interval=0.05,
            gossip_nodes=3,
            gossip_to_the_dead_time=10.0,
            suspicion_mult=4,
            suspicion_max_timeout_mult=6,
            push_pull_interval=5.0,
            retransmit_mult=4,
            indirect_checks=3,
            tcp_timeout=1.0,
            leave_intent_wait=0.5,
            reconnect_interval=2.0,
            scale_knee=16,
            scale_max=5.0,
            late_threshold=0.05,
        )

    @classmethod
    def swift(cls) -> GossipConfig:
        """meshnet's default: detection in about a second, serf's bandwidth (see notes)."""
        return cls(
            probe_interval=0.5,
            probe_timeout=0.2,
            gossip_interval=0.2,
            suspicion_mult=4,
            suspicion_min=0.6,
            suspicion_max=3.0,
            push_pull_interval=60.0,
            tcp_timeout=2.0,
            reconnect_interval=1.0,
            reconnect_ping=True,
            sync_unknown_pinger=True,
            join_catch_up=(2.0, 8.0),
            probe_ring=True,
            nack_confirms=True,
            direct_notify=True,
            late_threshold=0.1,
        )

    def replace(self, **changes: object) -> GossipConfig:
        return dataclasses.replace(self, **changes)
