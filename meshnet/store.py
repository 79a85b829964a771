"""The typed view of the cluster tables.

The agent never handles raw table bytes: ``Store`` turns model objects into table
entries (JSON, since values are small and operators read them with ``--json``) and back.
Table names are part of the gossip protocol between meshnet agents:

==========  =====================  ==========================
table       key                    value
==========  =====================  ==========================
networks    network name           :class:`~meshnet.model.Network`
endpoints   ``network/ip``         :class:`~meshnet.model.Endpoint`
services    service name           :class:`~meshnet.model.Service`
published   ``port/proto``         :class:`~meshnet.model.PublishedPort`
health      ``network/ip``         :class:`~meshnet.model.TaskHealth`
vteps       node name              :class:`~meshnet.model.Node`
keyring     ``cluster``            :class:`~meshnet.model.KeyringSpec`
traces      ``id/kind/node``       :class:`~meshnet.trace.model.TraceEntry`
==========  =====================  ==========================

An entry that does not decode (written by a newer or broken peer) is skipped and counted,
never raised: it is peer input.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from typing import TypeVar

from meshnet.errors import ModelError
from meshnet.model import (
    Endpoint,
    KeyringSpec,
    Network,
    Node,
    PublishedPort,
    Service,
    TaskHealth,
    _Model,
)
from meshnet.ports import TableBackend
from meshnet.trace.model import TraceEntry

log = logging.getLogger("meshnet.store")
M = TypeVar("M", bound=_Model)

TABLES: dict[str, type[_Model]] = {
    "networks": Network,
    "endpoints": Endpoint,
    "services": Service,
    "published": PublishedPort,
    "health": TaskHealth,
    "vteps": Node,
    "keyring": KeyringSpec,
    "traces": TraceEntry,
}


def encode(obj: _Model) -> bytes:
    return json.dumps(obj.to_dict(), separators=(",", ":"), sort_keys=True).encode()


def decode(cls: type[M], raw: bytes) -> M:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelError(f"undecodable {cls.__name__}: {exc}") from None
    return cls.from_dict(data)


class LocalTables:
    """A single-node TableBackend: the tables before (or without) gossip."""

    def __init__(self, node: str) -> None:
        self.node = node
        self._data: dict[str, dict[str, bytes]] = {}

    def put(self, table: str, key: str, value: bytes, now: float) -> None:
        self._data.setdefault(table, {})[key] = value

    def delete(self, table: str, key: str, now: float) -> None:
        self._data.get(table, {}).pop(key, None)

    def get(self, table: str, key: str) -> bytes | None:
        return self._data.get(table, {}).get(key)

    def items(self, table: str) -> Iterator[tuple[str, bytes, str]]:
        for key, value in list(self._data.get(table, {}).items()):
            yield key, value, self.node


class Store:
    """Model objects in and out of a TableBackend."""

    def __init__(self, backend: TableBackend) -> None:
        self.backend = backend
        self.undecodable = 0
        self.listeners: list[Callable[[str, str], None]] = []
        #: table -> key -> (raw, decoded): models are frozen, so an unchanged row is
        #: decoded once, not on every read (reconcilers read whole tables on each run)
        self._decoded: dict[str, dict[str, tuple[bytes, _Model]]] = {}

    def notify(self, table: str, key: str) -> None:
        """Tell every listener that (table, key) changed (locally or from a peer)."""
        for fn in self.listeners:
            fn(table, key)

    def put(self, table: str, key: str, obj: _Model, now: float) -> None:
        assert isinstance(obj, TABLES[table]), (table, obj)
        self.backend.put(table, key, encode(obj), now)
        if not getattr(self.backend, "emits_events", False):
            self.notify(table, key)

    def delete(self, table: str, key: str, now: float) -> None:
        self.backend.delete(table, key, now)
        if not getattr(self.backend, "emits_events", False):
            self.notify(table, key)

    def get(self, table: str, key: str) -> _Model | None:
        raw = self.backend.get(table, key)
        if raw is None:
            return None
        hit = self._decoded.get(table, {}).get(key)
        if hit is not None and (hit[0] is raw or hit[0] == raw):
            return hit[1]
        try:
            return decode(TABLES[table], raw)
        except ModelError:
            self.undecodable += 1
            return None

    def all(self, table: str) -> dict[str, _Model]:
        out: dict[str, _Model] = {}
        cls = TABLES[table]
        old = self._decoded.get(table, {})
        cache: dict[str, tuple[bytes, _Model]] = {}
        for key, raw, _owner in self.backend.items(table):
            hit = old.get(key)
            if hit is not None and (hit[0] is raw or hit[0] == raw):
                out[key] = hit[1]
                cache[key] = hit
                continue
            try:
                obj = decode(cls, raw)
            except ModelError as exc:
                self.undecodable += 1
                log.debug("skipping undecodable %s/%s: %s", table, key, exc)
                continue
            out[key] = obj
            cache[key] = (raw, obj)
        self._decoded[table] = cache  # only what is there now: never outgrows the table
        return out

    def networks(self) -> dict[str, Network]:
        return self.all("networks")  # type: ignore[return-value]

    def endpoints(self) -> dict[str, Endpoint]:
        return self.all("endpoints")  # type: ignore[return-value]

    def services(self) -> dict[str, Service]:
        return self.all("services")  # type: ignore[return-value]
