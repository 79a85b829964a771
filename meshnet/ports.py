"""Ports: the small interfaces behind which every outside dependency sits.

Real adapters live next to the code that needs them; in-memory fakes live in
``meshnet/testing/``. Cores depend only on these protocols.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol


class TableBackend(Protocol):
    """A replicated key/value table set (the gossip tables, or a local dict before them).

    Values are opaque bytes; ``owner`` is the node that wrote the entry.
    """

    def put(self, table: str, key: str, value: bytes, now: float) -> None: ...

    def delete(self, table: str, key: str, now: float) -> None: ...

    def get(self, table: str, key: str) -> bytes | None: ...

    def items(self, table: str) -> Iterable[tuple[str, bytes, str]]:
        """Live entries as (key, value, owner)."""
        ...
