import asyncio

from meshnet.ipvs.iptables import IptablesBackend
from meshnet.ipvs.reconciler import LbReconciler, removed_udp_backends
from meshnet.ipvs.rules import HOST
from meshnet.store import LocalTables, Store
from meshnet.vxlan.state import sandbox_ns
from tests.ipvs.fakeipt import FakeIptables
from tests.ipvs.tables import LB_IPS, NETS, svc, task

NS = sandbox_ns("mn-", 0x100)


async def inline(fn):
    return fn()


def setup():
    store = Store(LocalTables("h1"))
    store.put("networks", "a", NETS["a"], 0)
    store.put("services", "dns", svc("dns", vip="10.0.0.101", ports=("53/udp",)), 0)
    for ip, host in (("10.0.0.2", "h1"), ("10.0.0.3", "h2")):
        e = task(ip, host, "dns")
        store.put("endpoints", e.key, e, 0)
    fake = FakeIptables([HOST, NS])
    flushed = []
    rec = LbReconciler("h1", store, IptablesBackend(fake), "mn-", inline,
                       lb_ips=lambda: LB_IPS,
                       conntrack=lambda ns, args: flushed.append((ns, args)) or 0)
    return store, fake, rec, flushed


def test_sync_adopts_then_is_quiet_and_flushes_removed_udp_backends():
    store, fake, rec, flushed = setup()
    asyncio.run(rec.sync(full=False))
    n = len(fake.restores)
    assert n == 1
    asyncio.run(rec.sync(full=False))
    asyncio.run(rec.sync(full=False))
    assert len(fake.restores) == n and rec.last_plan == []
    # a restarted agent adopts what is there: nothing rewritten
    _, _, rec2, _ = setup()
    rec2.backend = IptablesBackend(fake)
    asyncio.run(rec2.sync(full=False))
    assert len(fake.restores) == n
    # a task goes away: one partial restore, and its UDP conntrack entries are flushed
    store.delete("endpoints", "a/10.0.0.3", 0)
    asyncio.run(rec.sync(full=False))
    assert len(fake.restores) == n + 1
    assert flushed == [(NS, ["-D", "-p", "udp", "--orig-dst", "10.0.0.101",
                             "--orig-port-dst", "53", "--reply-src", "10.0.0.3"])]
    # a periodic full sync rewrites everything, once
    asyncio.run(rec.sync(full=True))
    assert len(fake.restores) == n + 2


def test_missing_sandbox_is_retried():
    store, fake, rec, _ = setup()
    del fake.ns[NS]
    asyncio.run(rec.sync(full=False))
    assert rec.skipped == [NS] and rec.have is None
    from tests.ipvs.fakeipt import empty_tables
    fake.ns[NS] = empty_tables()
    asyncio.run(rec.sync(full=False))
    assert rec.skipped == [] and any(c.startswith("MESHNET-SVC-") for c in fake.chains(NS))


def test_removed_udp_backends():
    store, fake, rec, _ = setup()
    old = rec.want()
    store.delete("endpoints", "a/10.0.0.3", 0)
    assert removed_udp_backends(old, rec.want()) == [(NS, "10.0.0.101", 53, "10.0.0.3")]
    assert removed_udp_backends(rec.want(), old) == []
    store.delete("endpoints", "a/10.0.0.2", 0)  # the last local task: the sandbox goes
    assert removed_udp_backends(old, rec.want()) == []
