"""Shared pieces of the benchmark runner: results and timing."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field


@dataclass
class Result:
    bench: str  #: benchmark module name
    metric: str  #: what was measured
    unit: str
    meshnet: float
    anchor_name: str
    anchor: float
    goal: str = ""  #: the issue's goal, in words
    higher_is_better: bool = False
    notes: str = ""
    samples: dict[str, list[float]] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """meshnet / anchor."""
        return self.meshnet / self.anchor if self.anchor else float("inf")

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "ratio": self.ratio}


def timed(fn: Callable[[], object], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def median(xs: list[float]) -> float:
    return statistics.median(xs)
