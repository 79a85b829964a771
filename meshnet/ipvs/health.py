"""Health checks of this host's tasks: a sans-IO core and a thin asyncio driver.

Core (:class:`HealthCore`, no I/O, no clock): told the targets (local tasks whose service
has a TCP or HTTP check) and fed ``now``; ``due(now)`` returns the checks to start,
``result(...)`` takes their outcome and returns :class:`TaskHealth` records for every
*change* (the agent writes them to the ``health`` table, which gossips them; every host's
planner then drops or restores the task). ``next_deadline()`` is when to call again.

States (Docker's): ``starting`` -> ``healthy`` on the first success; ``retries``
consecutive failures make a task ``unhealthy`` (from ``starting`` or ``healthy``); one
success makes it ``healthy`` again. A check that is not answered within ``timeout`` is a
failure (the driver times out; the core also fails a check left pending past
``timeout`` plus a grace, so a stuck driver cannot freeze a task's state). Checks of a
target start every ``interval`` seconds, measured from the previous start.

Driver (:class:`meshnet.ipvs.health_driver.HealthChecker`): owns the sockets and one timer. A check must connect to
the task's IP from where the load balancer sees it, so its socket is created *inside the
network's sandbox* (or the task's own namespace): a worker thread ``setns``-es into the
namespace, creates a non-blocking socket and returns to its namespace (a socket keeps the
namespace it was created in; the same trick as :func:`meshnet.netns.ipr`); the event loop
then connects and talks over it with ``loop.sock_*``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from meshnet.model import HealthSpec, TaskHealth

State = Literal["starting", "healthy", "unhealthy"]
PENDING_GRACE = 0.5


@dataclass(frozen=True)
class Target:
    network: str
    ip: str
    service: str
    port: int  #: the TCP port checked (the service's first TCP port)
    spec: HealthSpec
    netns: str  #: where to open the socket: the network's sandbox (or the task's netns)

    @property
    def key(self) -> str:
        return f"{self.network}/{self.ip}"


@dataclass(frozen=True)
class Check:
    """Start this check now (an action of the core)."""

    key: str
    kind: Literal["tcp", "http"]
    ip: str
    port: int
    path: str
    timeout: float
    netns: str
    seq: int


@dataclass
class _Track:
    target: Target
    state: State = "starting"
    fails: int = 0
    next_at: float = 0.0
    pending: int = 0  #: seq of the check in flight, 0 if none
    pending_since: float = 0.0
    seq: int = 0


def transition(state: State, ok: bool, fails: int, retries: int) -> State:
    """The whole state machine (``fails`` counts consecutive failures, this one included)."""
    if ok:
        return "healthy"
    if fails >= retries:
        return "unhealthy"
    return state


@dataclass
class HealthCore:
    tracks: dict[str, _Track] = field(default_factory=dict)

    def set_targets(self, targets: Iterable[Target], now: float) -> None:
        """Replace the target set; unchanged targets keep their state and schedule."""
        new = {t.key: t for t in targets if t.spec.kind in ("tcp", "http")}
        for key in list(self.tracks):
            if key not in new:
                del self.tracks[key]
        for key, t in new.items():
            tr = self.tracks.get(key)
            if tr is None or tr.target.service != t.service:
                self.tracks[key] = _Track(t, next_at=now)
            elif tr.target != t:
                tr.target = t

    def expire(self, now: float) -> list[TaskHealth]:
        """Fail checks the driver left unanswered past timeout + grace (call before due)."""
        out = []
        for tr in self.tracks.values():
            if tr.pending and now >= tr.pending_since + tr.target.spec.timeout + PENDING_GRACE:
                out += self._finish(tr, False, "no answer", now)
        return out

    def due(self, now: float) -> list[Check]:
        out = []
        for key, tr in sorted(self.tracks.items()):
            spec = tr.target.spec
            if tr.pending or now < tr.next_at:
                continue
            tr.seq += 1
            tr.pending, tr.pending_since = tr.seq, now
            tr.next_at = max(tr.next_at + spec.interval, now)
            t = tr.target
            out.append(Check(key, spec.kind, t.ip, t.port, spec.path, spec.timeout,  # type: ignore[arg-type]
                             t.netns, tr.seq))
        return out

    def result(self, key: str, seq: int, ok: bool, detail: str, now: float) -> list[TaskHealth]:
        tr = self.tracks.get(key)
        if tr is None or tr.pending != seq:
            return []  # a target removed meanwhile, or a late answer already counted
        return self._finish(tr, ok, detail, now)

    def _finish(self, tr: _Track, ok: bool, detail: str, now: float) -> list[TaskHealth]:
        before = tr.state
        self._record(tr, ok)
        if tr.state == before:
            return []
        t = tr.target
        return [TaskHealth(network=t.network, ip=t.ip, service=t.service,
                           healthy=tr.state == "healthy", checked_at=now,
                           reason=detail or tr.state)]

    def _record(self, tr: _Track, ok: bool) -> None:
        tr.pending = 0
        tr.fails = 0 if ok else tr.fails + 1
        tr.state = transition(tr.state, ok, tr.fails, tr.target.spec.retries)

    def next_deadline(self) -> float | None:
        times = []
        for tr in self.tracks.values():
            if tr.pending:
                times.append(tr.pending_since + tr.target.spec.timeout + PENDING_GRACE)
            else:
                times.append(tr.next_at)
        return min(times) if times else None

    def state(self, key: str) -> State | None:
        tr = self.tracks.get(key)
        return tr.state if tr else None


def targets(node: str, networks, services, endpoints, prefix: str) -> list[Target]:
    """Health-check targets of ``node``: its tasks whose service has a TCP/HTTP check, on
    the service's first TCP port, checked from the network's sandbox."""
    from meshnet.vxlan.state import sandbox_ns

    out = []
    for e in endpoints:
        svc = services.get(e.service) if e.service else None
        if (e.host != node or svc is None or svc.network != e.network
                or e.network not in networks or svc.health.kind == "none"):
            continue
        port = next((p.port for p in svc.ports if p.protocol == "tcp"), None)
        if port is None:
            continue
        out.append(Target(e.network, str(e.ip), svc.name, port, svc.health,
                          sandbox_ns(prefix, networks[e.network].vni)))
    return out
