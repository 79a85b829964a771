"""The plugin protocol as dockerd 20.10 speaks it (pure: no I/O).

Every call is ``POST /<Interface>.<Method>`` with a JSON body (empty for the handshake).
:func:`parse` checks a body against the call's schema and returns a request dataclass,
or raises :class:`PluginError` (answered 500 ``{"Err": ...}``, which Docker shows the
user verbatim and never retries) or :class:`EmptyBody` (400: dockerd re-sends a request
whose connection dropped with ``Content-Length: 0``; a status error is not retried).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from meshnet.errors import UserError

ADDRESS_SPACE = "meshnet"
GATEWAY_KEY = "com.docker.network.gateway"
GENERIC = "com.docker.network.generic"
INTERNAL = "com.docker.network.internal"
OPT_NETWORK = "meshnet.network"  #: -o meshnet.network=NAME: the cluster network
OPT_MTU = "com.docker.network.driver.mtu"
ADDRESS_TYPE = "RequestAddressType"

ACTIVATE = {"Implements": ["NetworkDriver", "IpamDriver"]}
NET_CAPS = {"Scope": "local", "ConnectivityScope": "global"}
IPAM_CAPS = {"RequiresMACAddress": False, "RequiresRequestReplay": False}
ADDRESS_SPACES = {"LocalDefaultAddressSpace": ADDRESS_SPACE,
                  "GlobalDefaultAddressSpace": ADDRESS_SPACE}


class PluginError(UserError):
    """A call meshnet refuses: HTTP 500 with ``{"Err": message}``."""


class EmptyBody(PluginError):
    """A call that needs a body came without one: HTTP 400."""


# --- requests --------------------------------------------------------------------


@dataclass(frozen=True)
class RequestPool:
    address_space: str
    pool: str
    sub_pool: str
    v6: bool
    options: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ReleasePool:
    pool_id: str


@dataclass(frozen=True)
class RequestAddress:
    pool_id: str
    address: str
    gateway: bool  #: Options.RequestAddressType == com.docker.network.gateway


@dataclass(frozen=True)
class ReleaseAddress:
    pool_id: str
    address: str


@dataclass(frozen=True)
class IpData:
    address_space: str
    pool: str
    gateway: str


@dataclass(frozen=True)
class CreateNetwork:
    network_id: str
    ipv4: tuple[IpData, ...]
    ipv6: tuple[IpData, ...]
    generic: dict[str, str]  #: the -o options
    internal: bool


@dataclass(frozen=True)
class NetworkRef:  #: DeleteNetwork, FreeNetwork
    network_id: str


@dataclass(frozen=True)
class CreateEndpoint:
    network_id: str
    endpoint_id: str
    address: str  #: "10.0.0.2/24"
    mac: str  #: "" unless --mac-address


@dataclass(frozen=True)
class EndpointRef:  #: DeleteEndpoint, Leave, EndpointOperInfo, Revoke/ProgramExternal
    network_id: str
    endpoint_id: str


@dataclass(frozen=True)
class Join:
    network_id: str
    endpoint_id: str
    sandbox_key: str


def _obj(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise PluginError(f"invalid {what}: expected an object")
    return value


def _str(d: dict[str, Any], key: str, required: bool = False, limit: int = 256) -> str:
    v = d.get(key)
    if v is None or v == "":
        if required:
            raise PluginError(f"missing {key}")
        return ""
    if not isinstance(v, str) or len(v) > limit:
        raise PluginError(f"invalid {key}: expected a string of at most {limit} characters")
    return v


def _bool(d: dict[str, Any], key: str) -> bool:
    v = d.get(key, False)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise PluginError(f"invalid {key}: expected true or false")
    return v


def _id(d: dict[str, Any], key: str) -> str:
    v = _str(d, key, required=True, limit=128)
    if not all(c.isalnum() or c in "-_." for c in v):
        raise PluginError(f"invalid {key} {v[:40]!r}")
    return v


def _ipdata(value: Any, what: str) -> tuple[IpData, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > 16:
        raise PluginError(f"invalid {what}: expected a list")
    out = []
    for item in value:
        d = _obj(item, what)
        out.append(IpData(_str(d, "AddressSpace"), _str(d, "Pool"), _str(d, "Gateway")))
    return tuple(out)


def decode(body: bytes) -> dict[str, Any]:
    if not body.strip():
        raise EmptyBody("empty request body")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise PluginError("request body is not JSON") from None
    if not isinstance(data, dict):
        raise PluginError("request body must be a JSON object")
    return data


def parse(method: str, body: bytes) -> Any:
    """The request of ``method`` (``Interface.Method``) from its body."""
    d = decode(body)
    match method:
        case "IpamDriver.RequestPool":
            opts = _obj(d.get("Options"), "Options")
            return RequestPool(_str(d, "AddressSpace"), _str(d, "Pool"), _str(d, "SubPool"),
                               _bool(d, "V6"), {str(k): str(v) for k, v in opts.items()})
        case "IpamDriver.ReleasePool":
            return ReleasePool(_str(d, "PoolID", required=True))
        case "IpamDriver.RequestAddress":
            opts = _obj(d.get("Options"), "Options")
            return RequestAddress(_str(d, "PoolID", required=True), _str(d, "Address"),
                                  opts.get(ADDRESS_TYPE) == GATEWAY_KEY)
        case "IpamDriver.ReleaseAddress":
            return ReleaseAddress(_str(d, "PoolID", required=True),
                                  _str(d, "Address", required=True))
        case "NetworkDriver.CreateNetwork":
            opts = _obj(d.get("Options"), "Options")
            generic = _obj(opts.get(GENERIC), GENERIC)
            internal = opts.get(INTERNAL, False)
            if not isinstance(internal, bool):
                raise PluginError(f"invalid {INTERNAL}: expected true or false")
            return CreateNetwork(_id(d, "NetworkID"), _ipdata(d.get("IPv4Data"), "IPv4Data"),
                                 _ipdata(d.get("IPv6Data"), "IPv6Data"),
                                 {str(k): str(v) for k, v in generic.items()}, internal)
        case "NetworkDriver.DeleteNetwork" | "NetworkDriver.FreeNetwork":
            return NetworkRef(_id(d, "NetworkID"))
        case "NetworkDriver.CreateEndpoint":
            iface = _obj(d.get("Interface"), "Interface")
            if _str(iface, "AddressIPv6"):
                raise PluginError("meshnet networks in Docker are IPv4 only")
            return CreateEndpoint(_id(d, "NetworkID"), _id(d, "EndpointID"),
                                  _str(iface, "Address", required=True),
                                  _str(iface, "MacAddress"))
        case "NetworkDriver.Join":
            return Join(_id(d, "NetworkID"), _id(d, "EndpointID"), _str(d, "SandboxKey"))
        case ("NetworkDriver.DeleteEndpoint" | "NetworkDriver.Leave"
              | "NetworkDriver.EndpointOperInfo" | "NetworkDriver.ProgramExternalConnectivity"
              | "NetworkDriver.RevokeExternalConnectivity"):
            return EndpointRef(_id(d, "NetworkID"), _id(d, "EndpointID"))
        case _:
            return d  # the calls meshnet answers without reading (DiscoverNew, ...)


#: every method the plugin serves; the ones answered without a body first
NO_BODY = ("Plugin.Activate", "NetworkDriver.GetCapabilities", "IpamDriver.GetCapabilities",
           "IpamDriver.GetDefaultAddressSpaces")
METHODS = NO_BODY + (
    "IpamDriver.RequestPool", "IpamDriver.ReleasePool", "IpamDriver.RequestAddress",
    "IpamDriver.ReleaseAddress", "NetworkDriver.CreateNetwork", "NetworkDriver.DeleteNetwork",
    "NetworkDriver.CreateEndpoint", "NetworkDriver.EndpointOperInfo",
    "NetworkDriver.DeleteEndpoint", "NetworkDriver.Join", "NetworkDriver.Leave",
    "NetworkDriver.ProgramExternalConnectivity", "NetworkDriver.RevokeExternalConnectivity",
    "NetworkDriver.DiscoverNew", "NetworkDriver.DiscoverDelete",
    "NetworkDriver.AllocateNetwork", "NetworkDriver.FreeNetwork")
