"""Anti-entropy by digest: what two tables nodes compare before exchanging any row.

A node's digest has, per owner, how many live rows it holds of that owner and the sum
(mod 2**64) of a 64-bit hash of each row's (table, key, ltime). Two nodes that agree on
an owner's live rows have equal entries for it; any difference (a row missing, a newer
version, a row deleted on one side only) changes the count or, but for a 2**-64 chance,
the sum. Tombstones are left out: a tombstone matters only where the live row still
is, and there it shows as a difference. Sums, not XOR, so nothing cancels out.

The periodic anti-entropy then costs one digest message (some 20 bytes per owner)
while the cluster agrees, instead of the whole table both ways; rows travel only for
the owners that differ.
"""

from __future__ import annotations

from collections.abc import Iterable
from hashlib import blake2b

from meshnet.gossip.tabletypes import Entry

MASK = 2**64 - 1


def row_hash(table: str, key: str, ltime: int) -> int:
    h = blake2b(f"{table}\0{key}\0{ltime}".encode(), digest_size=8)
    return int.from_bytes(h.digest(), "big")


def digest(rows: Iterable[Entry]) -> dict[str, tuple[int, int]]:
    """owner -> (live rows, sum of their hashes mod 2**64)."""
    out: dict[str, list[int]] = {}
    for e in rows:
        if e.deleted:
            continue
        acc = out.get(e.owner)
        if acc is None:
            acc = out[e.owner] = [0, 0]
        acc[0] += 1
        acc[1] = (acc[1] + row_hash(e.table, e.key, e.ltime)) & MASK
    return {owner: (n, h) for owner, (n, h) in out.items()}


def differing(mine: dict[str, tuple[int, int]],
              theirs: Iterable[tuple[str, int, int]]) -> list[str]:
    """Owners whose live rows differ between the two digests (either side's)."""
    seen = set()
    out = []
    for owner, n, h in theirs:
        seen.add(owner)
        if mine.get(owner) != (n, h):
            out.append(owner)
    out += [owner for owner in mine if owner not in seen]
    return sorted(set(out))
