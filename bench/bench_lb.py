"""Rule programming: meshnet's iptables backend vs a plain ``iptables-restore``.

Inside namespaces it creates (``mn-lbdev-b<pid>-*``, removed at the end), for N services
x 10 backends on one network (N = 1,000 and 100), each service with one task on each of 10
hosts (so this host, h0, runs one task of every service):

* full sync: planner -> render -> plan -> one ``iptables-restore --noflush`` into an empty
  namespace, vs a plain ``iptables-restore`` of the very same ruleset text (the anchor:
  the binary alone, no Python);
* one backend changing (partial sync: render with the per-service cache, plan against the
  cached state, restore only the changed chains) vs the same plain restore of the whole
  ruleset (what one does without partial syncs). At 100 services the partial sync should
  take the same time as at 1,000. The planner (tables -> LbState, O(endpoints), pure
  Python) is timed separately and reported in the notes: it is not rule programming.

Uses the ``iptables-restore`` on PATH (the nft variant here).
"""

from __future__ import annotations

import os
import subprocess
import time

from bench.common import Result, median
from meshnet import netns
from meshnet.ipvs.iptables import CommandRunner, IptablesBackend, Observed
from meshnet.ipvs.planner import desired
from meshnet.model import Endpoint, Network, PortSpec, Service
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
    subprocess.run(["iptables-restore", "--noflush"], input=text, text=True, check=True,
                   preexec_fn=lambda: netns.enter(ns))
    return time.perf_counter() - t0


def measure(n: int, tag: str) -> dict[str, list[float]]:
    prefix = f"mn-lbdev-b{tag}-"
    sandbox = f"{prefix}ov-{VNI:06x}"
    host = f"{prefix}host"
    out: dict[str, list[float]] = {"full": [], "full_anchor": [], "one": [], "one_anchor": [],
                                   "planner": []}
    try:
        netns.create(host)
        be = IptablesBackend(CommandRunner(prefix, host_ns=host))
        nets, services, eps = tables(n)
        _, _, eps_changed = tables(n, drop=3)  # a task on h3 (remote) goes away
        for _ in range(REPEAT):
            netns.create(sandbox)
            # full sync: the whole pipeline from the tables
            t0 = time.perf_counter()
            want = desired("h0", nets, services, eps, {}, [], prefix)
            ops = be.plan(want, Observed(), full=True)
            have, _ = be.apply(ops, Observed())
            out["full"].append(time.perf_counter() - t0)
            full_text = next(op.text for op in ops if op.ns == sandbox)
            # one backend of one service changes, and back
            for e in (eps_changed, eps):
                t0 = time.perf_counter()
                want = desired("h0", nets, services, e, {}, [], prefix)
                out["planner"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                ops = be.plan(want, have)
                have, _ = be.apply(ops, have)
                out["one"].append(time.perf_counter() - t0)
            netns.remove(sandbox, kill=False)
            # anchor: the same ruleset text, plain iptables-restore, into an empty namespace
            netns.create(sandbox)
            out["full_anchor"].append(_plain_restore(sandbox, full_text))
            # anchor for one change: the plain restore of the whole ruleset again
            out["one_anchor"].append(_plain_restore(sandbox, full_text))
            netns.remove(sandbox, kill=False)
    finally:
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
               samples={"meshnet": big["full"], "anchor": big["full_anchor"]}),
        Result(bench="lb", metric="one backend changes at 1,000 services (partial sync)",
               unit="s", meshnet=median(big["one"]),
               anchor_name="plain iptables-restore of the whole ruleset",
               anchor=median(big["one_anchor"]), goal="<= 50 ms, independent of size",
               notes=f"planner (tables -> LbState) adds {median(big['planner']) * 1000:.0f} ms "
                     f"at 1,000 services, {median(small['planner']) * 1000:.0f} ms at 100",
               samples={"meshnet": big["one"], "anchor": big["one_anchor"]}),
        Result(bench="lb", metric="one backend changes at 100 services (partial sync)",
               unit="s", meshnet=median(small["one"]),
               anchor_name="plain iptables-restore of the whole ruleset",
               anchor=median(small["one_anchor"]), goal="same as at 1,000 services",
               samples={"meshnet": small["one"], "anchor": small["one_anchor"]}),
        Result(bench="lb", metric="partial sync: 1,000 services vs 100 services",
               unit="s", meshnet=median(big["one"]), anchor_name="same change at 100 services",
               anchor=median(small["one"]), goal="ratio ~1 (independent of total size)"),
    ]
    return res


if __name__ == "__main__":
    for r in run():
        print(f"{r.metric}: meshnet {r.meshnet * 1000:.1f} ms, {r.anchor_name} "
              f"{r.anchor * 1000:.1f} ms, ratio {r.ratio:.2f}")
