"""Structured logs: one line per event, ``key=value`` pairs, node and subsystem always set.

    ts=2026-11-27T20:00:00.123Z level=info node=h1 subsys=api msg="api listening" ...
"""

from __future__ import annotations

import logging
import sys
import time


class _Formatter(logging.Formatter):
    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        subsys = record.name.removeprefix("meshnet.") or "agent"
        msg = record.getMessage().replace('"', "'")
        line = (
            f'ts={ts}.{int(record.msecs):03d}Z level={record.levelname.lower()} '
            f'node={self.node} subsys={subsys} msg="{msg}"'
        )
        if record.exc_info:
            line += " exc=" + repr(self.formatException(record.exc_info).splitlines()[-1])
        return line


def setup_logging(node: str, level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(node))
    root = logging.getLogger("meshnet")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
