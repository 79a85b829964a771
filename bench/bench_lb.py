"""Rule programming: meshnet's iptables and nftables backends vs a plain
``iptables-restore``.

Inside namespaces it creates (``mn-lbdev-b<pid>-*``, removed at the end), for N services
x 10 backends on one network (N = 1,000 and 100), each service with one task on each of 10
hosts (so this host, h0, runs one task of every service):

* full sync, as the agent's LB reconciler does it on start: planner from every row ->
  render -> observe (``iptables-save``) -> plan -> one ``iptables-restore --noflush`` into
  an empty namespace, vs a plain ``iptables-restore`` of the very same ruleset text (the
  anchor: the binary alone, no Python);
* one backend changing, end to end as the agent runs it: the endpoint row changes in the
  store (an in-memory ``Store``), then the LB reconciler's partial sync: its change
  notice, decoding that one row, the incremental planner, render (per-service cache),
  plan against the cached state, the restore of only the changed chains, and the check
  that no VIP address, ingress link or route changed (``net_key``: then the agent leaves
  those kernel objects alone until the next full sync). Compared
  with the same plain restore of the whole ruleset (what one does without partial
  syncs). At 100 services it should take the same time as at 1,000. The planner's share
  (rows -> LbState) is also reported in the notes.

The full sync starts from the rows decoded; reading every row out of the store
(``refresh(full=True)``) is timed apart and reported in the notes (the first read decodes
every row, later ones hit the store's decode cache).

Every command is spawned without a ``preexec_fn`` (``netns.run_cmd``): with one, Python
must fork, and a fork copies the page tables of the whole process, a cost that grows
with its memory, i.e. with the number of services (it was most of the 1,000-vs-100 gap).

Each one-backend change starts from a quiet kernel (the previous transaction's deferred
frees done: ``REAPER.settle()`` and 30 ms), as a lone health change would. meshnet
returns when the kernel announces the commit (``meshnet.ipvs.commitack``); the plain
``iptables-restore`` of the same one-chain text, waiting for the process to exit, is
timed beside it. What still grows with the table is measured apart: nf_tables validates
the whole table on a commit that adds a rule with a verdict or NAT, estimated as the
time of ``nft add rule ... accept`` minus ``nft add rule ... counter`` (no verdict) in
the same table.

The same full sync and one-backend change are then timed with ``--lb nftables``
(:mod:`meshnet.ipvs.nftrules`: a backend change is a change of one small map's elements,
sent over netlink; no rule changes, so nf_tables validates nothing), beside the same
iptables anchors: four changes after each full sync (the first of them also frees the full
sync's plan, ~11,000 encoded elements at 1,000 services, ~1 ms).

Uses the ``iptables-restore`` on PATH (the nft variant here).
"""

from __future__ import annotations

import asyncio
import os
import time

from bench.common import Result, median
from meshnet import netns
from meshnet.ipvs.commitack import REAPER
from meshnet.ipvs.iptables import CommandRunner, IptablesBackend
from meshnet.ipvs.netobjects import net_key
from meshnet.ipvs.nftables import NftBackend
from meshnet.ipvs.reconciler import LbReconciler
from meshnet.model import Endpoint, Network, PortSpec, Service
from meshnet.store import LocalTables, Store
from meshnet.vxlan.state import mac_for

BACKENDS = 10
REPEAT = 5
VNI = 0x100


def tables(n: int, drop: int = -1):
    net = Network(name="a", vni=VNI, subnet="10.0.0.0/16")
    services, eps = {}, []
    base = int(net.subnet.network_address)
    for s in range(n):
        name = f"s{s}"
        vip = net.subnet.network_address + 2 + s
        services[name] = Service(name=name, network="a", vip=vip, ports=(PortSpec(80),))
        for b in range(BACKENDS):
            if s == 0 and b == drop:
                continue
            ip = type(vip)(base + 4096 + s * BACKENDS + b)
            eps.append(Endpoint(network="a", ip=ip, mac=mac_for(ip), host=f"h{b}",
                                name=f"t{s}-{b}", service=name, netns="x"))
    return {"a": net}, services, eps


def _store(n: int) -> tuple[Store, Endpoint]:
    """An in-memory store with the tables of ``n`` services, and the task that changes (a
    task of s0 on h3: remote)."""
    nets, services, eps = tables(n)
    store = Store(LocalTables("h0"))
    for table, rows in (("networks", nets.values()), ("services", services.values()),
                        ("endpoints", eps)):
        for row in rows:
            store.put(table, row.key if table == "endpoints" else row.name, row, 0)
    return store, next(e for e in eps if e.name == "t0-3")


def _flip(store: Store, task: Endpoint, change: str) -> None:
    """The task goes ("delete") or comes back ("put"): one row, as gossip would write it."""
    if change == "delete":
        store.delete("endpoints", task.key, 0)
    else:
        store.put("endpoints", task.key, task, 0)


def _plain_restore(ns: str, text: str) -> float:
    t0 = time.perf_counter()
    netns.run_cmd(ns, ["iptables-restore", "--noflush"], input=text, text=True, check=True)
    return time.perf_counter() - t0


def _nft(ns: str, text: str) -> float:
    t0 = time.perf_counter()
    netns.run_cmd(ns, ["nft", "-f", "-"], input=text, text=True, check=True)
    return time.perf_counter() - t0


def _quiet() -> None:
    """Let the last transaction's deferred work finish (see the module notes)."""
    REAPER.settle()
    time.sleep(0.03)


async def _inline(fn):
    return fn()


def measure(n: int, tag: str) -> dict[str, list[float]]:
    prefix = f"mn-lbdev-b{tag}-"
    sandbox = f"{prefix}ov-{VNI:06x}"
    host = f"{prefix}host"
    out: dict[str, list[float]] = {"full": [], "full_anchor": [], "one": [], "one_anchor": [],
                                   "planner": [], "reload": [], "one_plain": [], "kernel_dnat": [],
                                   "one_python": [], "one_restore": [], "validation": []}
    loop = asyncio.new_event_loop()
    try:
        netns.create(host)
        runner = CommandRunner(prefix, host_ns=host)
        restoring = [0.0]  # seconds spent in iptables-restore (to split meshnet's part)
        real_restore = runner.restore

        def timed_restore(ns: str, text: str) -> None:
            t = time.perf_counter()
            try:
                real_restore(ns, text)
            finally:
                restoring[0] += time.perf_counter() - t
        runner.restore = timed_restore  # type: ignore[method-assign]
        be = IptablesBackend(runner)
        store, gone = _store(n)
        for _ in range(REPEAT):
            netns.create(sandbox)
            # full sync, as the agent's reconciler runs it on start: reload every row
            # (timed apart: "reload"), plan from the rows, observe, one restore
            rec = LbReconciler("h0", store, be, prefix, _inline)
            t0 = time.perf_counter()
            rec.refresh(full=True)
            out["reload"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            loop.run_until_complete(rec.sync(True))
            out["full"].append(time.perf_counter() - t0)
            full_text = next(op.text for op in rec.last_plan if op.ns == sandbox)
            want_of = rec.want

            def timed_want(full: bool = False, want_of=want_of) -> object:
                t = time.perf_counter()
                try:
                    return want_of(full)
                finally:
                    out["planner"].append(time.perf_counter() - t)
            rec.want = timed_want  # type: ignore[method-assign]
            # one backend of one service changes, and back: table change -> kernel
            for change in ("delete", "put"):
                _quiet()
                t0 = time.perf_counter()
                _flip(store, gone, change)
                restoring[0] = 0.0
                loop.run_until_complete(rec.sync(False))
                net_key(rec.last_state)  # the agent's check that VIPs/routes are unchanged
                out["one"].append(time.perf_counter() - t0)
                out["one_python"].append(out["one"][-1] - restoring[0])
                out["one_restore"].append(restoring[0])
                assert [op.ns for op in rec.last_plan] == [sandbox], rec.last_plan
                # the binary alone, the same one-chain text again (the table as it is
                # now), waiting for its exit
                _quiet()
                out["one_plain"].append(_plain_restore(sandbox, rec.last_plan[0].text))
            store.listeners.remove(rec.note)
            # the kernel alone: nft (no iptables) adds one DNAT rule to a scratch chain of
            # this table; nf_tables re-validates the table on every rule with a jump/NAT
            netns.run_cmd(sandbox, ["nft", "-f", "-"], input="add chain ip nat MN-BENCH\n",
                          text=True, check=True)
            _quiet()
            out["kernel_dnat"].append(_nft(sandbox, "add rule ip nat MN-BENCH ip protocol "
                                                    "tcp dnat to 10.9.9.9:80\n"))
            for _ in range(3):  # validation: the same rule with a verdict and without
                _quiet()
                bare = _nft(sandbox, "add rule ip nat MN-BENCH ip daddr 10.9.9.8 counter\n")
                _quiet()
                verdict = _nft(sandbox, "add rule ip nat MN-BENCH ip daddr 10.9.9.8 counter "
                                        "accept\n")
                out["validation"].append(verdict - bare)
            netns.remove(sandbox, kill=False)
            # anchor: the same ruleset text, plain iptables-restore, into an empty namespace
            netns.create(sandbox)
            out["full_anchor"].append(_plain_restore(sandbox, full_text))
            # anchor for one change: the plain restore of the whole ruleset again
            out["one_anchor"].append(_plain_restore(sandbox, full_text))
            netns.remove(sandbox, kill=False)
    finally:
        loop.close()
        for ns in (sandbox, host):
            netns.remove(ns, kill=False)
    return out


def _timed(fn, into: list[float]):
    def timed(*a, **kw):
        t = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            into.append(time.perf_counter() - t)
    return timed


def measure_nft(sizes: tuple[int, ...], tag: str) -> dict[int, dict[str, list[float]]]:
    """The same full sync and one-backend change with ``--lb nftables``, for every size
    at once: one agent-like reconciler per size, each with its own namespaces, all alive
    in this process, their changes taken in turn. So the sizes share one process (heap,
    caches) and differ only in their table: what is compared is what the number of
    services costs a change, not how much memory the benchmark process happens to hold."""
    out: dict[int, dict[str, list[float]]] = {
        n: {"full": [], "one": [], "one_script": [], "one_kernel": []} for n in sizes}
    loop = asyncio.new_event_loop()
    made: list[str] = []
    try:
        setups = []
        for n in sizes:
            prefix = f"mn-lbdev-n{tag}{n}-"
            host = f"{prefix}host"
            netns.create(host)
            made.append(host)
            be = NftBackend(CommandRunner(prefix, host_ns=host))
            be.nft.elements = _timed(be.nft.elements, out[n]["one_kernel"])  # type: ignore
            store, gone = _store(n)
            setups.append((n, f"{prefix}ov-{VNI:06x}", prefix, be, store, gone))
        for _ in range(REPEAT):
            recs = []
            for n, sandbox, prefix, be, store, _gone in setups:
                netns.create(sandbox)
                made.append(sandbox)
                rec = LbReconciler("h0", store, be, prefix, _inline)
                rec.refresh(full=True)
                k = len(out[n]["one_kernel"])
                t0 = time.perf_counter()
                loop.run_until_complete(rec.sync(True))
                out[n]["full"].append(time.perf_counter() - t0)
                del out[n]["one_kernel"][k:]  # changes only, not the full sync's write
                recs.append(rec)
            for change in ("delete", "put", "delete", "put"):
                for (n, sandbox, _, _, store, gone), rec in zip(setups, recs, strict=True):
                    _quiet()
                    t0 = time.perf_counter()
                    _flip(store, gone, change)
                    loop.run_until_complete(rec.sync(False))
                    net_key(rec.last_state)
                    out[n]["one"].append(time.perf_counter() - t0)
                    ops = rec.last_plan.tables
                    assert [op.ns for op in ops] == [sandbox] and not rec.last_plan.rules, ops
                    out[n]["one_script"].append(float(bool(ops[0].script)))
            for (_, sandbox, _, _, store, _g), rec in zip(setups, recs, strict=True):
                store.listeners.remove(rec.note)
                netns.remove(sandbox, kill=False)
    finally:
        loop.close()
        for ns in made:
            netns.remove(ns, kill=False)
    return out


def run() -> list[Result]:
    tag = str(os.getpid() % 100000)
    big = measure(1000, tag + "a")
    small = measure(100, tag + "b")
    both = measure_nft((1000, 100), tag)
    nbig, nsmall = both[1000], both[100]
    scripts = sum(nbig["one_script"]) + sum(nsmall["one_script"])
    res = [
        Result(bench="lb", metric=f"full sync, 1,000 services x {BACKENDS} backends "
               f"(median of {REPEAT})", unit="s", meshnet=median(big["full"]),
               anchor_name="plain iptables-restore of the same ruleset",
               anchor=median(big["full_anchor"]), goal="full sync <= 1 s",
               notes=f"in the agent a full sync also reads every row out of the store: "
                     f"{big['reload'][0]:.2f} s at 1,000 services the first time (every row "
                     f"decoded), {median(big['reload'][1:]):.3f} s on later full syncs (the "
                     f"store's decode cache); {small['reload'][0]:.3f} s / "
                     f"{median(small['reload'][1:]):.4f} s at 100",
               samples={"meshnet": big["full"], "anchor": big["full_anchor"]}),
        Result(bench="lb", metric="one backend changes at 1,000 services (partial sync, "
               "table change -> planner -> restore)",
               unit="s", meshnet=median(big["one"]),
               anchor_name="plain iptables-restore of the whole ruleset",
               anchor=median(big["one_anchor"]), goal="<= 50 ms, independent of size",
               notes=f"of which the incremental planner (changed row -> LbState): "
                     f"{median(big['planner']) * 1000:.2f} ms at 1,000 services, "
                     f"{median(small['planner']) * 1000:.2f} ms at 100",
               samples={"meshnet": big["one"], "anchor": big["one_anchor"]}),
        Result(bench="lb", metric="one backend changes at 100 services (partial sync, "
               "table change -> planner -> restore)",
               unit="s", meshnet=median(small["one"]),
               anchor_name="plain iptables-restore of the whole ruleset",
               anchor=median(small["one_anchor"]), goal="same as at 1,000 services",
               samples={"meshnet": small["one"], "anchor": small["one_anchor"]}),
        Result(bench="lb", metric="partial sync: 1,000 services vs 100 services",
               unit="s", meshnet=median(big["one"]), anchor_name="same change at 100 services",
               anchor=median(small["one"]), goal="ratio ~1 (independent of total size)"),
        Result(bench="lb", metric="partial sync minus nf_tables' table validation "
               "(estimated): 1,000 vs 100 services", unit="s",
               meshnet=median(big["one"]) - median(big["validation"]),
               anchor_name="at 100 services",
               anchor=median(small["one"]) - median(small["validation"]),
               goal="ratio ~1 (meshnet's part and iptables-restore's are independent of size)",
               notes=f"meshnet's part of a one-backend change (everything but the "
                     f"iptables-restore it runs, per sample): "
                     f"{median(big['one_python']) * 1000:.2f} ms at 1,000 services, "
                     f"{median(small['one_python']) * 1000:.2f} ms at 100"),
        Result(bench="lb", metric="nf_tables validates the whole table on a commit adding a "
               "rule with a verdict/NAT (nft: rule with accept minus without): 1,000 vs 100 "
               "services", unit="s", meshnet=median(big["validation"]),
               anchor_name="at 100 services", anchor=median(small["validation"]),
               goal="(the kernel's share of the size dependence; IPVS has none)",
               notes=f"nft adding one DNAT rule to this table: "
                     f"{median(big['kernel_dnat']) * 1000:.1f} ms at 1,000 services, "
                     f"{median(small['kernel_dnat']) * 1000:.1f} ms at 100"),
        Result(bench="lb", metric="the restore of a one-backend change, 1,000 services: "
               "returning at the commit event (commitack)", unit="s",
               meshnet=median(big["one_restore"]),
               anchor_name="plain iptables-restore of the same text, waiting for its exit",
               anchor=median(big["one_plain"]),
               goal="(the exit waits ~14 ms for the freed rules' RCU grace period)",
               notes=f"the same restore at 100 services: "
                     f"{median(small['one_restore']) * 1000:.1f} ms vs "
                     f"{median(small['one_plain']) * 1000:.1f} ms",
               samples={"meshnet": big["one_restore"], "anchor": big["one_plain"]}),
        Result(bench="lb", metric=f"--lb nftables: full sync, 1,000 services x {BACKENDS} "
               f"backends (median of {REPEAT})", unit="s", meshnet=median(nbig["full"]),
               anchor_name="plain iptables-restore of the same ruleset (iptables form)",
               anchor=median(big["full_anchor"]), goal="full sync <= 1 s",
               notes=f"--lb nftables full sync at 100 services: {median(nsmall['full']):.3f} s",
               samples={"meshnet": nbig["full"], "anchor": big["full_anchor"]}),
        Result(bench="lb", metric="--lb nftables: one backend changes at 1,000 services "
               "(partial sync, table change -> planner -> netlink elements)", unit="s",
               meshnet=median(nbig["one"]),
               anchor_name="plain iptables-restore of the whole ruleset",
               anchor=median(big["one_anchor"]), goal="<= 50 ms, independent of size",
               notes=f"--lb nftables: changes that needed an nft script (not just map "
                     f"elements): {scripts:.0f} of {len(nbig['one']) + len(nsmall['one'])}",
               samples={"meshnet": nbig["one"], "anchor": big["one_anchor"]}),
        Result(bench="lb", metric="--lb nftables: one backend change, 1,000 services vs 100",
               unit="s", meshnet=median(nbig["one"]), anchor_name="same change at 100 services",
               anchor=median(nsmall["one"]), goal="ratio ~1 (independent of total size)",
               notes=f"of which the netlink transaction (send -> kernel's ack): "
                     f"{median(nbig['one_kernel']) * 1000:.2f} ms at 1,000 services, "
                     f"{median(nsmall['one_kernel']) * 1000:.2f} ms at 100 (nf_tables finds "
                     f"the map by name in a list of the table's sets: the part that grows); "
                     f"the rest (meshnet's Python): "
                     f"{(median(nbig['one']) - median(nbig['one_kernel'])) * 1000:.2f} ms vs "
                     f"{(median(nsmall['one']) - median(nsmall['one_kernel'])) * 1000:.2f} ms",
               samples={"meshnet": nbig["one"], "anchor": nsmall["one"]}),
    ]
    return res


if __name__ == "__main__":
    for r in run():
        print(f"{r.metric}: meshnet {r.meshnet * 1000:.1f} ms, {r.anchor_name} "
              f"{r.anchor * 1000:.1f} ms, ratio {r.ratio:.2f}")
