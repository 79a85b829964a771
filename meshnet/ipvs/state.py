"""The desired load-balancing state as plain, frozen data, and the names meshnet owns.

Produced by :func:`meshnet.ipvs.planner.desired` (pure) and consumed by a backend
(:mod:`meshnet.ipvs.iptables` or :mod:`meshnet.ipvs.ipvs`). Nothing here does I/O.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import weakref
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

from meshnet.model import IPAddress, Protocol

#: The per-network sandbox end of the ingress link, and the host end (same pair on every
#: link: each link is its own point-to-point segment, so the addresses never meet).
INGRESS_HOST_ADDR = ipaddress.IPv4Address("169.254.77.1")
INGRESS_SANDBOX_ADDR = ipaddress.IPv4Address("169.254.77.2")
INGRESS_SANDBOX_IFNAME = "ing0"


def ingress_link_name(vni: int) -> str:
    """Host side of the veth pair from the host namespace into a network's sandbox."""
    return f"mn-ing{vni:06x}"


@dataclass(frozen=True)
class LbConfig:
    """Tunables of the load balancer (one per agent; ``LbConfig()`` is the default).

    ``masq_mark``: the one packet-mark bit meshnet uses to ask for SNAT (kube-proxy uses
    0x4000 in the host namespace; ours lives mostly in sandboxes, but avoid it anyway).
    ``fwmark_base``: first IPVS firewall mark; marks are ``fwmark_base + n`` (Docker: 256).
    ``affinity_seconds``: how long ``--affinity client-ip`` pins a client (kube-proxy: 3 h).
    """

    masq_mark: int = 0x8000
    fwmark_base: int = 0x100
    fwmark_count: int = 0x7F00  #: marks fwmark_base .. fwmark_base+count-1 are meshnet's
    affinity_seconds: int = 10800


@dataclass(frozen=True, order=True)
class Backend:
    """One healthy task behind a virtual service: where the packet is DNATed to."""

    ip: IPAddress
    port: int
    local: bool = False  #: the task runs on this host
    port_name: str = field(default="", compare=False)  #: its sandbox bridge port if local

    def __str__(self) -> str:
        return f"{self.ip}:{self.port}" if self.ip.version == 4 else f"[{self.ip}]:{self.port}"


@dataclass(frozen=True)
class VirtualService:
    """VIP:port/proto of one service on one network, and its healthy backends (sorted)."""

    network: str
    service: str
    vip: IPAddress
    port: int
    protocol: Protocol
    backends: tuple[Backend, ...] = ()
    affinity: bool = False

    @cached_property
    def key(self) -> str:  # cached: the renderer looks services up by it on every sync
        return f"{self.network}/{self.service}/{self.port}/{self.protocol}"


@dataclass(frozen=True)
class SbDelta:
    """See :attr:`SandboxLb.delta`. The base is held weakly: hints never keep old states
    alive (each would keep its own base, and so on)."""

    base: weakref.ref
    changed: tuple[int, ...]

    def of(self, prev: object) -> tuple[int, ...] | None:
        """The changed positions if ``prev`` is the base, else None."""
        return self.changed if prev is not None and self.base() is prev else None


@dataclass(frozen=True)
class SandboxLb:
    """Everything the load balancer puts in one network's sandbox on this host.

    ``vips`` go on ``br0`` as /32 (so containers' ARP for a VIP is answered by the bridge
    and the packet is routed, hence DNATed, in the sandbox); ``lb_ip`` (this host's own
    address on the network, when allocated) goes on ``br0`` as /32 too, with a local
    bridge FDB entry for its MAC so remote hosts can send replies to it; ``ingress``
    means the host namespace forwards published ports into this sandbox over the
    ingress link, so the service chains SNAT that traffic to ``lb_ip``.
    """

    network: str
    vni: int
    ns: str
    gateway: IPAddress
    lb_ip: IPAddress | None = None
    services: tuple[VirtualService, ...] = ()
    ingress: bool = False
    #: a hint, not part of the value: this sandbox equals ``delta.base()`` but for the
    #: services at ``delta.changed`` (same count, same positions). Consumers that rendered
    #: or compared the base look at those positions only, so one change costs the same
    #: at 100 and at 1,000 services. None (or a base that is gone): compare everything.
    delta: SbDelta | None = field(default=None, compare=False, repr=False)
    #: ``tuple(vs.vip for vs in services)``, carried over when a change keeps every VIP
    vip_seq: tuple[IPAddress, ...] | None = field(default=None, compare=False, repr=False)

    @property
    def vips(self) -> tuple[IPAddress, ...]:
        return tuple(sorted({s.vip for s in self.services}, key=lambda a: (a.version, a)))

    @property
    def hairpin_ports(self) -> tuple[str, ...]:
        """Bridge ports of local backends: they need hairpin mode so a task can reach
        its own service's VIP and be picked itself."""
        return tuple(sorted({b.port_name for s in self.services for b in s.backends
                             if b.local and b.port_name}))


PublishKind = Literal["mesh", "local", "reject"]


@dataclass(frozen=True)
class PublishedRule:
    """A published port on this host.

    * ``mesh``: DNAT to ``vip:target``; routed over the ingress link into the network's
      sandbox, which load-balances to a task anywhere (source SNATed to the LB address).
    * ``local``: DNAT straight to one of ``backends`` (local tasks) with no SNAT, so the
      task sees the client's address. Needs the task's reply to come back through the host
      namespace (its default route via mn_gwbridge, or via the sandbox).
    * ``reject``: bound here but no usable task: refuse (TCP reset / ICMP unreachable)
      rather than let the port-reservation socket accept.
    """

    published: int
    protocol: Protocol
    service: str
    network: str
    vni: int
    kind: PublishKind
    target: int
    vip: IPAddress | None = None
    backends: tuple[Backend, ...] = ()
    affinity: bool = False

    @property
    def key(self) -> str:
        return f"{self.published}/{self.protocol}"


@dataclass(frozen=True)
class HostLb:
    """What the load balancer puts in the host namespace: published ports, the routes
    that steer their DNATed traffic into sandboxes (destination -> ingress link)."""

    published: tuple[PublishedRule, ...] = ()

    @property
    def routes(self) -> tuple[tuple[IPAddress, str], ...]:
        """(destination /32, ingress link name) for every DNAT destination."""
        out: set[tuple[IPAddress, str]] = set()
        for p in self.published:
            link = ingress_link_name(p.vni)
            if p.kind == "mesh" and p.vip is not None:
                out.add((p.vip, link))
            elif p.kind == "local":
                out.update((b.ip, link) for b in p.backends)
        return tuple(sorted(out, key=lambda r: (r[0].version, r[0], r[1])))

    @property
    def ingress_links(self) -> tuple[int, ...]:
        """VNIs whose sandbox needs an ingress link from the host namespace."""
        return tuple(sorted({p.vni for p in self.published if p.kind != "reject"}))

    @property
    def reserved(self) -> tuple[tuple[int, Protocol], ...]:
        """(port, proto) the agent should hold a reservation socket on."""
        return tuple(sorted({(p.published, p.protocol) for p in self.published}))


@dataclass(frozen=True)
class LbState:
    """The whole desired load-balancing state of one host."""

    sandboxes: tuple[SandboxLb, ...] = ()
    host: HostLb = field(default_factory=HostLb)
    warnings: tuple[str, ...] = ()

    def sandbox(self, ns: str) -> SandboxLb | None:
        return next((s for s in self.sandboxes if s.ns == ns), None)

    def services(self) -> list[tuple[str, VirtualService]]:
        return [(sb.ns, vs) for sb in self.sandboxes for vs in sb.services]


def short_hash(*parts: object) -> str:
    """16 base32 characters (80 bits) of SHA-256: kube-proxy's chain-name scheme."""
    h = hashlib.sha256("\0".join(str(p) for p in parts).encode()).digest()
    return base64.b32encode(h[:10]).decode()
