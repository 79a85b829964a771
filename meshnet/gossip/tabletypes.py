"""Value types of the replicated tables layer: configuration, rows, events, messages.

Kept apart from ``tables.py`` (the protocol core) so that consumers and tests can use
them without reading the core; ``tables.py`` re-exports all of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

EventKind = Literal["create", "update", "delete"]
_EVENT_KINDS = ("create", "update", "delete")


@dataclass(frozen=True)
class TableConfig:
    """Timers and limits of the tables layer. All times in seconds."""

    gossip_interval: float = 0.2
    """Period of gossip rounds (memberlist LAN: 200 ms)."""
    fanout: int = 3
    """Random up members each gossip round is sent to."""
    retransmit_mult: int = 4
    """Each change is sent ``retransmit_mult * ceil(log10(n + 1))`` times in all."""
    packets_per_target: int = 1
    """UDP packets per target per round; a larger backlog waits for later rounds."""
    push_pull_interval: float = 30.0
    """Period of full-state anti-entropy with one random member (x scale above 32)."""
    push_pull_jitter: float = 0.25
    """Each push/pull period is multiplied by a random factor in 1 +- jitter."""
    up_sync_fanout: int = 3
    """About how many peers push/pull with a member that comes up."""
    up_sync_burst: int = 3
    """At most this many up-triggered push/pulls per gossip interval."""
    reap_interval: float = 300.0
    """Tombstones are kept this long after the delete (NetworkDB: 30 min)."""
    down_memory: float = 3600.0
    """How long live entries owned by a node that went down are held back."""
    held_per_down_node: int = 4096
    """At most this many entries of a down node are held for its return."""
    max_udp_size: int = 1200
    """Largest unreliable message, bytes (fits a 1280-byte IPv6 path with headers)."""
    max_reliable_size: int = 4 * 1024 * 1024
    """Largest reliable message; a bigger state is split into several."""
    cluster_tables: frozenset[str] = frozenset()
    """Cluster-scoped tables (networks, services...): their entries outlive their owner
    (not removed when it goes down, adopted, not retracted, when it restarts) and any
    node may delete them. Other tables are node-scoped, like NetworkDB's."""

    def __post_init__(self) -> None:
        if min(self.gossip_interval, self.push_pull_interval, self.reap_interval) <= 0:
            raise ValueError("intervals must be > 0")
        if self.fanout < 1 or self.retransmit_mult < 1 or self.packets_per_target < 1:
            raise ValueError("fanout, retransmit_mult and packets_per_target must be >= 1")
        if not 0 <= self.push_pull_jitter < 1:
            raise ValueError("push_pull_jitter must be in [0, 1)")
        if min(self.up_sync_fanout, self.up_sync_burst, self.down_memory) < 0:
            raise ValueError("up_sync_fanout, up_sync_burst, down_memory must be >= 0")
        if self.held_per_down_node < 0:
            raise ValueError("held_per_down_node must be >= 0")
        if self.max_udp_size < 256 or self.max_reliable_size < self.max_udp_size:
            raise ValueError("max_udp_size must be >= 256 and <= max_reliable_size")

    @classmethod
    def lan(cls) -> TableConfig:
        """Defaults for a LAN/datacentre cluster (memberlist LAN-like timers)."""
        return cls()

    @classmethod
    def swift(cls) -> TableConfig:
        """The default preset's: changes go out within 50 ms (rounds only run while
        something is queued, so idle costs nothing), anti-entropy as ``lan()``."""
        return cls(gossip_interval=0.05)

    @classmethod
    def fast(cls) -> TableConfig:
        """Short timers for tests and labs on one box. Tombstones are kept as long as
        with ``lan()``: a delete made on one side of a partition must outlive the
        partition (reaped earlier, the other side's live copy comes back on heal)."""
        return cls(
            gossip_interval=0.05,
            push_pull_interval=2.0,
            down_memory=60.0,
        )


@dataclass(frozen=True, slots=True)
class Entry:
    """One row. ``value`` is empty for tombstones; ``reap_at`` is inf for live rows."""

    table: str
    key: str
    value: bytes
    owner: str
    ltime: int
    deleted: bool = False
    reap_at: float = math.inf

    def rank(self) -> tuple[int, str, bool, bytes]:
        return (self.ltime, self.owner, not self.deleted, self.value)


@dataclass(frozen=True, slots=True)
class TableEvent:
    """A change visible to the application. ``value`` of a delete is the last value."""

    kind: EventKind
    table: str
    key: str
    value: bytes
    owner: str

    def __post_init__(self) -> None:
        if self.kind not in _EVENT_KINDS:
            raise ValueError(f"bad event kind {self.kind!r}")


@dataclass(frozen=True, slots=True)
class Outgoing:
    node: str
    payload: bytes
    reliable: bool
