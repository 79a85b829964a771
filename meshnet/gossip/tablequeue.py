"""Transmit-limited broadcast queue for table updates (memberlist-style).

Holds at most one pending broadcast per (table, key): a newer version of an entry
replaces the queued one and starts again at zero transmits. Each time a broadcast is
put into a packet its transmit count goes up; at the limit
(``retransmit_mult * ceil(log10(n + 1))``, computed by the caller) it is dropped.
Packets are filled least-transmitted first, newest first among equals, so fresh news
goes out before old news is repeated.

Pure data structure: no clock, no randomness.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class _Item:
    seq: int
    transmits: int
    blob: bytes


class BroadcastQueue:
    def __init__(self) -> None:
        self._items: dict[tuple[str, str], _Item] = {}
        self._seq = 0

    def __len__(self) -> int:
        return len(self._items)

    def push(self, ident: tuple[str, str], blob: bytes) -> None:
        """Queue (or replace) the broadcast for ``ident``."""
        self._seq += 1
        self._items[ident] = _Item(self._seq, 0, blob)

    def take(self, capacity: int, limit: int) -> tuple[list[bytes], list[bytes]]:
        """Pick blobs for one packet of at most ``capacity`` bytes of blobs.

        Returns ``(blobs, oversize)``: ``oversize`` are blobs that can never fit in a
        packet of this capacity (the caller sends them over the reliable channel);
        both count as one transmit.
        """
        if not self._items:
            return [], []
        order = sorted(self._items.items(), key=lambda kv: (kv[1].transmits, -kv[1].seq))
        picked: list[bytes] = []
        oversize: list[bytes] = []
        room = capacity
        for ident, item in order:
            n = len(item.blob)
            if n > capacity:
                oversize.append(item.blob)
            elif n <= room:
                picked.append(item.blob)
                room -= n
            else:
                continue
            item.transmits += 1
            if item.transmits >= limit:
                del self._items[ident]
            if room < 16:  # no entry is smaller than this; the packet is full
                break
        return picked, oversize

    def discard(self, ident: tuple[str, str]) -> None:
        self._items.pop(ident, None)

    def clear(self) -> None:
        self._items.clear()
