"""One sync runner per kernel programmer (style rule 4).

Many kicks -> one run; at most one run per ``min_interval``; a full resync every
``full_interval`` even with no kick (repairs anything changed behind meshnet's back); a
failed run is logged once, forces the next run to be full, and is retried after
``retry_interval``. The runner calls ``sync(full: bool)`` in the event loop; the
reconciler itself decides what "full" means (usually: re-observe the kernel).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

SyncFn = Callable[[bool], Awaitable[None]]


@dataclass
class SyncStats:
    runs: int = 0
    full_runs: int = 0
    errors: int = 0
    last_duration: float = 0.0
    total_duration: float = 0.0
    last_error: str = ""


class SyncRunner:
    def __init__(self, name: str, sync: SyncFn, *, min_interval: float = 0.05,
                 full_interval: float = 30.0, retry_interval: float = 1.0,
                 logger: logging.Logger | None = None) -> None:
        self.name = name
        self._sync = sync
        self.min_interval = min_interval
        self.full_interval = full_interval
        self.retry_interval = retry_interval
        self.log = logger or logging.getLogger(f"meshnet.{name}")
        self.stats = SyncStats()
        self._kicked = asyncio.Event()
        self._want_full = True
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()

    def kick(self, full: bool = False) -> None:
        """Ask for a run soon. Cheap; safe to call from any event handler."""
        if full:
            self._want_full = True
        self._idle.clear()
        self._kicked.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"sync-{self.name}")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    @property
    def idle(self) -> bool:
        """No kick pending and the last run finished."""
        return self._idle.is_set()

    async def settled(self, timeout: float = 10.0) -> None:
        """Wait until no kick is pending and the last run finished (for tests and READY)."""
        await asyncio.wait_for(self._idle.wait(), timeout)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        last_full = 0.0
        while True:
            wait = max(0.0, last_full + self.full_interval - loop.time())
            try:
                await asyncio.wait_for(self._kicked.wait(), timeout=wait)
            except TimeoutError:
                self._want_full = True
            self._kicked.clear()
            full = self._want_full
            self._want_full = False
            t0 = time.perf_counter()
            try:
                await self._sync(full)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # logged once here; the next run is full
                self.stats.errors += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                self.log.warning("%s sync failed (%s); retrying with a full sync",
                                 self.name, self.stats.last_error, exc_info=True)
                self._want_full = True
                await asyncio.sleep(self.retry_interval)
                self._kicked.set()
                continue
            dt = time.perf_counter() - t0
            st = self.stats
            st.runs += 1
            st.full_runs += full
            st.last_duration = dt
            st.total_duration += dt
            if full:
                last_full = loop.time()
            if not self._kicked.is_set():
                self._idle.set()
            await asyncio.sleep(self.min_interval)
