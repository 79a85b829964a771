"""Run ``iptables-restore`` (nft variant) and return when the kernel has committed.

Why not simply wait for the process: a commit that deletes rules (every chain rewrite
flushes the old rules) leaves them to be freed after an RCU grace period, and a netfilter
netlink socket that closes inside that window waits for it: the kernel's
``NETLINK_URELEASE`` handler flushes nf_tables' deferred destroy work. iptables-restore
closes its socket as it exits, so waiting for the exit adds that wait, about 14 ms here,
to every one-chain change (16 ms of a one-backend change at 100 services; 4 ms without).

How: before the spawn, a netlink socket in the target namespace joins the nf_tables
event group. Every commit broadcasts ``NFT_MSG_NEWGEN`` carrying the committing
process's pid, after the whole batch is in place. :func:`run_acked` returns once it has
seen one such message from its child per ``COMMIT`` line; the child's exit and the
socket's close are left to a background :class:`Reaper`. The exit status stays the
authority whenever the events cannot say: the child exits first (a failed commit:
status and stderr are read), the event queue overflowed (``ENOBUFS``, a large restore),
the pid never shows up (another pid namespace), or a message does not parse; then it
waits for the exit as a plain run would.

:func:`commits_by` is the sans-IO part (bytes in, a count out).
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import selectors
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Sequence

from meshnet import netns
from meshnet.errors import KernelError
from meshnet.nlread import NetlinkParseError, attrs, messages

log = logging.getLogger("meshnet.ipvs")

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NFNLGRP_NFTABLES = 7
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWGEN = (NFNL_SUBSYS_NFTABLES << 8) | 15
NFTA_GEN_PROC_PID = 2
_NFGENMSG = 4  # family, version, res_id


def commits_by(buf: bytes, pid: int) -> int:
    """How many ``NFT_MSG_NEWGEN`` events from process ``pid`` are in ``buf`` (one or
    more netlink messages). Malformed input raises :class:`NetlinkParseError`."""
    n = 0
    for typ, body in messages(buf):
        if typ != NFT_MSG_NEWGEN:
            continue
        if len(body) < _NFGENMSG:
            raise NetlinkParseError("short nfgenmsg")
        for atype, payload in attrs(body, _NFGENMSG):
            if atype == NFTA_GEN_PROC_PID:
                if len(payload) != 4:
                    raise NetlinkParseError("bad NFTA_GEN_PROC_PID")
                if struct.unpack(">I", payload)[0] == pid:
                    n += 1
    return n


def commit_count(text: str) -> int:
    """The transactions an iptables-restore input commits (one per ``COMMIT`` line)."""
    return sum(1 for line in text.splitlines() if line.strip() == "COMMIT")


def event_socket(rcvbuf: int = 1 << 20) -> socket.socket:
    """A non-blocking netfilter netlink socket in nf_tables' event group (opened in the
    calling thread's namespace: see :func:`meshnet.netns.open_in`)."""
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK,
                      NETLINK_NETFILTER)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.bind((0, 0))
        s.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
    except OSError:
        s.close()
        raise
    return s


REAP_TIMEOUT = 60.0
#: inputs up to this size use the acknowledged path: they fit the pipe, so the write
#: never blocks, and their events fit the socket; larger ones (full syncs) run plainly
ACK_MAX_TEXT = 32 * 1024


def usable(status: str = "/proc/self/status") -> str | None:
    """Why commit acknowledgement cannot be used here, or None. The kernel names the
    committing process by its pid in the top pid namespace: inside another one, our
    child's pid would not match (and another process's might)."""
    try:
        with open(status, encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("NSpid:") and len(line.split()) > 2:
                    return "the agent runs in a nested pid namespace"
    except OSError as exc:
        return f"cannot read /proc/self/status: {exc}"
    return None


class Reaper:
    """Closes event sockets and waits for finished children off the caller's path, one
    at a time in a daemon thread. ``settle()`` waits until everything handed over is done
    (tests, shutdown)."""

    def __init__(self) -> None:
        self._q: queue.Queue[tuple[socket.socket, subprocess.Popen]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def hand(self, sock: socket.socket, proc: subprocess.Popen) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="meshnet-reaper",
                                                daemon=True)
                self._thread.start()
        self._q.put((sock, proc))

    def settle(self) -> None:
        self._q.join()

    def _work(self) -> None:
        while True:
            sock, proc = self._q.get()
            try:
                sock.close()
                try:
                    _, err = proc.communicate(timeout=REAP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    _, err = proc.communicate()
                    log.warning("iptables-restore hung after its commits: killed")
                if proc.returncode != 0:  # pragma: no cover - acknowledged commits
                    log.warning("iptables-restore exited %s after its commits: %s",
                                proc.returncode, (err or b"").decode(errors="replace"))
            except Exception:  # pragma: no cover - never let the reaper die
                log.exception("reaper")
            finally:
                self._q.task_done()


REAPER = Reaper()


def run_acked(ns: str | None, argv: Sequence[str], text: str, timeout: float = 60.0,
              rcvbuf: int = 1 << 20, reaper: Reaper = REAPER) -> str:
    """Run ``argv`` (an iptables-restore) in namespace ``ns`` (None: here) with ``text``
    on stdin; return when its commits are acknowledged. Returns how it ended
    (``"ack"`` or ``"exit"``: for tests and figures). A failure raises
    :class:`KernelError` with the child's stderr. Inputs over ``ACK_MAX_TEXT`` run
    plainly."""
    if len(text) > ACK_MAX_TEXT:
        return run_plain(ns, argv, text, timeout)
    try:
        sock = netns.open_in(ns, lambda: event_socket(rcvbuf))
    except FileNotFoundError:
        raise  # no such namespace: the caller skips it
    except OSError as exc:  # no event socket here (permissions, seccomp): run plainly
        log.debug("no nf_tables event socket (%s): waiting for the exit", exc)
        return run_plain(ns, argv, text, timeout)
    try:
        proc = netns.popen(ns, argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE)
    except BaseException:
        sock.close()
        raise
    try:
        how = _await(sock, proc, text, timeout)
    except BaseException:
        sock.close()
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
        raise
    if how == "ack":
        reaper.hand(sock, proc)
        return how
    sock.close()
    return how


def run_plain(ns: str | None, argv: Sequence[str], text: str, timeout: float = 60.0) -> str:
    """Run ``argv`` with ``text`` on stdin and wait for its exit (``"exit"``); a failure
    or a timeout raises :class:`KernelError`."""
    name = os.path.basename(argv[0])
    try:
        r = netns.run_cmd(ns, argv, input=text, capture_output=True, text=True,
                          timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise KernelError(f"{name} did not finish in {timeout:.0f} s") from exc
    if r.returncode != 0:
        raise KernelError(r.stderr.strip()[:500] or f"{name} exited {r.returncode}")
    return "exit"


def _drain(sock: socket.socket, proc: subprocess.Popen, seen: int, need: int
           ) -> tuple[int, bool, bool]:
    """Read what the socket holds: (commits seen, events trusted, child had exited
    before the read, so nothing of it can still arrive)."""
    exited = proc.poll() is not None
    try:
        while seen < need:
            seen += commits_by(sock.recv(1 << 16), proc.pid)
    except BlockingIOError:
        pass
    except NetlinkParseError as exc:
        log.debug("commit events unreadable (%s): waiting for the exit", exc)
        return seen, False, exited
    except OSError as exc:
        if exc.errno != errno.ENOBUFS:
            raise
        return seen, False, exited  # events were dropped: ours may be among them
    return seen, True, exited


def _await(sock: socket.socket, proc: subprocess.Popen, text: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    stdin, proc.stdin = proc.stdin, None  # communicate() must not touch it again
    assert stdin is not None
    try:
        stdin.write(text.encode())
    except BrokenPipeError:
        pass  # it failed early: its status and stderr say why
    finally:
        try:
            stdin.close()
        except BrokenPipeError:
            pass
    need, seen, trust = commit_count(text), 0, True
    sel = selectors.DefaultSelector()  # not select(): fds above 1023 exist in the agent
    sel.register(sock, selectors.EVENT_READ)
    try:
        while trust and seen < need:
            left = deadline - time.monotonic()
            if left <= 0:
                raise KernelError(f"iptables-restore did not finish in {timeout:.0f} s")
            sel.select(min(left, 0.05))
            seen, trust, exited = _drain(sock, proc, seen, need)
            if exited and seen < need:
                break  # gone before acknowledging: its status decides
    finally:
        sel.close()
    if need and trust and seen >= need:  # every commit announced (it may have exited)
        return "ack"
    try:
        _, err = proc.communicate(timeout=max(deadline - time.monotonic(), 0.1))
    except subprocess.TimeoutExpired as exc:
        raise KernelError(f"iptables-restore did not finish in {timeout:.0f} s") from exc
    if proc.returncode != 0:
        raise KernelError((err or b"").decode(errors="replace").strip()[:500]
                          or f"iptables-restore exited {proc.returncode}")
    return "exit"


__all__ = ["REAPER", "Reaper", "commit_count", "commits_by", "event_socket", "run_acked",
           "run_plain", "usable"]
