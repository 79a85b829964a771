"""Address allocation inside a network's subnet (pure).

Each host starts its search at an offset derived from its own name, so two hosts that
attach at the same moment almost never pick the same address; when they do, the
replicated table keeps one claim (the agent re-checks its claim after a gossip round and
picks again if it lost; see ``Agent.attach``).
"""

from __future__ import annotations

import ipaddress
import zlib
from collections.abc import Iterable

from meshnet.errors import Conflict, UserError
from meshnet.model import IPAddress, Network, parse_ip


def reserved(net: Network) -> set[IPAddress]:
    """Network address, gateway (overlay: the first host, on the sandbox bridge; macvlan:
    the LAN's router) and broadcast."""
    s = net.subnet
    out = {s.network_address, net.gateway}
    if s.version == 4:
        out.add(s.broadcast_address)
    return out


def check_static(net: Network, text: str, taken: Iterable[IPAddress]) -> IPAddress:
    ip = parse_ip(text, "address")
    if ip not in net.subnet:
        raise UserError(f"address {ip} is outside network {net.name}'s subnet {net.subnet}")
    if ip in reserved(net):
        raise UserError(f"address {ip} is reserved in {net.subnet} (network, gateway or broadcast)")
    if ip in set(taken):
        raise Conflict(f"address {ip} is already in use on network {net.name}")
    return ip


def allocate(net: Network, taken: Iterable[IPAddress], seed: str) -> IPAddress:
    """A free address, searching from an offset derived from ``seed`` (the host name),
    inside the network's ``--ip-range`` if it has one."""
    s = net.range
    used = set(taken) | reserved(net)
    size = s.num_addresses
    if size - len([u for u in used if u in s]) <= 0:
        raise Conflict(f"network {net.name} has no free address left in {s}")
    # search at most the first 2**20 addresses of huge (IPv6) subnets
    span = min(size, 1 << 20)
    start = zlib.crc32(seed.encode()) % span
    base = int(s.network_address)
    for i in range(span):
        ip = ipaddress.ip_address(base + (start + i) % span)
        if ip not in used:
            return ip
    raise Conflict(f"network {net.name} has no free address left in {s}")
