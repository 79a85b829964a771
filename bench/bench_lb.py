"""Rule programming: meshnet's iptables and nftables backends against what an operator
would run for the same change.

Inside namespaces it creates (``mn-lbdev-b<pid>-*``, removed at the end), for N services
x 10 backends on one network (N = 1,000 and 10,000), each service with one task on each of
10 hosts (so this host, h0, runs one task of every service):

* full sync, as the agent's LB reconciler does it on start: planner from every row ->
  render -> observe -> plan -> write into an empty namespace. Anchor: loading the very
  same ruleset with the plain tool (``iptables-restore`` of the same text; for
  ``--lb nftables``, ``nft -f`` of what ``nft list ruleset`` shows after meshnet's sync).
* one backend changing, end to end as the agent runs it: the endpoint row changes in the
  store (an in-memory ``Store``), then the LB reconciler's partial sync (change notice,
  one row decoded, incremental planner, render, plan against the cached state, the
  write, and the check that no VIP address, ingress link or route changed). Anchor: the
  same change as an operator makes it with the plain tool: ``iptables-restore
  --noflush`` of the one changed chain (the same text meshnet writes), or ``nft`` adding
  and deleting the same elements of the same map (``nft -f`` of ``add element`` /
  ``delete element`` lines), waiting for the tool to exit.
* size independence, shown directly: the same change at 10,000 services against 1,000.
  With iptables part of the cost is the kernel's: nf_tables validates the whole table on
  a commit that adds a rule with a verdict or NAT; that is measured on its own (``nft add
  rule ... accept`` minus ``... counter``) and reported, not subtracted.

Every command is spawned without a ``preexec_fn`` (``netns.run_cmd``): with one, Python
must fork, and a fork copies the page tables of the whole process, a cost that grows
with its memory, i.e. with the number of services.

Each one-backend change starts from a quiet kernel (the previous transaction's deferred
frees done: ``REAPER.settle()`` and 30 ms), as a lone health change would. meshnet's
iptables backend returns when the kernel announces the commit
(``meshnet.ipvs.commitack``); the anchors wait for their process to exit.

Uses the ``iptables-restore`` and ``nft`` on PATH (iptables: the nft variant here).
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
SIZES = (10000, 1000)
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


def _maps(ns: str) -> dict[tuple[str, str], frozenset[str]]:
    """Every map's elements in NS: (table, map) -> {"key : value", ...}."""
    out: dict[tuple[str, str], frozenset[str]] = {}
    text = netns.run_cmd(ns, ["nft", "list", "maps"], text=True, check=True,
                         capture_output=True).stdout
    table = name = ""
    body: list[str] | None = None
    for line in text.splitlines():
        w = line.strip()
        if w.startswith("table "):
            table = w.split()[2]
        elif w.startswith("map "):
            name, body = w.split()[1], None
        elif w.startswith("elements = {"):
            body = [w[len("elements = {"):]]
        elif body is not None and name:
            body.append(w)
        if body is not None and body[-1].endswith("}"):
            joined = " ".join(body).rstrip("}").strip()
            out[(table, name)] = frozenset(e.strip() for e in joined.split(",") if e.strip())
            body, name = None, ""
    return out


def _element_script(have: dict, want: dict) -> str:
    """nft commands taking the maps from ``have`` to ``want``: delete then add elements."""
    lines = []
    for key in sorted(have.keys() | want.keys()):
        old, new = have.get(key, frozenset()), want.get(key, frozenset())
        gone = {e.split(" : ")[0] for e in old - new} - {e.split(" : ")[0] for e in new}
        if gone:
            lines.append(f"delete element ip {key[0]} {key[1]} {{ {', '.join(sorted(gone))} }}")
        changed = list(new - old)
        redo = {e.split(" : ")[0] for e in changed} & {e.split(" : ")[0] for e in old}
        if redo:
            lines.append(f"delete element ip {key[0]} {key[1]} {{ {', '.join(sorted(redo))} }}")
        if changed:
            lines.append(f"add element ip {key[0]} {key[1]} {{ {', '.join(sorted(changed))} }}")
    return "\n".join(lines) + "\n"


def _quiet() -> None:
    """Let the last transaction's deferred work finish (see the module notes)."""
    REAPER.settle()
    time.sleep(0.03)


async def _inline(fn):
    return fn()


def measure(n: int, tag: str, repeat: int = REPEAT) -> dict[str, list[float]]:
    prefix = f"mn-lbdev-b{tag}-"
    sandbox = f"{prefix}ov-{VNI:06x}"
    host = f"{prefix}host"
    out: dict[str, list[float]] = {"full": [], "full_anchor": [], "one": [],
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
        for _ in range(repeat):
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
        n: {"full": [], "full_anchor": [], "one": [], "one_anchor": [], "one_script": [],
            "one_kernel": []} for n in sizes}
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
                # anchor: nft -f of the same ruleset (as nft lists it) into an empty netns
                text = netns.run_cmd(sandbox, ["nft", "list", "ruleset"], text=True,
                                     check=True, capture_output=True).stdout
                scratch = f"{prefix}anchor"
                netns.create(scratch)
                made.append(scratch)
                out[n]["full_anchor"].append(_nft(scratch, text))
                netns.remove(scratch, kill=False)
            for change in ("delete", "put", "delete", "put"):
                for (n, sandbox, _, _, store, gone), rec in zip(setups, recs, strict=True):
                    maps = _maps(sandbox)
                    _quiet()
                    t0 = time.perf_counter()
                    _flip(store, gone, change)
                    loop.run_until_complete(rec.sync(False))
                    net_key(rec.last_state)
                    out[n]["one"].append(time.perf_counter() - t0)
                    ops = rec.last_plan.tables
                    assert [op.ns for op in ops] == [sandbox] and not rec.last_plan.rules, ops
                    out[n]["one_script"].append(float(bool(ops[0].script)))
                    # anchor: the same element change by hand (undo it untimed, redo it
                    # timed: the kernel ends where meshnet left it)
                    before, after = maps, _maps(sandbox)
                    assert before != after, "the change touched no map element"
                    _nft(sandbox, _element_script(after, before))
                    _quiet()
                    out[n]["one_anchor"].append(_nft(sandbox, _element_script(before, after)))
                    assert _maps(sandbox) == after
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
    big_n, small_n = SIZES
    big = measure(big_n, tag + "a", repeat=3)
    small = measure(small_n, tag + "b")
    both = measure_nft(SIZES, tag)
    nbig, nsmall = both[big_n], both[small_n]
    scripts = sum(nbig["one_script"]) + sum(nsmall["one_script"])
    k = {big_n: f"{big_n:,}", small_n: f"{small_n:,}"}
    res = []
    for n, m in ((small_n, small), (big_n, big)):
        res.append(Result(
            bench="lb", metric=f"full sync, {k[n]} services x {BACKENDS} backends",
            unit="s", meshnet=median(m["full"]),
            anchor_name="plain iptables-restore of the same ruleset",
            anchor=median(m["full_anchor"]), goal="full sync <= 1 s at 1,000",
            notes=f"{k[n]} services: reading every row out of the store first: "
                  f"{m['reload'][0]:.3f} s the first time, {median(m['reload'][1:]):.4f} s "
                  "later (the store's decode cache)",
            samples={"meshnet": m["full"], "anchor": m["full_anchor"]}))
        res.append(Result(
            bench="lb", metric=f"one backend changes at {k[n]} services (row -> planner -> "
            "restore of one chain -> commit)", unit="s", meshnet=median(m["one"]),
            anchor_name="iptables-restore --noflush of the same one chain",
            anchor=median(m["one_plain"]), goal="<= 50 ms",
            notes=f"{k[n]} services, iptables: incremental planner "
                  f"{median(m['planner']) * 1000:.2f} ms, meshnet's Python in all "
                  f"{median(m['one_python']) * 1000:.2f} ms, the restore it runs "
                  f"{median(m['one_restore']) * 1000:.2f} ms",
            samples={"meshnet": m["one"], "anchor": m["one_plain"]}))
    res += [
        Result(bench="lb", metric=f"iptables backend, one backend change: {k[big_n]} vs "
               f"{k[small_n]} services", unit="s", meshnet=median(big["one"]),
               anchor_name=f"the same change at {k[small_n]} services",
               anchor=median(small["one"]), goal="ratio ~1 (independent of size)",
               notes="the plain one-chain restore grows as much: "
                     f"{median(big['one_plain']) * 1000:.2f} ms vs "
                     f"{median(small['one_plain']) * 1000:.2f} ms"),
        Result(bench="lb", metric="nf_tables validates the whole table on a commit adding a "
               f"rule with a verdict/NAT (nft: with accept minus without): {k[big_n]} vs "
               f"{k[small_n]} services", unit="s", meshnet=median(big["validation"]),
               anchor_name=f"at {k[small_n]} services", anchor=median(small["validation"]),
               goal="(the kernel's part of the growth; --lb nftables adds no rule)",
               notes=f"nft adding one DNAT rule to this table: "
                     f"{median(big['kernel_dnat']) * 1000:.1f} ms at {k[big_n]} services, "
                     f"{median(small['kernel_dnat']) * 1000:.1f} ms at {k[small_n]}"),
    ]
    for n, m in ((small_n, nsmall), (big_n, nbig)):
        res.append(Result(
            bench="lb", metric=f"--lb nftables: full sync, {k[n]} services x {BACKENDS} "
            "backends", unit="s", meshnet=median(m["full"]),
            anchor_name="nft -f of the same ruleset", anchor=median(m["full_anchor"]),
            goal="full sync <= 1 s at 1,000",
            samples={"meshnet": m["full"], "anchor": m["full_anchor"]}))
        res.append(Result(
            bench="lb", metric=f"--lb nftables: one backend changes at {k[n]} services "
            "(row -> planner -> map elements over netlink)", unit="s",
            meshnet=median(m["one"]),
            anchor_name="nft delete/add element of the same elements in the same map",
            anchor=median(m["one_anchor"]), goal="<= 50 ms",
            notes=f"{k[n]} services, nftables: the netlink transaction "
                  f"{median(m['one_kernel']) * 1000:.2f} ms, meshnet's Python "
                  f"{(median(m['one']) - median(m['one_kernel'])) * 1000:.2f} ms",
            samples={"meshnet": m["one"], "anchor": m["one_anchor"]}))
    res.append(Result(
        bench="lb", metric=f"--lb nftables, one backend change: {k[big_n]} vs {k[small_n]} "
        "services", unit="s", meshnet=median(nbig["one"]),
        anchor_name=f"the same change at {k[small_n]} services", anchor=median(nsmall["one"]),
        goal="ratio ~1 (independent of size)",
        notes=f"changes that needed an nft script (not just map elements): {scripts:.0f} of "
              f"{len(nbig['one']) + len(nsmall['one'])}; the nft CLI's same change: "
              f"{median(nbig['one_anchor']) * 1000:.2f} ms vs "
              f"{median(nsmall['one_anchor']) * 1000:.2f} ms"))
    return res


if __name__ == "__main__":
    for r in run():
        print(f"{r.metric}: meshnet {r.meshnet * 1000:.1f} ms, {r.anchor_name} "
              f"{r.anchor * 1000:.1f} ms, ratio {r.ratio:.2f}")
