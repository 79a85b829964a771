"""Rule programming: meshnet's iptables backend vs a plain ``iptables-restore``.

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

Uses the ``iptables-restore`` on PATH (the nft variant here).
"""

from __future__ import annotations

import asyncio
import os
import time

from bench.common import Result, median
from meshnet import netns
from meshnet.ipvs.iptables import CommandRunner, IptablesBackend
from meshnet.ipvs.netobjects import net_key
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


def _plain_restore(ns: str, text: str) -> float:
    t0 = time.perf_counter()
    netns.run_cmd(ns, ["iptables-restore", "--noflush"], input=text, text=True, check=True)
    return time.perf_counter() - t0


async def _inline(fn):
    return fn()


def measure(n: int, tag: str) -> dict[str, list[float]]:
    prefix = f"mn-lbdev-b{tag}-"
    sandbox = f"{prefix}ov-{VNI:06x}"
    host = f"{prefix}host"
    out: dict[str, list[float]] = {"full": [], "full_anchor": [], "one": [], "one_anchor": [],
                                   "planner": [], "reload": [], "one_plain": [], "kernel_dnat": [],
                                   "one_python": []}
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
        nets, services, eps = tables(n)
        store = Store(LocalTables("h0"))
        for table, rows in (("networks", nets.values()), ("services", services.values()),
                            ("endpoints", eps)):
            for row in rows:
                store.put(table, row.key if table == "endpoints" else row.name, row, 0)
        gone = next(e for e in eps if e.name == "t0-3")  # a task of s0 on h3 (remote)
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
                t0 = time.perf_counter()
                if change == "delete":
                    store.delete("endpoints", gone.key, 0)
                else:
                    store.put("endpoints", gone.key, gone, 0)
                restoring[0] = 0.0
                loop.run_until_complete(rec.sync(False))
                net_key(rec.last_state)  # the agent's check that VIPs/routes are unchanged
                out["one"].append(time.perf_counter() - t0)
                out["one_python"].append(out["one"][-1] - restoring[0])
                assert [op.ns for op in rec.last_plan] == [sandbox], rec.last_plan
                # the binary alone, the same one-chain text again (the table as it is now)
                out["one_plain"].append(_plain_restore(sandbox, rec.last_plan[0].text))
            store.listeners.remove(rec.note)
            # the kernel alone: nft (no iptables) adds one DNAT rule to a scratch chain of
            # this table; nf_tables re-validates the table on every rule with a jump/NAT
            netns.run_cmd(sandbox, ["nft", "-f", "-"], input="add chain ip nat MN-BENCH\n",
                          text=True, check=True)
            t0 = time.perf_counter()
            netns.run_cmd(sandbox, ["nft", "-f", "-"], text=True, check=True,
                          input="add rule ip nat MN-BENCH ip protocol tcp dnat to 10.9.9.9:80\n")
            out["kernel_dnat"].append(time.perf_counter() - t0)
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


def run() -> list[Result]:
    tag = str(os.getpid() % 100000)
    big = measure(1000, tag + "a")
    small = measure(100, tag + "b")
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
        Result(bench="lb", metric="iptables-restore alone, the same one-chain text: 1,000 vs "
               "100 services", unit="s", meshnet=median(big["one_plain"]),
               anchor_name="at 100 services", anchor=median(small["one_plain"]),
               goal="(the binary's own share of the size dependence)",
               notes=f"meshnet's part of a one-backend change (everything but the "
                     f"iptables-restore it runs, per sample): "
                     f"{median(big['one_python']) * 1000:.2f} ms at 1,000 services, "
                     f"{median(small['one_python']) * 1000:.2f} ms at 100"),
        Result(bench="lb", metric="the kernel alone: nft adds one DNAT rule to this table, "
               "1,000 vs 100 services", unit="s", meshnet=median(big["kernel_dnat"]),
               anchor_name="at 100 services", anchor=median(small["kernel_dnat"]),
               goal="(nf_tables re-validates the whole table on a jump/NAT rule)"),
    ]
    return res


if __name__ == "__main__":
    for r in run():
        print(f"{r.metric}: meshnet {r.meshnet * 1000:.1f} ms, {r.anchor_name} "
              f"{r.anchor * 1000:.1f} ms, ratio {r.ratio:.2f}")
