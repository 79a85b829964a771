"""Gossip at 1,000 and 5,000 nodes: deterministic simulations (virtual time, one seed).

No box runs 5,000 agents, so this runs the real sans-IO cores (the ``Memberlist`` core
with memberlist's LAN timings, which is what meshnet's ``lan`` preset and ``serf agent``
run, and the ``Tables`` core with its ``lan`` config) on the in-memory fabrics of
``meshnet.testing``: every datagram is encoded, delivered after 0.5-1 ms (membership)
or 1-10 ms (tables) and decoded; each is lost with the given probability. Streams
(push/pull, the TCP fallback ping) are not lossy.

Per N and loss rate:

* membership: a settled cluster (every node knows every other; push/pulls spread over
  memberlist's scaled interval, as in a long-running cluster) runs ``MESHNET_SIM_WINDOW``
  virtual seconds (default 60): false suspicions (probes that failed against a live
  node), false failures, bytes sent per node per second (UDP + TCP, uncompressed); then
  one node is killed: time until every other node marks it dead.
* tables: every node holds every host's VTEP row (as in a long-running cluster); one
  network written on one node, time until every node holds it (p99 over nodes and all);
  bytes per node per second of the tables layer over a quarter of the window, starting
  6 virtual seconds after the nodes came up: the up-syncs of the start (whole tables,
  a few per node) are still in it, so it is an upper bound of the idle figure (a
  digest per node per period: ~20 bytes per owner every 270 s at N=5,000).

Nothing here is measured on the other side, so every row is a goal, not a comparison
(``bench.run presets`` measures meshnet's default against memberlist's LAN timings in the
same simulation, ``bench.run gossip`` real agents against real serf agents). Where a
published model of memberlist/serf gives a figure at the same N, loss and timings, the
goal quotes it: serf's convergence simulator model (serf.io/docs/internals/simulator;
logistic infection with contact rate fanout/N x (1 - loss) x 0.5 per 0.2 s round, time to
99.99 %), memberlist's minimum suspicion timeout (SuspicionMult x log10(N) x
ProbeInterval; the maximum is 6x) and the simulator's "estimated max bandwidth"
(2 x 1400 B x fanout / interval).
"""

from __future__ import annotations

import logging
import math
import os
import time

from bench.common import Result
from meshnet.gossip.suspicion import suspicion_timeout
from meshnet.testing.scale import LAN, membership, tables

WINDOW = float(os.environ.get("MESHNET_SIM_WINDOW", "60"))
SIZES = [int(x) for x in os.environ.get("MESHNET_SIM_SIZES", "1000,5000").split(",")]
GOAL = "goal (no anchor measured; lan preset)"
LOSSES = [float(x) for x in os.environ.get("MESHNET_SIM_LOSSES", "0.01,0.1").split(",")]


def serf_model_convergence(n: int, loss: float, interval: float = 0.2, fanout: int = 3,
                           target: float = 0.9999) -> float:
    """Seconds to ``target`` in serf's convergence simulator model (its own formula)."""
    contact = fanout / n * (1 - loss) * 0.5
    rounds = 0
    while True:
        infected = n / (1 + (n + 1) * math.exp(-contact * n * rounds)) / n
        if infected >= target or rounds >= 1000:
            return rounds * interval
        rounds += 1


def run() -> list[Result]:
    logging.getLogger("meshnet").setLevel(logging.ERROR)  # 10 % loss: TCP-fallback notes
    out: list[Result] = []
    for n in SIZES:
        for loss in LOSSES:
            tag = f"N={n}, {loss:.0%} loss"
            t0 = time.monotonic()
            m = membership(n, loss, n + int(loss * 100), WINDOW)
            t = tables(n, loss, n + int(loss * 100), WINDOW / 4)
            wall = time.monotonic() - t0
            model = serf_model_convergence(n, loss)
            minimum = suspicion_timeout(LAN.suspicion_mult, n, LAN.probe_interval)
            out += [
                Result("sim", f"{tag}: one change on every node, p99 over nodes", "s",
                       t["p99_s"], GOAL, 0,
                       goal=f"<= 1 s (serf's simulator model: {model:.1f} s to 99.99 %)",
                       notes=f"{tag}: every node after {t['all_s']:.2f} s; simulated in "
                             f"{wall:.0f} s of wall time"),
                Result("sim", f"{tag}: kill -9 marked dead by all", "s", m["detect_s"],
                       GOAL, 0, goal=f"near memberlist's minimum suspicion timeout, "
                                     f"{minimum:.1f} s (the maximum is 6x)"),
                Result("sim", f"{tag}: false suspicions in {WINDOW:.0f} s", "",
                       m["false_suspicions"], GOAL, 0, goal="0 below 10 % loss"),
                Result("sim", f"{tag}: false failures in {WINDOW:.0f} s (+ wrong deaths after "
                              "the kill)", "", m["false_failures"] + m["wrong_deaths"],
                       GOAL, 0, goal="0"),
                Result("sim", f"{tag}: membership bytes per node per second", "B/s",
                       m["bytes_node_s"], GOAL, 0,
                       goal=f"O(1) in N (serf's simulator max: {2 * 1400 * 3 / 0.2:.0f} B/s)"),
                Result("sim", f"{tag}: tables idle bytes per node per second", "B/s",
                       t["idle_bytes_node_s"], GOAL, 0, goal="O(1) in N"),
            ]
    return out


if __name__ == "__main__":
    for r in run():
        print(r.metric, round(r.meshnet, 3), r.unit, "|", r.anchor_name, round(r.anchor, 3))
