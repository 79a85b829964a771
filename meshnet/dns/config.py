"""Typed configuration of the embedded resolver (one frozen dataclass, read in one place).

Design notes
------------
* Times are float seconds, sizes are bytes or entry counts.
* ``DnsConfig()`` is the production default; ``DnsConfig.local()`` is a preset for tests
  (short timeouts, small caches).
* The upstream list itself is not here: it comes from the agent's ``dns_upstreams`` or the
  host's resolv.conf (see :func:`meshnet.dns.forwarder.parse_resolv_conf`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from meshnet.errors import ConfigError


@dataclass(frozen=True, slots=True)
class DnsConfig:
    name_ttl: int = 600
    """TTL of container names, aliases and VIPs (Docker: 600)."""
    task_ttl: int = 5
    """TTL of ``tasks.<svc>`` and dnsrr answers, so that failover is quick."""
    ptr_ttl: int = 600
    """TTL of PTR answers."""
    srv_ttl: int = 5
    """TTL of SRV answers (their targets may be tasks)."""
    edns_udp_size: int = 1232
    """UDP payload size we advertise in our OPT record and the largest UDP answer we
    send, whatever larger size the client advertises (the DNS flag day 2020 value)."""
    attempt_timeout: float = 2.0
    """Forwarding: an upstream that has not answered one exchange in this time is
    marked dead (Docker waits 4 s per upstream)."""
    hedge_after: float = 0.15
    """Forwarding: with no answer after this, the next upstream is asked as well."""
    query_timeout: float = 5.0
    """Forwarding: give up (SERVFAIL to the client) after this."""
    dead_backoff_min: float = 1.0
    """A dead upstream is skipped for this long after its first failure..."""
    dead_backoff_max: float = 30.0
    """...doubling per consecutive failure up to this. When the backoff has passed it is
    probed with a copy of a real query, sent in parallel to a live upstream."""
    max_inflight: int = 10_000
    """Forwarded queries waiting for an upstream (~1 KB each). Beyond it: SERVFAIL at
    once, counted as ``overloaded``. Not a low fixed cap: Docker's was 100, then 1024."""
    cache_entries: int = 10_000
    """Forwarded answers kept (LRU)."""
    cache_bytes: int = 8 * 1024 * 1024
    """Bound on the bytes held by the forwarded-answer cache."""
    cache_max_ttl: int = 300
    """Forwarded answers are cached for min(their TTL, this)."""
    cache_neg_ttl: int = 30
    """Bound on negative (NXDOMAIN/NODATA) caching of forwarded answers."""
    memo_entries: int = 4096
    """Per container scope: exact-query memo size (cleared when full)."""
    udp_batch: int = 64
    """Container UDP: datagrams moved per ``recvmmsg``/``sendmmsg`` call (Linux). 0, or
    where those calls are unavailable: one ``recvfrom``/``sendto`` per datagram."""
    tcp_idle_timeout: float = 10.0
    """A client TCP connection with no complete query for this long is closed."""
    tcp_max_conns: int = 64
    """Client TCP connections per container."""
    include_loopback_upstreams: bool = False
    """Keep loopback resolvers (e.g. systemd-resolved at 127.0.0.53) from resolv.conf.
    127.0.0.11 (ourselves) is always dropped."""

    def __post_init__(self) -> None:
        for f in ("name_ttl", "task_ttl", "ptr_ttl", "srv_ttl", "cache_max_ttl",
                  "cache_neg_ttl"):
            v = getattr(self, f)
            if not isinstance(v, int) or not 0 <= v <= 2**31 - 1:
                raise ConfigError(f"invalid dns {f} {v!r}: must be 0..2147483647 seconds")
        if not 512 <= self.edns_udp_size <= 65535:
            raise ConfigError(f"invalid dns edns_udp_size {self.edns_udp_size}: 512..65535")
        for f in ("attempt_timeout", "hedge_after", "query_timeout", "dead_backoff_min",
                  "dead_backoff_max", "tcp_idle_timeout"):
            if not getattr(self, f) > 0:
                raise ConfigError(f"invalid dns {f} {getattr(self, f)!r}: must be > 0")
        if not isinstance(self.udp_batch, int) or not 0 <= self.udp_batch <= 1024:
            raise ConfigError(f"invalid dns udp_batch {self.udp_batch!r}: must be 0..1024")
        if self.dead_backoff_max < self.dead_backoff_min:
            raise ConfigError("invalid dns dead_backoff_max: smaller than dead_backoff_min")
        for f in ("max_inflight", "cache_entries", "memo_entries", "tcp_max_conns"):
            if getattr(self, f) < 1:
                raise ConfigError(f"invalid dns {f} {getattr(self, f)!r}: must be >= 1")

    @classmethod
    def local(cls) -> DnsConfig:
        """For tests: small caches, short timeouts."""
        return cls(attempt_timeout=0.5, hedge_after=0.05, query_timeout=1.5,
                   cache_entries=64, cache_bytes=64 * 1024, memo_entries=64)

    def replace(self, **changes: object) -> DnsConfig:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
