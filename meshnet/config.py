"""Typed agent configuration, read in one place.

``AgentConfig`` is built from the TOML file (default ``/etc/meshnet/config.toml``) and then
overridden by command-line flags. Every flag has a key of the same name in the file
(``encrypt-key`` or ``encrypt_key``). A wrong key, a wrong type or an impossible value
raises :class:`ConfigError` naming the file and the key; nothing else reads files, flags
or the environment.

Example ``/etc/meshnet/config.toml``::

    node = "host-a"
    bind = "10.0.0.5:7946"
    join = ["10.0.0.6", "10.0.0.7:7946"]
    api = "/run/meshnet/api.sock"
    lb = "auto"
    gossip-preset = "swift"
"""

from __future__ import annotations

import ipaddress
import os
import socket
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from meshnet.errors import ConfigError, ModelError
from meshnet.model import check_name, parse_ip

DEFAULT_CONFIG = Path("/etc/meshnet/config.toml")
DEFAULT_API = "/run/meshnet/api.sock"
GOSSIP_PORT = 7946
VXLAN_PORT = 4789


def parse_hostport(text: str, default_port: int, what: str) -> tuple[str, int]:
    """``ADDR``, ``ADDR:PORT`` or ``[V6]:PORT`` -> (addr, port)."""
    host, port = text, default_port
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise ConfigError(f"invalid {what} {text!r}: missing ']'")
        if rest:
            if not rest.startswith(":"):
                raise ConfigError(f"invalid {what} {text!r}")
            port = _port(rest[1:], what, text)
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        port = _port(p, what, text)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"invalid {what} {text!r}: {host!r} is not an IP address") from None
    return host, port


def _port(text: str, what: str, whole: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ConfigError(f"invalid {what} {whole!r}: port must be 1-65535")
    return int(text)


@dataclass(frozen=True)
class AgentConfig:
    """Everything ``meshnet agent`` needs. Field names match the flags."""

    node: str = ""  #: node name; default: the host name
    bind: str = "0.0.0.0"  #: gossip bind address (TCP+UDP)
    bind_port: int = GOSSIP_PORT
    advertise: str = ""  #: address other nodes use; default: the bind address
    join: tuple[str, ...] = ()  #: peers to join at start, ADDR[:PORT]
    api: str = DEFAULT_API  #: local API unix socket (mode 0600)
    encrypt_key: str = ""  #: base64 gossip key (same format as `serf keygen`)
    lb: str = "auto"  #: load balancer backend: auto, ipvs, iptables, nftables
    runtime: str = "netns"  #: where endpoints come from: netns or docker
    metrics: str = ""  #: ADDR:PORT for Prometheus metrics; empty: off
    gossip_preset: str = "swift"  #: swift (default), lan (memberlist/serf), fast
    underlay_mtu: int = 0  #: 0: detect from the interface holding the advertise address
    state_dir: str = "/var/lib/meshnet"  #: durable tables and restart state (keep it on disk)
    log_level: str = "info"
    dns_upstreams: tuple[str, ...] = ()  #: empty: the host's /etc/resolv.conf
    netns_prefix: str = ""  #: prefix of namespaces this agent creates; default "mn-"
    gwbridge_subnet: str = "198.18.0.0/16"  #: the egress bridge's subnet (host-local)
    docker_socket: str = "/var/run/docker.sock"  #: Docker Engine API (--runtime docker)
    #: the Docker network/IPAM plugin's socket, served with --runtime docker; "": off
    docker_plugin_socket: str = "/run/docker/plugins/meshnet.sock"
    leave_on_terminate: bool = False  #: SIGTERM leaves the cluster (default: a restart)
    #: seconds a delete is remembered (tombstones); 0: 300. A partition or an agent away
    #: for longer may bring objects deleted meanwhile back (NetworkDB's trade-off)
    tombstone_lifetime: int = 0
    #: NET=IFACE: this host's parent interface for macvlan network NET (else the network's)
    macvlan_parents: tuple[str, ...] = ()
    #: a macvlan "shim" per macvlan network with local containers, so this host reaches them
    macvlan_shim: bool = False

    def __post_init__(self) -> None:
        try:
            if self.node:
                check_name(self.node, "node name")
            parse_ip(self.bind, "bind address")
            if self.advertise:
                parse_ip(self.advertise, "advertise address")
            for d in self.dns_upstreams:
                parse_hostport(d, 53, "DNS upstream")
        except ModelError as exc:
            raise ConfigError(str(exc)) from None
        for j in self.join:
            parse_hostport(j, GOSSIP_PORT, "join address")
        _choice(self.lb, ("auto", "ipvs", "iptables", "nftables"), "lb")
        _choice(self.runtime, ("netns", "docker"), "runtime")
        _choice(self.gossip_preset, ("swift", "lan", "fast"), "gossip-preset")
        _choice(self.log_level, ("debug", "info", "warning", "error"), "log-level")
        if self.metrics:
            parse_hostport(self.metrics, 0, "metrics address")
            if ":" not in self.metrics:
                raise ConfigError(f"invalid metrics address {self.metrics!r}: need ADDR:PORT")
        if self.tombstone_lifetime and not 5 <= self.tombstone_lifetime <= 30 * 86400:
            raise ConfigError(f"invalid tombstone-lifetime {self.tombstone_lifetime}: must be "
                              "5-2592000 seconds (0: the default, 300)")
        if not 1 <= self.bind_port <= 65535:
            raise ConfigError(f"invalid bind port {self.bind_port}")
        if self.underlay_mtu and not 576 <= self.underlay_mtu <= 65535:
            raise ConfigError(f"invalid underlay-mtu {self.underlay_mtu}: must be 576-65535")
        try:
            from meshnet.model import parse_cidr

            parse_cidr(self.gwbridge_subnet, "gwbridge-subnet")
        except ModelError as exc:
            raise ConfigError(str(exc)) from None
        if self.netns_prefix and not self.netns_prefix.startswith("mn-"):
            raise ConfigError(f"invalid netns-prefix {self.netns_prefix!r}: must start with 'mn-'")
        if self.encrypt_key:
            from meshnet.keys import decode_key

            decode_key(self.encrypt_key)
        self.macvlan_parents_map()

    def macvlan_parents_map(self) -> dict[str, str]:
        from meshnet.model import check_name, check_parent

        out = {}
        for item in self.macvlan_parents:
            net, sep, iface = item.partition("=")
            try:
                if not sep:
                    raise ModelError(f"invalid macvlan-parent {item!r}: use NET=IFACE")
                out[check_name(net, "network name")] = check_parent(iface)
            except ModelError as exc:
                raise ConfigError(str(exc)) from None
        return out

    @property
    def node_name(self) -> str:
        return self.node or socket.gethostname().split(".")[0]

    @property
    def advertise_addr(self) -> str:
        if self.advertise:
            return self.advertise
        if self.bind not in ("0.0.0.0", "::"):
            return self.bind
        return _default_route_addr()


def _choice(value: str, choices: tuple[str, ...], key: str) -> None:
    if value not in choices:
        raise ConfigError(f"invalid {key} {value!r}: use one of {', '.join(choices)}")


def _default_route_addr() -> str:
    """The source address the kernel would use to reach the outside (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.255", 9))  # TEST-NET-1: only a route lookup, never sent
            return s.getsockname()[0]
        except OSError:
            return "127.0.0.1"


_TYPES: dict[str, type] = {f.name: f.type for f in fields(AgentConfig)}  # type: ignore[misc]
_KINDS = {
    "str": str,
    "int": int,
    "bool": bool,
    "tuple[str, ...]": tuple,
}


def _coerce(key: str, value: Any, origin: str) -> Any:
    kind = _KINDS[str(_TYPES[key])]
    if kind is tuple:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{origin}: key {key!r} must be a list of strings")
        return tuple(value)
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{origin}: key {key!r} must be true or false, not {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{origin}: key {key!r} must be a whole number, not {value!r}")
        return value
    if not isinstance(value, str):
        raise ConfigError(f"{origin}: key {key!r} must be a string, not {value!r}")
    return value


def _normalise(raw: dict[str, Any], origin: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in _TYPES:
            raise ConfigError(f"{origin}: unknown key {key!r}")
        if name == "bind" and isinstance(value, str) and ":" in value.strip("[]"):
            host, port = parse_hostport(value, GOSSIP_PORT, "bind address")
            out["bind"], out["bind_port"] = host, port
            continue
        out[name] = _coerce(name, value, origin)
    return out


def load_config(path: str | os.PathLike[str] | None, overrides: dict[str, Any]) -> AgentConfig:
    """File (if any) then flags. ``path`` None: the default file if it exists."""
    values: dict[str, Any] = {}
    file = Path(path) if path else DEFAULT_CONFIG
    if path or file.exists():
        try:
            raw = tomllib.loads(file.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {file} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {file}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {file}: {exc}") from None
        values.update(_normalise(raw, f"config file {file}"))
    flags = {k: v for k, v in overrides.items() if v not in (None, (), [])}
    values.update(_normalise(flags, "command line"))
    return AgentConfig(**values)
