"""Lifeguard suspicion timer with independent confirmations (notes 8.4).

Design notes
------------
* Sans-IO: a :class:`Suspicion` holds its start time and computes its deadline; the
  core checks ``deadline`` from ``tick(now)``. No timers, no callbacks.
* ``k`` confirmations are wanted (``SuspicionMult - 2``, or 0 when the cluster is too
  small). The timeout starts at ``max`` when ``k >= 1`` (else ``min``) and each new
  confirmation from a distinct accuser (the originator does not count) lowers it to
  ``max - (ln(c + 1) / ln(k + 1)) * (max - min)``, never below ``min``, measured from
  the start. Confirmations beyond ``k`` are ignored.
* The formulas for ``min`` and ``max`` live here too so tests can check them.
"""

from __future__ import annotations

import math


def suspicion_timeout(mult: int, n: int, interval: float) -> float:
    """Minimum suspicion timeout: ``mult * max(1, log10(max(1, n))) * interval``."""
    node_scale = max(1.0, math.log10(max(1.0, float(n))))
    # memberlist truncates nodeScale*1000 to an integer number of milliseconds.
    return mult * math.floor(node_scale * 1000) * interval / 1000


def confirmations_wanted(mult: int, n: int) -> int:
    k = mult - 2
    return 0 if n - 2 < k else k


class Suspicion:
    def __init__(self, from_node: str, k: int, min_timeout: float, max_timeout: float,
                 start: float, incarnation: int) -> None:
        self.k = k
        self.min = min_timeout
        self.max = max_timeout
        self.start = start
        self.incarnation = incarnation
        self.confirmations: set[str] = {from_node}
        self.n = 0
        self.timeout = max_timeout if k >= 1 else min_timeout

    @property
    def deadline(self) -> float:
        return self.start + self.timeout

    def confirm(self, from_node: str) -> bool:
        """Record an independent accuser; True if it was new and counted."""
        if self.n >= self.k or from_node in self.confirmations:
            return False
        self.confirmations.add(from_node)
        self.n += 1
        frac = math.log(self.n + 1) / math.log(self.k + 1)
        self.timeout = max(self.min, self.max - frac * (self.max - self.min))
        return True
