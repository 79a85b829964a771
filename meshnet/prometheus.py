"""Prometheus text exposition of the agent's metrics (``--metrics ADDR:PORT``).

Series (all prefixed ``meshnet_``):

* ``members{state}``: cluster members by state;
* ``gossip_messages_total{direction,type}``, ``gossip_dropped_total{reason}``,
  ``table_messages_total{direction}``, ``table_dropped_total``, ``table_entries``;
* ``dns_queries_total{transport}``, ``dns_forwarded_total``, ``dns_responses_total{rcode}``,
  ``dns_query_duration_seconds`` (histogram), ``dns_dropped_total``;
* ``reconcile_runs_total{programmer}``, ``reconcile_errors_total{programmer}``,
  ``reconcile_duration_seconds_total{programmer}``;
* ``lb_backends{service,health}``: load-balancing backends by health.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any


def _esc(v: object) -> str:
    return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: dict[str, object]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_esc(v)}"' for k, v in labels.items()) + "}"


def _num(v: float) -> str:
    if v == math.inf:
        return "+Inf"
    return repr(float(v)) if isinstance(v, float) else str(v)


class Exposition:
    """Families are written whole (HELP, TYPE, then all their samples), as the text
    format requires, whatever order the samples were added in."""

    def __init__(self) -> None:
        self.families: dict[str, tuple[str, str, list[str]]] = {}

    def family(self, name: str, kind: str, help_: str) -> None:
        self.families.setdefault(name, (kind, help_, []))

    def sample(self, name: str, value: float, family: str | None = None,
               **labels: object) -> None:
        self.families[family or name][2].append(
            f"meshnet_{name}{_labels(labels)} {_num(value)}")

    def text(self) -> str:
        lines = []
        for name, (kind, help_, samples) in self.families.items():
            lines += [f"# HELP meshnet_{name} {help_}", f"# TYPE meshnet_{name} {kind}",
                      *samples]
        return "\n".join(lines) + "\n"


def render(m: dict[str, Any]) -> str:
    x = Exposition()
    x.family("members", "gauge", "Cluster members by state.")
    for state in ("alive", "suspect", "failed", "left"):
        x.sample("members", m.get("members", {}).get(state, 0), state=state)
    gossip = m.get("gossip", {})
    x.family("gossip_messages_total", "counter", "Gossip messages by direction and type.")
    x.family("gossip_dropped_total", "counter", "Gossip input dropped, by reason.")
    for key, value in sorted(gossip.items()):
        head, _, rest = key.partition(".")
        if head in ("sent", "recv") and rest:
            x.sample("gossip_messages_total", value, direction=head, type=rest)
        elif head == "drop" and rest:
            x.sample("gossip_dropped_total", value, reason=rest)
    tables = m.get("tables", {})
    x.family("table_messages_total", "counter", "Replicated-table messages.")
    x.sample("table_messages_total", tables.get("sent_msgs", 0), direction="sent")
    x.sample("table_messages_total", tables.get("recv_msgs", 0), direction="recv")
    x.family("table_dropped_total", "counter", "Malformed table messages dropped.")
    x.sample("table_dropped_total", tables.get("dropped", 0))
    x.family("table_entries", "gauge", "Live replicated-table entries.")
    x.sample("table_entries", tables.get("entries", 0))
    _dns(x, m.get("dns"))
    x.family("reconcile_runs_total", "counter", "Reconciler runs.")
    x.family("reconcile_errors_total", "counter", "Reconciler runs that failed.")
    x.family("reconcile_duration_seconds_total", "counter", "Time spent reconciling.")
    for prog, st in sorted(m.get("reconcile", {}).items()):
        x.sample("reconcile_runs_total", st["runs"], programmer=prog)
        x.sample("reconcile_errors_total", st["errors"], programmer=prog)
        x.sample("reconcile_duration_seconds_total", st["seconds_total"], programmer=prog)
    x.family("lb_backends", "gauge", "Load-balancing backends by health.")
    for svc, counts in sorted(m.get("lb_backends", {}).items()):
        for health in ("healthy", "unhealthy"):
            x.sample("lb_backends", counts.get(health, 0), service=svc, health=health)
    return x.text()


def _dns(x: Exposition, dns: dict[str, Any] | None) -> None:
    x.family("dns_queries_total", "counter", "DNS queries received.")
    x.family("dns_forwarded_total", "counter", "DNS queries forwarded upstream.")
    x.family("dns_dropped_total", "counter", "DNS queries dropped (malformed, overload).")
    x.family("dns_responses_total", "counter", "DNS responses by rcode.")
    x.family("dns_query_duration_seconds", "histogram", "DNS answer latency.")
    dns = dns or {}
    x.sample("dns_queries_total", dns.get("queries_udp", 0), transport="udp")
    x.sample("dns_queries_total", dns.get("queries_tcp", 0), transport="tcp")
    x.sample("dns_forwarded_total", dns.get("forwarded", 0))
    x.sample("dns_dropped_total", dns.get("dropped", 0))
    for rcode, n in sorted(dns.get("rcodes", {}).items()):
        x.sample("dns_responses_total", n, rcode=rcode)
    _histogram(x, "dns_query_duration_seconds", dns.get("latency_buckets", []),
               dns.get("latency_seconds_total", 0.0))


def _histogram(x: Exposition, name: str, buckets: Iterable[tuple[float, int]],
               total_seconds: float) -> None:
    """Cumulative buckets (the last one is +Inf), _count and _sum."""
    cumulative = 0
    have_inf = False
    for upper, count in buckets:
        cumulative += count
        have_inf = have_inf or upper == math.inf
        x.sample(f"{name}_bucket", cumulative, family=name, le=_num(upper))
    if not have_inf:
        x.sample(f"{name}_bucket", cumulative, family=name, le="+Inf")
    x.sample(f"{name}_count", cumulative, family=name)
    x.sample(f"{name}_sum", float(total_seconds), family=name)
