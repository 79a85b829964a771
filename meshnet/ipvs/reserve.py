"""Published ports are reserved on the host: a bound (not listening) socket per port, so
nothing else on the host can take it while meshnet publishes it. Traffic never reaches
these sockets: the host's nat table DNATs the port first, and filter ``MESHNET-INPUT``
refuses what was not DNATed."""

from __future__ import annotations

import logging
import socket

log = logging.getLogger("meshnet.ipvs")


def _bind(port: int, proto: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
    try:
        s.bind(("0.0.0.0", port))
    except OSError:
        s.close()
        raise
    return s


def port_free(port: int, proto: str) -> bool:
    try:
        _bind(port, proto).close()
        return True
    except OSError:
        return False


class PortReservations:
    def __init__(self) -> None:
        self.socks: dict[tuple[int, str], socket.socket] = {}
        self.failed: dict[tuple[int, str], str] = {}

    def sync(self, want: set[tuple[int, str]]) -> None:
        for key in [k for k in self.socks if k not in want]:
            self.socks.pop(key).close()
        for key in sorted(want - set(self.socks)):
            try:
                self.socks[key] = _bind(*key)
                self.failed.pop(key, None)
            except OSError as exc:
                if key not in self.failed:
                    log.warning("cannot reserve published port %d/%s on this host: %s",
                                key[0], key[1], exc)
                self.failed[key] = str(exc)
        for key in [k for k in self.failed if k not in want]:
            del self.failed[key]

    def close(self) -> None:
        self.sync(set())
