"""What Docker never replays, kept on disk (``STATE_DIR/docker.json``, atomic rewrite).

dockerd sends CreateNetwork once, ever: not again after a restart of itself or of the
plugin. So the plugin keeps, per host:

* ``pools``: PoolID -> subnet (RequestPool .. ReleasePool);
* ``networks``: Docker NetworkID -> meshnet network name ("" while the name is being
  learned from Docker) and its pool;
* ``endpoints``: Docker EndpointID -> the meshnet endpoint key (``NET/IP``);
* ``joined``: EndpointID -> the sandbox key it joined (the DNS route is handed to the
  first meshnet endpoint of a sandbox only: two equal routes fail Docker's Join);
* ``ensured``: meshnet networks this agent has created a Docker network for once
  (a user who removes it is not overruled).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("meshnet.docker")


@dataclass
class NetworkBinding:
    name: str  #: the meshnet network ("" until learned)
    pool: str  #: PoolID
    internal: bool = False


@dataclass
class PluginState:
    pools: dict[str, str] = field(default_factory=dict)
    networks: dict[str, NetworkBinding] = field(default_factory=dict)
    endpoints: dict[str, str] = field(default_factory=dict)
    joined: dict[str, str] = field(default_factory=dict)
    ensured: set[str] = field(default_factory=set)

    def to_dict(self) -> dict[str, Any]:
        return {"pools": self.pools,
                "networks": {k: {"name": v.name, "pool": v.pool, "internal": v.internal}
                             for k, v in self.networks.items()},
                "endpoints": self.endpoints, "joined": self.joined,
                "ensured": sorted(self.ensured)}

    @classmethod
    def from_dict(cls, data: Any) -> PluginState:
        """Tolerant: a malformed entry is dropped, never the whole file."""
        out = cls()
        if not isinstance(data, dict):
            return out

        def strmap(key: str) -> dict[str, str]:
            raw = data.get(key)
            if not isinstance(raw, dict):
                return {}
            return {k: v for k, v in raw.items() if isinstance(k, str) and isinstance(v, str)}
        out.pools = strmap("pools")
        out.endpoints = strmap("endpoints")
        out.joined = strmap("joined")
        nets = data.get("networks")
        if isinstance(nets, dict):
            for k, v in nets.items():
                if (isinstance(v, dict) and isinstance(v.get("name"), str)
                        and isinstance(v.get("pool"), str)):
                    out.networks[str(k)] = NetworkBinding(v["name"], v["pool"],
                                                          bool(v.get("internal", False)))
        ensured = data.get("ensured")
        if isinstance(ensured, list):
            out.ensured = {n for n in ensured if isinstance(n, str)}
        return out

    def network_of_pool(self, pool_id: str) -> tuple[str, NetworkBinding] | None:
        for nid, b in self.networks.items():
            if b.pool == pool_id:
                return nid, b
        return None


class StateFile:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def load(self) -> PluginState:
        try:
            raw = self.path.read_text()
        except FileNotFoundError:
            return PluginState()
        try:
            return PluginState.from_dict(json.loads(raw))
        except ValueError:
            aside = self.path.with_suffix(".corrupt")
            log.warning("%s is not JSON; moved to %s, starting empty", self.path, aside)
            os.replace(self.path, aside)
            return PluginState()

    def save(self, state: PluginState) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(state.to_dict(), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
