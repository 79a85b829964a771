"""The DNS programmer rebuilds the records view only when a table it is made of changed
(an idle agent's periodic full sync does not), and always after such a change."""

from __future__ import annotations

import asyncio

from meshnet.dns.config import DnsConfig
from meshnet.dns.programmer import DnsProgrammer
from meshnet.dns.server import DnsServer
from meshnet.model import Network, Service
from meshnet.store import LocalTables, Store


async def _inline(fn):
    return fn()


def test_view_rebuilt_only_after_a_relevant_change():
    store = Store(LocalTables("h1"))
    server = DnsServer(DnsConfig.local())
    prog = DnsProgrammer("h1", store, server, _inline)
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(prog.sync(True))
        assert prog.view_builds == 1
        for _ in range(3):  # periodic full syncs, nothing changed
            loop.run_until_complete(prog.sync(True))
        assert prog.view_builds == 1
        net = Network(name="app", vni=0x100, subnet="10.5.0.0/24")
        store.put("networks", "app", net, 1)
        store.put("services", "web", Service(name="web", network="app",
                                             vip=net.subnet.network_address + 2), 2)
        loop.run_until_complete(prog.sync(False))
        assert prog.view_builds == 2
        assert "app" in server.responder.view.networks  # the new view holds the network
        loop.run_until_complete(prog.sync(True))
        assert prog.view_builds == 2
    finally:
        loop.close()


def test_a_failed_view_build_is_tried_again(monkeypatch):
    import pytest

    from meshnet.dns import records

    store = Store(LocalTables("h1"))
    prog = DnsProgrammer("h1", store, DnsServer(DnsConfig.local()), _inline)
    real = records.from_store
    calls = []

    def flaky(s):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug")
        return real(s)

    monkeypatch.setattr(records, "from_store", flaky)
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(RuntimeError):
            loop.run_until_complete(prog.sync(True))
        loop.run_until_complete(prog.sync(True))  # the runner's retry / next full sync
        assert prog.view_builds == 1 and len(calls) == 2
    finally:
        loop.close()
