"""A small synthetic cluster and dnslib helpers shared by the DNS tests."""

from __future__ import annotations

import dnslib

from meshnet.dns.records import RecordsView
from meshnet.model import Endpoint, Network, PortSpec, Service, TaskHealth

MAC = "02:00:00:00:00:01"


def cluster(unhealthy: tuple[str, ...] = ()) -> RecordsView:
    """front (10.0.1.0/24), back (10.0.2.0/24, internal), v6net (fd00::/64).

    front: web (vip 10.0.1.100, 80/tcp 443/tcp) with tasks web.1..3; api (dnsrr, 8080/tcp)
    with tasks api.1..2; containers db (alias database), lonely.
    back: cache (10.0.2.5), web.1 also attached (10.0.2.6, same task).
    v6net: six (fd00::5)
    """
    nets = [Network("front", 1, "10.0.1.0/24"), Network("back", 2, "10.0.2.0/24", internal=True),
            Network("v6net", 3, "fd00::/64")]
    eps = [
        Endpoint("front", "10.0.1.11", MAC, "h1", "web.1", service="web"),
        Endpoint("front", "10.0.1.12", MAC, "h2", "web.2", service="web"),
        Endpoint("front", "10.0.1.13", MAC, "h3", "web.3", service="web"),
        Endpoint("front", "10.0.1.21", MAC, "h1", "api.1", service="api"),
        Endpoint("front", "10.0.1.22", MAC, "h2", "api.2", service="api"),
        Endpoint("front", "10.0.1.30", MAC, "h1", "db", aliases=("database", "PG")),
        Endpoint("front", "10.0.1.31", MAC, "h1", "lonely"),
        Endpoint("back", "10.0.2.5", MAC, "h1", "cache"),
        Endpoint("back", "10.0.2.6", MAC, "h1", "web.1"),
        Endpoint("v6net", "fd00::5", MAC, "h1", "six"),
    ]
    svcs = [
        Service("web", "front", vip="10.0.1.100", ports=(PortSpec(80), PortSpec(443))),
        Service("api", "front", mode="dnsrr", ports=(PortSpec(8080),)),
    ]
    ips = {str(e.ip): e for e in eps}
    health = [TaskHealth("front", ip, ips[ip].service, healthy=False) for ip in unhealthy]
    return RecordsView.build(nets, eps, svcs, health)


def query(name: str, qtype: str = "A", edns: int | None = None, qid: int = 0x1234) -> bytes:
    q = dnslib.DNSRecord.question(name, qtype)
    q.header.id = qid
    if edns is not None:
        q.add_ar(dnslib.EDNS0(udp_len=edns))
    return bytes(q.pack())


def parse(data: bytes) -> dnslib.DNSRecord:
    return dnslib.DNSRecord.parse(data)


def rcode(rec: dnslib.DNSRecord) -> str:
    return dnslib.RCODE[rec.header.rcode]


def rdatas(rec: dnslib.DNSRecord) -> list[str]:
    return [str(r.rdata) for r in rec.rr]


FRONT = frozenset({"front"})
BACK = frozenset({"back"})
BOTH = frozenset({"front", "back"})
