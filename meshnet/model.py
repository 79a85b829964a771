"""The cluster model: what every table in meshnet holds.

Every object is a frozen dataclass that validates itself on construction, so an invalid
one cannot exist anywhere in the agent: a bad CIDR, a VNI outside 1..16777215 or a port
outside 1..65535 raises :class:`ModelError` (a :class:`UserError`, so the CLI and API
report it as one line). Objects serialise to plain JSON-able dicts with ``to_dict`` and
back with ``from_dict``; ``from_dict`` validates exactly like the constructor and also
rejects unknown or missing keys.

IPv4 and IPv6 are handled once, over :mod:`ipaddress` types.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar

from meshnet.errors import ModelError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

VNI_MIN, VNI_MAX = 1, 16_777_215
MTU_MIN, MTU_MAX = 576, 65_535
NAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,62})$")
MAC_RE = re.compile(r"^(?:[0-9a-f]{2}:){5}[0-9a-f]{2}$")
PROTOCOLS = ("tcp", "udp")
Protocol = Literal["tcp", "udp"]

T = TypeVar("T", bound="_Model")


# --- field validators ----------------------------------------------------------------


def check_name(value: object, what: str = "name") -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise ModelError(
            f"invalid {what} {value!r}: use 1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return value


def parse_ip(value: object, what: str = "address") -> IPAddress:
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return value
    if not isinstance(value, str):
        raise ModelError(f"invalid {what} {value!r}: expected an IP address string")
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise ModelError(f"invalid {what} {value!r}: not an IP address") from None


def parse_cidr(value: object, what: str = "subnet") -> IPNetwork:
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return value
    if not isinstance(value, str):
        raise ModelError(f"invalid {what} {value!r}: expected a CIDR such as 10.0.1.0/24")
    try:
        net = ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        raise ModelError(f"invalid {what} {value!r}: {exc}") from None
    if net.num_addresses < 4:
        raise ModelError(f"invalid {what} {value!r}: too small, need at least a /30 (/126)")
    return net


def check_int(value: object, lo: int, hi: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ModelError(f"invalid {what} {value!r}: expected a whole number")
    if not lo <= value <= hi:
        raise ModelError(f"invalid {what} {value}: must be between {lo} and {hi}")
    return value


def check_port(value: object, what: str = "port") -> int:
    return check_int(value, 1, 65_535, what)


def check_float(value: object, lo: float, hi: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ModelError(f"invalid {what} {value!r}: expected a number")
    if not lo <= float(value) <= hi:
        raise ModelError(f"invalid {what} {value}: must be between {lo} and {hi}")
    return float(value)


def check_protocol(value: object) -> Protocol:
    if value not in PROTOCOLS:
        raise ModelError(f"invalid protocol {value!r}: use tcp or udp")
    return value  # type: ignore[return-value]


def check_mac(value: object) -> str:
    if not isinstance(value, str) or not MAC_RE.match(value.lower()):
        raise ModelError(f"invalid MAC address {value!r}")
    return value.lower()


def check_choice(value: object, choices: tuple[str, ...], what: str) -> str:
    if value not in choices:
        raise ModelError(f"invalid {what} {value!r}: use one of {', '.join(choices)}")
    return value  # type: ignore[return-value]


def parse_port_spec(text: str) -> PortSpec:
    """``80``, ``80/tcp`` or ``53/udp`` -> PortSpec."""
    port, _, proto = text.partition("/")
    try:
        number = int(port)
    except ValueError:
        raise ModelError(f"invalid port {text!r}: expected PORT[/tcp|/udp]") from None
    return PortSpec(port=number, protocol=proto or "tcp")


# --- base ----------------------------------------------------------------------------


class _Model:
    """Serialisation shared by every model class."""

    _ip_fields: ClassVar[tuple[str, ...]] = ()
    _net_fields: ClassVar[tuple[str, ...]] = ()

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            out[f.name] = _dump(getattr(self, f.name))
        return out

    @classmethod
    def from_dict(cls: type[T], data: object) -> T:
        if not isinstance(data, dict):
            raise ModelError(f"invalid {cls.__name__.lower()}: expected an object")
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = set(data) - names
        if unknown:
            raise ModelError(
                f"invalid {cls.__name__.lower()}: unknown field(s) {', '.join(sorted(unknown))}"
            )
        kwargs = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name in data:
                kwargs[f.name] = _load(cls, f.name, data[f.name])
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise ModelError(f"invalid {cls.__name__.lower()}: {exc}") from None


def _dump(value: Any) -> Any:
    if isinstance(value, _Model):
        return value.to_dict()
    if isinstance(value, tuple | list):
        return [_dump(v) for v in value]
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return str(value)
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return str(value)
    return value


_NESTED: dict[tuple[str, str], type] = {}


def _load(cls: type, name: str, value: Any) -> Any:
    nested = _NESTED.get((cls.__name__, name))
    if nested is not None:
        if isinstance(value, list):
            return tuple(nested.from_dict(v) for v in value)
        return nested.from_dict(value) if value is not None else None
    if isinstance(value, list):
        return tuple(value)
    return value


# --- model classes -------------------------------------------------------------------


@dataclass(frozen=True)
class Node(_Model):
    """A host running an agent: gossip address and VTEP (VXLAN tunnel endpoint) address."""

    name: str
    gossip_addr: IPAddress
    vtep_addr: IPAddress
    gossip_port: int = 7946

    def __post_init__(self) -> None:
        check_name(self.name, "node name")
        self._set("gossip_addr", parse_ip(self.gossip_addr, "gossip address"))
        self._set("vtep_addr", parse_ip(self.vtep_addr, "VTEP address"))
        check_port(self.gossip_port, "gossip port")


DRIVERS = ("overlay", "macvlan")
MACVLAN_MODES = ("bridge", "private", "vepa", "passthru")
IFNAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,15}$")  #: a parent link, or LINK.VLAN


def check_parent(value: object) -> str:
    """A macvlan parent: an interface name, or NAME.VLAN (an 802.1Q sub-interface)."""
    if not isinstance(value, str) or len(value) > 15 or not IFNAME_RE.match(
            value.replace(".", "_", 1)):
        raise ModelError(f"invalid parent interface {value!r}: an interface name (at most 15 "
                         "characters) or NAME.VLAN")
    base, dot, vlan = value.partition(".")
    if dot and not (base and vlan.isdigit() and 1 <= int(vlan) <= 4094):
        raise ModelError(f"invalid parent interface {value!r}: the VLAN after the dot must be "
                         "1-4094")
    return value


@dataclass(frozen=True)
class Network(_Model):
    """A network: one subnet. ``overlay`` (the default): one VNI, ``mtu`` 0 means 'underlay
    MTU - 50'. ``macvlan``: containers sit on the LAN of each host's parent interface
    (``parent``, "" = the one holding the host's VTEP address; NAME.VLAN = an 802.1Q
    sub-interface), with the LAN's router ``gateway_ip`` and addresses only from
    ``ip_range`` when given; its VNI only names it."""

    name: str
    vni: int
    subnet: IPNetwork
    mtu: int = 0
    internal: bool = False
    driver: str = "overlay"
    gateway_ip: str = ""
    ip_range: str = ""
    parent: str = ""
    macvlan_mode: str = ""

    def __post_init__(self) -> None:
        check_name(self.name, "network name")
        check_int(self.vni, VNI_MIN, VNI_MAX, "VNI")
        self._set("subnet", parse_cidr(self.subnet))
        if self.mtu != 0:
            check_int(self.mtu, MTU_MIN, MTU_MAX, "MTU")
        if not isinstance(self.internal, bool):
            raise ModelError(f"invalid internal flag {self.internal!r}: expected true or false")
        check_choice(self.driver, DRIVERS, "driver")
        if self.driver == "overlay":
            for key in ("gateway_ip", "ip_range", "parent", "macvlan_mode"):
                if getattr(self, key):
                    raise ModelError(f"--{key.replace('_ip', '').replace('_', '-')} is for "
                                     "macvlan networks (--driver macvlan)")
            return
        if not self.gateway_ip:
            raise ModelError("a macvlan network needs --gateway (the LAN's router)")
        gw = parse_ip(self.gateway_ip, "gateway")
        if gw not in self.subnet or gw in (self.subnet.network_address,
                                           self.subnet.broadcast_address):
            raise ModelError(f"gateway {gw} is not a host address of {self.subnet}")
        self._set("gateway_ip", str(gw))
        if self.ip_range:
            rng = parse_cidr(self.ip_range, "--ip-range")
            if rng.version != self.subnet.version or not rng.subnet_of(self.subnet):  # type: ignore[arg-type]
                raise ModelError(f"--ip-range {rng} is not inside {self.subnet}")
            self._set("ip_range", str(rng))
        if self.parent:
            check_parent(self.parent)
        if self.macvlan_mode:
            check_choice(self.macvlan_mode, MACVLAN_MODES, "macvlan mode")
        if self.internal:
            raise ModelError("a macvlan network is on the LAN: --internal does not apply")

    @property
    def gateway(self) -> IPAddress:
        """Overlay: the first usable address, reserved (the sandbox bridge's). Macvlan: the
        LAN's router."""
        if self.gateway_ip:
            return ipaddress.ip_address(self.gateway_ip)
        return self.subnet.network_address + 1

    @property
    def macvlan(self) -> bool:
        return self.driver == "macvlan"

    @property
    def range(self) -> IPNetwork:
        """Where addresses are allocated."""
        return ipaddress.ip_network(self.ip_range) if self.ip_range else self.subnet


DOCKER_NETNS = "docker:"  #: the netns prefix of endpoints made by the Docker plugin


@dataclass(frozen=True)
class Endpoint(_Model):
    """A container's interface on one network, owned by the host it runs on."""

    network: str
    ip: IPAddress
    mac: str
    host: str
    name: str
    service: str = ""
    aliases: tuple[str, ...] = ()
    netns: str = ""  #: the container's namespace (name or path), meaningful on its host
    ifname: str = ""  #: the interface name inside the container (eth0, eth1, ...)

    def __post_init__(self) -> None:
        check_name(self.network, "network name")
        self._set("ip", parse_ip(self.ip, "endpoint address"))
        self._set("mac", check_mac(self.mac))
        check_name(self.host, "host name")
        check_name(self.name, "endpoint name")
        if self.service:
            check_name(self.service, "service name")
        if not isinstance(self.aliases, tuple | list):
            raise ModelError(f"invalid aliases {self.aliases!r}: expected a list of names")
        self._set("aliases", tuple(check_name(a, "alias") for a in self.aliases))
        if not isinstance(self.netns, str):
            raise ModelError(f"invalid netns {self.netns!r}")
        if not isinstance(self.ifname, str) or len(self.ifname) > 15 or "/" in self.ifname:
            raise ModelError(f"invalid interface name {self.ifname!r}")

    @property
    def key(self) -> str:
        return f"{self.network}/{self.ip}"

    @property
    def docker(self) -> bool:
        """Made by the Docker plugin: Docker owns the container side (``netns`` is
        ``docker:`` + Docker's endpoint ID, or just ``docker:`` while only the address is
        claimed)."""
        return self.netns.startswith(DOCKER_NETNS)

    @property
    def docker_id(self) -> str:
        return self.netns[len(DOCKER_NETNS):] if self.docker else ""


@dataclass(frozen=True)
class PortSpec(_Model):
    port: int
    protocol: Protocol = "tcp"

    def __post_init__(self) -> None:
        check_port(self.port)
        check_protocol(self.protocol)

    def __str__(self) -> str:
        return f"{self.port}/{self.protocol}"


@dataclass(frozen=True)
class HealthSpec(_Model):
    """How the agent checks a service's local tasks. ``kind`` none, tcp or http."""

    kind: Literal["none", "tcp", "http"] = "none"
    path: str = "/"
    interval: float = 5.0
    timeout: float = 2.0
    retries: int = 3

    def __post_init__(self) -> None:
        check_choice(self.kind, ("none", "tcp", "http"), "health check kind")
        if not isinstance(self.path, str) or not self.path.startswith("/"):
            raise ModelError(f"invalid health check path {self.path!r}: must start with '/'")
        self._set("interval", check_float(self.interval, 0.05, 3600, "health interval"))
        self._set("timeout", check_float(self.timeout, 0.01, 3600, "health timeout"))
        check_int(self.retries, 1, 100, "health retries")


@dataclass(frozen=True)
class Service(_Model):
    """A load-balanced service on one network. ``vip`` is None in dnsrr mode."""

    name: str
    network: str
    vip: IPAddress | None = None
    mode: Literal["vip", "dnsrr"] = "vip"
    ports: tuple[PortSpec, ...] = ()
    health: HealthSpec = field(default_factory=HealthSpec)
    affinity: Literal["none", "client-ip"] = "none"

    def __post_init__(self) -> None:
        check_name(self.name, "service name")
        check_name(self.network, "network name")
        check_choice(self.mode, ("vip", "dnsrr"), "service mode")
        if self.vip is not None:
            self._set("vip", parse_ip(self.vip, "VIP"))
        if self.mode == "vip" and self.vip is None:
            raise ModelError(f"service {self.name}: mode vip needs a VIP")
        if self.mode == "dnsrr" and self.vip is not None:
            raise ModelError(f"service {self.name}: mode dnsrr has no VIP")
        if not all(isinstance(p, PortSpec) for p in self.ports):
            raise ModelError(f"service {self.name}: invalid port list")
        self._set("ports", tuple(self.ports))
        if len(set(self.ports)) != len(self.ports):
            raise ModelError(f"service {self.name}: duplicate port")
        if not isinstance(self.health, HealthSpec):
            raise ModelError(f"service {self.name}: invalid health spec")
        check_choice(self.affinity, ("none", "client-ip"), "affinity")


@dataclass(frozen=True)
class PublishedPort(_Model):
    """A port published on hosts and forwarded to a service's target port."""

    published: int
    target: int
    service: str
    protocol: Protocol = "tcp"
    mode: Literal["ingress", "host"] = "ingress"
    local_only: bool = False

    def __post_init__(self) -> None:
        check_port(self.published, "published port")
        check_port(self.target, "target port")
        check_name(self.service, "service name")
        check_protocol(self.protocol)
        check_choice(self.mode, ("ingress", "host"), "publish mode")
        if not isinstance(self.local_only, bool):
            raise ModelError(f"invalid local-only flag {self.local_only!r}")

    @property
    def key(self) -> str:
        return f"{self.published}/{self.protocol}"


@dataclass(frozen=True)
class TaskHealth(_Model):
    """The health of one task (an endpoint of a service), as its host last saw it."""

    network: str
    ip: IPAddress
    service: str
    healthy: bool
    checked_at: float = 0.0
    reason: str = ""

    def __post_init__(self) -> None:
        check_name(self.network, "network name")
        self._set("ip", parse_ip(self.ip, "task address"))
        check_name(self.service, "service name")
        if not isinstance(self.healthy, bool):
            raise ModelError(f"invalid health flag {self.healthy!r}")
        self._set("checked_at", check_float(self.checked_at, 0, float("inf"), "check time"))
        if not isinstance(self.reason, str):
            raise ModelError(f"invalid health reason {self.reason!r}")


_NESTED[("Service", "ports")] = PortSpec
_NESTED[("Service", "health")] = HealthSpec


@dataclass(frozen=True)
class KeyringSpec(_Model):
    """The cluster's gossip keyring (base64 keys, as `serf keygen` prints them)."""

    keys: tuple[str, ...]
    primary: str

    def __post_init__(self) -> None:
        from meshnet.keys import decode_key

        if not isinstance(self.keys, tuple | list) or not self.keys:
            raise ModelError("a keyring needs at least one key")
        self._set("keys", tuple(self.keys))
        for k in self.keys:
            if not isinstance(k, str):
                raise ModelError("keys are base64 strings")
            decode_key(k)
        if self.primary not in self.keys:
            raise ModelError("the primary key must be one of the installed keys")
