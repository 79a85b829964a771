"""Packet capture at a trace's hops: one AF_PACKET socket per (namespace, interface).

Each socket is opened inside its namespace (the calling thread setns()es in, opens, and
returns; the socket keeps its namespace), with a kernel BPF filter attached *before* it
is bound, so it never sees a frame that is not the trace's. Reading is one blocking
loop over all sockets with a deadline: captures always stop by themselves. At most
``MAX_FRAMES`` frames are kept per point.
"""

from __future__ import annotations

import ctypes
import logging
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from meshnet import netns
from meshnet.trace.frames import Packet, classify, innermost, parse_frame
from meshnet.trace.model import Seen

log = logging.getLogger("meshnet.trace")

ETH_P_ALL = 0x0003
SO_ATTACH_FILTER = 26
MAX_FRAMES = 200


@contextmanager
def in_netns(ns: str | None) -> Iterator[None]:
    """This thread inside namespace ``ns`` for the block (None: where it is)."""
    if ns is None:
        yield
        return
    with netns.joined(ns):
        yield


@dataclass(frozen=True)
class Point:
    """Where to capture: hop name, namespace (None: the agent's own), interface, filter."""

    name: str  #: "src", "ingress", "sandbox", "underlay", "task"
    ns: str | None
    iface: str
    bpf: str

    @property
    def label(self) -> str:
        return f"{self.iface}" if self.ns is None else f"{self.iface} in {self.ns}"


@dataclass
class _Open:
    point: Point
    sock: socket.socket | None
    error: str = ""
    frames: list[tuple[float, bytes]] = field(default_factory=list)


def _attach(sock: socket.socket, expr: str) -> None:
    from scapy.arch.common import compile_filter

    prog = compile_filter(expr, linktype=1)  # DLT_EN10MB: every point is Ethernet
    fprog = struct.pack("HL", prog.bf_len, ctypes.addressof(prog.bf_insns.contents))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def open_point(p: Point) -> socket.socket:
    with in_netns(p.ns):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # protocol 0: nothing yet
    try:
        _attach(sock, p.bpf)
        sock.bind((p.iface, ETH_P_ALL))  # the name resolves in the socket's namespace
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class Capture:
    """Open -> run(until) -> summaries(); ``stop`` ends ``run`` early. Thread-safe for
    exactly that: ``run`` in a worker thread, ``stop`` from anywhere."""

    def __init__(self, host: str, points: list[Point], marker: int, proto: str) -> None:
        self.host = host
        self.marker = marker
        self.proto = proto
        self.points = [_Open(p, None) for p in points]
        self._stop = threading.Event()

    def open(self) -> None:
        for o in self.points:
            try:
                o.sock = open_point(o.point)
            except (OSError, ValueError) as exc:
                o.error = f"cannot capture on {o.point.label}: {exc}"[:120]
                log.info("trace: %s", o.error)

    def stop(self) -> None:
        self._stop.set()

    def run(self, until: float) -> None:
        """Read until the wall clock reaches ``until`` or ``stop()``."""
        socks = {o.sock.fileno(): o for o in self.points if o.sock is not None}
        while socks and not self._stop.is_set():
            left = until - time.time()
            if left <= 0:
                break
            ready, _, _ = select.select(list(socks), [], [], min(left, 0.05))
            for fd in ready:
                o = socks[fd]
                assert o.sock is not None
                while True:
                    try:
                        data = o.sock.recv(65535)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError as exc:  # the interface went away
                        o.error = f"capture on {o.point.label} failed: {exc}"[:120]
                        socks.pop(fd)
                        break
                    if len(o.frames) < MAX_FRAMES:
                        o.frames.append((time.time(), data))

    def close(self) -> None:
        for o in self.points:
            if o.sock is not None:
                o.sock.close()
                o.sock = None

    def summaries(self) -> list[Seen]:
        return [summarize(self.host, o.point, o.frames, self.marker, self.proto, o.error)
                for o in self.points]

    def write_pcaps(self, directory: str, trace: str) -> list[str]:
        from scapy.layers.l2 import Ether
        from scapy.utils import wrpcap

        os.makedirs(directory, exist_ok=True)
        out = []
        for o in self.points:
            if not o.frames:
                continue
            pkts = []
            for ts, raw in o.frames:
                pkt = Ether(raw)
                pkt.time = ts
                pkts.append(pkt)
            path = os.path.join(directory, f"trace-{trace}-{self.host}-{o.point.name}-"
                                           f"{o.point.iface}.pcap")
            wrpcap(path, pkts)
            out.append(path)
        return out


def summarize(host: str, point: Point, frames: list[tuple[float, bytes]], marker: int,
              proto: str, error: str = "") -> Seen:
    """Count probe and reply packets among captured frames and describe the first of
    each (pure)."""
    probe = reply = 0
    first: dict[str, Packet] = {}
    for _, raw in frames:
        p = parse_frame(raw)
        if p is None:
            continue
        kind = classify(p, marker, proto)
        if kind == "probe":
            probe += 1
        elif kind == "reply":
            reply += 1
        else:
            continue
        first.setdefault(kind, p)

    def outer(p: Packet | None) -> tuple[str, str, int, int] | None:
        if p is None or p.vni is None:
            return None
        return (p.src, p.dst, p.dport, p.vni)

    fp, fr = first.get("probe"), first.get("reply")
    return Seen(point=point.name, host=host, iface=point.label, probe=probe, reply=reply,
                first_probe=fp.summary()[:120] if fp else "",
                first_reply=fr.summary()[:120] if fr else "", outer=outer(fp),
                reply_outer=outer(fr), inner_dst=innermost(fp).dst if fp else "",
                reply_flags=innermost(fr).flags if fr else "", error=error)
