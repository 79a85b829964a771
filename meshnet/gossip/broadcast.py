"""Transmit-limited broadcast queue (memberlist ``TransmitLimitedQueue``, notes 8.6).

Design notes
------------
* Each queued broadcast is a complete encoded message (type byte + body) that rides
  piggybacked on pings/acks or in gossip rounds. It is handed out at most
  ``RetransmitMult x ceil(log10(n + 1))`` times, fewest-transmits first, then
  largest first, then newest first, and dropped after that.
* Broadcasts about a node (alive/suspect/dead) carry the node name as ``key``; a new
  broadcast with the same key *invalidates* (replaces) the queued one, so only the
  newest claim about a node is spread. Keys are namespaced by the caller (serf
  intents use ``"serf:<node>"``) so they never clash with node names.
* Only memberlist and serf-format messages go in here. Application (tables) user
  messages are sent point to point and never queued, because every member, serf
  agents included, receives these broadcasts.
* ``Broadcast.finished`` turns true once it has been fully transmitted or replaced;
  leave() waits on that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


def retransmit_limit(mult: int, n: int) -> int:
    return mult * int(math.ceil(math.log10(n + 1)))


@dataclass(eq=False)
class Broadcast:
    msg: bytes
    key: str | None
    id: int
    transmits: int = 0
    finished: bool = field(default=False)


class BroadcastQueue:
    def __init__(self, retransmit_mult: int) -> None:
        self._mult = retransmit_mult
        self._items: list[Broadcast] = []
        self._by_key: dict[str, Broadcast] = {}
        self._next_id = 0

    def __len__(self) -> int:
        return len(self._items)

    def queue(self, msg: bytes, key: str | None = None) -> Broadcast:
        if key is not None:
            old = self._by_key.pop(key, None)
            if old is not None:
                self._items.remove(old)
                old.finished = True
        self._next_id += 1
        b = Broadcast(msg, key, self._next_id)
        self._items.append(b)
        if key is not None:
            self._by_key[key] = b
        return b

    def get(self, overhead: int, limit: int, num_nodes: int) -> list[bytes]:
        """Take broadcasts whose ``len + overhead`` fit in ``limit`` bytes in total."""
        if not self._items or limit <= overhead:
            return []
        max_tx = retransmit_limit(self._mult, num_nodes)
        self._items.sort(key=lambda b: (b.transmits, -len(b.msg), -b.id))
        out: list[bytes] = []
        used = 0
        done: list[Broadcast] = []
        for b in self._items:
            cost = len(b.msg) + overhead
            if used + cost > limit:
                continue
            used += cost
            out.append(b.msg)
            b.transmits += 1
            if b.transmits >= max_tx:
                done.append(b)
            if limit - used <= overhead:
                break
        for b in done:
            self._remove(b)
        return out

    def _remove(self, b: Broadcast) -> None:
        self._items.remove(b)
        if b.key is not None and self._by_key.get(b.key) is b:
            del self._by_key[b.key]
        b.finished = True

    def reset(self) -> None:
        for b in self._items:
            b.finished = True
        self._items.clear()
        self._by_key.clear()
