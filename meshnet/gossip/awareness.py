"""Lifeguard local health awareness (memberlist ``awareness.go``, from the notes 8.3).

Design notes
------------
* One integer, the *health score*, clamped to ``[0, max_multiplier - 1]``.
  +1 when we have to refute a claim about ourselves, +1 (or the number of missing
  nacks) after a failed probe, -1 after any successful probe.
* Only the probe interval (and with it the TCP-fallback deadline) is scaled:
  ``interval x (score + 1)``. A node whose own network or CPU is struggling thereby
  probes less often and gives peers more time, instead of accusing them.
"""

from __future__ import annotations


class Awareness:
    def __init__(self, max_multiplier: int) -> None:
        if max_multiplier < 1:
            raise ValueError("max_multiplier must be >= 1")
        self._max = max_multiplier
        self.score = 0

    def apply_delta(self, delta: int) -> None:
        self.score = min(max(self.score + delta, 0), self._max - 1)

    def scale(self, timeout: float) -> float:
        return timeout * (self.score + 1)
