"""Embedded DNS resolver at 127.0.0.11 in every attached container.

Modules (cores first; the cores import no asyncio/socket/time, see tests/dns/test_imports):

==============  ===========================================================================
config.py       ``DnsConfig``: TTLs, sizes, forwarding timeouts, cache bounds
records.py      ``RecordsView``: names/services/tasks/SRV/PTR per network, built from the
                tables (pure, rebuilt whole on every change); ``ScopedView`` per container
wire.py         query header + first question parser, answer splicing, truncation
responder.py    ``Responder.handle(query, scope, transport, now) -> Answer|Forward|Drop``
forwarder.py    ``Forwarder``: upstream health, ID rewriting, coalescing, TTL cache (LRU)
server.py       ``DnsServer``: the asyncio adapter (container sockets, upstream sockets)
udpio.py        container UDP hot path: memo hits answered in the reader, recvmmsg/sendmmsg
sandbox.py      sockets inside a container namespace, the NAT redirect, resolv.conf
==============  ===========================================================================

Kernel objects per container namespace: two UDP/TCP sockets on 127.0.0.11 (random ports),
nat chains ``MESHNET-DNS-OUTPUT`` / ``MESHNET-DNS-POSTROUTING`` (2 rules each) and one
jump to each. Per agent: one connected UDP socket per upstream, in the agent's namespace.
Nothing in the host namespace's nat table.

How the agent uses it::

    server = DnsServer(DnsConfig(), upstreams, view=records.from_store(store))
    await server.start()
    # on every table change (networks, endpoints, services, health), rate-limited:
    server.set_view(records.from_store(store))
    # per container (namespace name or /proc/PID/ns/net), attached to networks N:
    socks = await loop.run_in_executor(None, sandbox.open_sockets, ns)
    await loop.run_in_executor(None, sandbox.apply_nat, ns, socks.udp_port, socks.tcp_port)
    handle = await server.serve(socks.udp, socks.tcp, frozenset(N))
    handle.scope = frozenset(N2)          # after attach/detach
    await handle.close()                  # when the container goes
    sandbox.write_resolv_conf(name)       # named namespaces: /etc/netns/NAME/resolv.conf
"""

from meshnet.dns.config import DnsConfig
from meshnet.dns.forwarder import Forwarder, Upstream, parse_resolv_conf, parse_upstream
from meshnet.dns.records import RecordsView, from_store
from meshnet.dns.responder import Answer, Drop, Forward, Responder

__all__ = ["Answer", "DnsConfig", "Drop", "Forward", "Forwarder", "RecordsView", "Responder",
           "Upstream", "from_store", "parse_resolv_conf", "parse_upstream"]
