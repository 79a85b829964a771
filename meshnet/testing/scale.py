"""Large-cluster scenarios on the simulated fabrics (shared by tests and bench/bench_sim).

Both run the real sans-IO cores in virtual time from one seed: ``membership`` the
``Memberlist`` core with memberlist's LAN timings (uncompressed: pure-Python LZW would
dominate the wall time), ``tables`` the ``Tables`` core with its ``lan`` config.
"""

from __future__ import annotations

import math
import random

from meshnet.gossip.config import GossipConfig
from meshnet.gossip.member import meshnet_meta
from meshnet.gossip.state import NodeState
from meshnet.gossip.tables import TableConfig, Tables
from meshnet.testing.fabric import Fabric
from meshnet.testing.tablesim import settled

LAN = GossipConfig.lan().replace(enable_compression=False)


def membership(n: int, loss: float, seed: int, window: float,
               config: GossipConfig = LAN) -> dict[str, float]:
    """A settled cluster of ``n`` cores (memberlist's LAN preset unless ``config``) idles
    for ``window`` virtual seconds (false suspicions/failures, bytes per node per
    second), then one is killed: ``detect_s`` is when the last live node marks it dead."""
    f = Fabric(seed=seed, loss=loss)
    names = [f"n{i:05d}" for i in range(n)]
    for name in names:
        f.add(name, config, meta=meshnet_meta())
    f.seed_full_view()
    f.run_for(2.0)  # every node past its first staggered probe
    cores = [x.core for x in f.nodes.values()]
    susp0 = sum(c.metrics["probe.failed"] for c in cores)
    fail0 = sum(c.metrics["suspect.timeout"] for c in cores)
    b0 = f.udp_bytes + f.tcp_bytes
    f.run_for(window)
    out = {
        "false_suspicions": sum(c.metrics["probe.failed"] for c in cores) - susp0,
        "false_failures": sum(c.metrics["suspect.timeout"] for c in cores) - fail0,
        "bytes_node_s": (f.udp_bytes + f.tcp_bytes - b0) / n / window,
    }
    victim = names[n // 2]
    f.run_for(random.Random(seed).uniform(0.0, 1.0))  # kill at any phase of a round
    f.kill(victim)
    others = [f.nodes[x].core for x in names if x != victim]

    def dead_everywhere() -> bool:
        return all(c._ms.nodes[victim].state in (NodeState.DEAD, NodeState.LEFT)
                   for c in others)

    took = f.run_until_true(dead_everywhere, 300, step=0.1)
    out["detect_s"] = math.inf if took is None else took
    out["wrong_deaths"] = sum(
        1 for c in others for r in c._ms.nodes.values()
        if r.name != victim and r.state == NodeState.DEAD)
    return out


def tables(n: int, loss: float, seed: int, window: float) -> dict[str, float]:
    """``n`` tables cores holding every host's VTEP row idle for ``window`` (bytes per node
    per second); then one network is written on one node: when each node has it."""
    cfg = TableConfig.lan()
    sim = settled(n, cfg, seed=seed, loss=loss)
    # A long-running cluster: every node holds every host's VTEP row (loaded as from the
    # durable copy, so nothing is gossiped for it), which the anti-entropy then carries.
    rows = []
    for name in sim.names:
        scratch = Tables(name, cfg, random.Random(0), 0.0)
        scratch.put("vteps", name, name.encode(), 0.0)
        rows += scratch.rows()
    for t in sim.nodes.values():
        t.restore(rows, 1, sim.now)
    sim.run(sim.now + 5.0)
    sim.reset_stats()
    t0 = sim.now
    sim.run(t0 + window)
    idle = (sim.stats["udp_bytes"] + sim.stats["tcp_bytes"]) / n / (window)
    writer = sim.names[n // 3]
    sim.put(writer, "networks", "net1", b"vni=4097")
    start, seen = sim.now, {}
    while len(seen) < n and sim.now - start < 30:
        sim.run(sim.now + 0.01)
        for name, t in sim.nodes.items():
            if name not in seen and t.get("networks", "net1") is not None:
                seen[name] = sim.now - start
    times = sorted(seen.values()) + [math.inf] * (n - len(seen))
    return {"p99_s": times[min(n - 1, int(n * 0.99))], "all_s": times[-1],
            "idle_bytes_node_s": idle}
