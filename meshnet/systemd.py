"""systemd's notify protocol (sd_notify), without libsystemd.

``Notifier(NOTIFY_SOCKET, WATCHDOG_USEC)`` is built by the CLI from the environment
(the only place that reads it); with no socket it does nothing. The agent sends
``READY=1`` once it holds a full view of the cluster and its data plane is programmed,
``STATUS=...`` lines as it goes, ``WATCHDOG=1`` every half watchdog period from the event
loop (so a wedged loop gets the agent restarted), and ``STOPPING=1`` on shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import socket

log = logging.getLogger("meshnet.systemd")


class Notifier:
    def __init__(self, address: str | None, watchdog_usec: str | None = None) -> None:
        self.address = address or ""
        if self.address.startswith("@"):
            self.address = "\0" + self.address[1:]
        try:
            self.watchdog = int(watchdog_usec) / 1e6 if watchdog_usec else 0.0
        except ValueError:
            self.watchdog = 0.0
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def notify(self, *fields: str) -> bool:
        if not self.address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.sendto("\n".join(fields).encode(), self.address)
            return True
        except OSError as exc:
            log.warning("cannot notify systemd at %r: %s", self.address, exc)
            return False

    def start_watchdog(self) -> None:
        if self.address and self.watchdog > 0:
            self._task = asyncio.create_task(self._beat(), name="watchdog")

    async def _beat(self) -> None:
        while True:
            self.notify("WATCHDOG=1")
            await asyncio.sleep(self.watchdog / 2)

    def stop(self) -> None:
        if self._task:
            self._task.cancel()
