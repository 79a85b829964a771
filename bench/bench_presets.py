"""Gossip presets in simulation: meshnet's default (``swift``) against memberlist's LAN
timings (``lan``, what serf runs), both measured in the same run on the same simulated
cluster (the real sans-IO cores in virtual time, ``meshnet.testing.scale.membership``:
every datagram encoded, delivered after 0.5-1 ms, lost with the given probability;
streams are not lossy), at N=100 and 1,000 with 1 % and 10 % loss.

Per N, loss and preset: a settled cluster idles ``MESHNET_PRESETS_WINDOW`` virtual
seconds (default 30): probes that failed against a live node (false suspicions), false
failures, bytes sent per node per second (UDP + TCP, uncompressed); then one node is
killed at a random phase: time until every other node marks it dead. Real agents against
real serf agents are ``bench.run gossip``.
"""

from __future__ import annotations

import logging
import os

from bench.common import Result
from meshnet.gossip.config import GossipConfig
from meshnet.testing.scale import LAN, membership

WINDOW = float(os.environ.get("MESHNET_PRESETS_WINDOW", "30"))
SWIFT = GossipConfig.swift().replace(enable_compression=False)
ANCHOR = "memberlist LAN timings (lan preset), same simulation"


def run() -> list[Result]:
    logging.getLogger("meshnet").setLevel(logging.ERROR)  # 10 % loss: TCP-fallback notes
    out: list[Result] = []
    for n in (100, 1000):
        for loss in (0.01, 0.10):
            tag = f"N={n}, {loss:.0%} loss"
            seed = n + int(loss * 100)
            s = membership(n, loss, seed, WINDOW, SWIFT)
            m = membership(n, loss, seed, WINDOW, LAN)
            out += [
                Result("presets", f"{tag}: kill -9 marked dead by all, default preset", "s",
                       s["detect_s"], ANCHOR, m["detect_s"], goal="<= 2 s"),
                Result("presets", f"{tag}: false suspicions + failures in {WINDOW:.0f} s",
                       "", s["false_suspicions"] + s["false_failures"] + s["wrong_deaths"],
                       ANCHOR, m["false_suspicions"] + m["false_failures"] + m["wrong_deaths"],
                       goal="0"),
                Result("presets", f"{tag}: membership bytes per node per second", "B/s",
                       s["bytes_node_s"], ANCHOR, m["bytes_node_s"], goal="<= 1.5 x lan"),
            ]
    return out
