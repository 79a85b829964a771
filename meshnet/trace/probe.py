"""The trace's own packets and kernel reads (blocking; run in worker threads).

* ``dns_query``: one A/AAAA query to 127.0.0.11 from a socket opened inside SRC.
* ``ProbeSocket``: a TCP or UDP socket inside SRC (or the host namespace), bound to a
  random free high port: the *marker* every capture filter matches. TCP: one connect
  (SYN), closed with a reset as soon as it is answered; UDP: one datagram carrying
  ``meshnet-trace ID``, one answer awaited. Nothing else is sent.
* ``conntrack_lookup`` / ``conntrack_forget``: the probe's conntrack entry in a
  namespace (the LB's choice), removed afterwards.
* ``read_facts``: FDB and permanent neighbour entries of a sandbox's VXLAN device, and
  SRC's MTU (for the diagnosis).
"""

from __future__ import annotations

import errno
import random
import re
import select
import socket
import struct
import subprocess

from meshnet import netns
from meshnet.trace.capture import in_netns
from meshnet.trace.diagnose import Facts

NUD_PERMANENT = 0x80
MARKER_RANGE = (40000, 59999)
_CT_RE = re.compile(r"(src|dst|sport|dport)=(\S+)")


# --- DNS -------------------------------------------------------------------------------


def dns_query(ns: str, name: str, v6: bool = False, timeout: float = 2.0,
              server: str = "127.0.0.11") -> tuple[str, tuple[str, ...]]:
    """(rcode text, answers) for ``name`` asked from inside ``ns``."""
    import dns.exception
    import dns.message
    import dns.query
    import dns.rcode
    import dns.rdatatype

    qtype = dns.rdatatype.AAAA if v6 else dns.rdatatype.A
    q = dns.message.make_query(name if name.endswith(".") else name + ".", qtype)
    with in_netns(ns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        r = dns.query.udp(q, server, timeout=timeout, sock=sock)
    except dns.exception.Timeout:
        return "TIMEOUT", ()
    except (OSError, dns.exception.DNSException) as exc:
        return f"ERROR {exc}", ()
    finally:
        sock.close()
    answers = tuple(rd.address for rrset in r.answer for rd in rrset
                    if rrset.rdtype == qtype)
    return dns.rcode.to_text(r.rcode()), answers


# --- the probe -------------------------------------------------------------------------


class ProbeSocket:
    """A bound, not yet used socket inside ``ns`` (None: the agent's namespace)."""

    def __init__(self, ns: str | None, proto: str, v6: bool = False,
                 rng: random.Random | None = None) -> None:
        rng = rng or random.Random()
        family = socket.AF_INET6 if v6 else socket.AF_INET
        kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
        self.proto = proto
        for _ in range(50):
            port = rng.randint(*MARKER_RANGE)
            with in_netns(ns):
                sock = socket.socket(family, kind)
            try:
                sock.bind(("::" if v6 else "0.0.0.0", port))
            except OSError as exc:
                sock.close()
                if exc.errno == errno.EADDRINUSE:
                    continue
                raise
            self.sock, self.marker = sock, port
            return
        raise OSError(errno.EADDRINUSE, "no free port for the probe")

    def send(self, dst: str, port: int, payload: bytes, timeout: float) -> str:
        """Send the probe; returns the outcome (never raises for network errors)."""
        s = self.sock
        s.setblocking(False)
        if self.proto == "udp":
            try:
                s.sendto(payload, (dst, port))
                ready, _, _ = select.select([s], [], [], timeout)
                if not ready:
                    return "no answer"
                data = s.recv(2048)
                return f"answered ({len(data)} bytes)"
            except OSError as exc:
                return _errname(exc)
        try:
            s.connect((dst, port))
        except BlockingIOError:
            pass
        except OSError as exc:
            return _errname(exc)
        _, ready, _ = select.select([], [s], [], timeout)
        if not ready:
            return "timeout"
        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        return "connected" if err == 0 else _errname(OSError(err, ""))

    def close(self) -> None:
        # a reset, not a FIN: leaves no TIME_WAIT and the server no half-open session
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.sock.close()


def _errname(exc: OSError) -> str:
    if exc.errno == errno.ECONNREFUSED:
        return "refused"
    if exc.errno == errno.EMSGSIZE:
        return "message too long"
    if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return "unreachable"
    return f"error: {errno.errorcode.get(exc.errno or 0, exc.errno)}"


# --- conntrack -------------------------------------------------------------------------


def parse_conntrack(line: str) -> tuple[str, str] | None:
    """(original destination, reply source) of one ``conntrack -L`` line: the VIP or
    published address, and the backend that answers for it."""
    fields = _CT_RE.findall(line)
    src = [v for k, v in fields if k == "src"]
    dst = [v for k, v in fields if k == "dst"]
    if len(src) < 2 or not dst:
        return None
    return dst[0], src[1]


def _conntrack(ns: str | None, args: list[str]) -> str:
    pre = (lambda: netns.enter(ns)) if ns else None
    try:
        r = subprocess.run(["conntrack", *args], capture_output=True, text=True, timeout=5,
                           preexec_fn=pre)  # noqa: PLW1509 - setns only, before exec
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return r.stdout


def conntrack_lookup(ns: str | None, proto: str, marker: int) -> str:
    """The probe's conntrack line in ``ns`` ('' if none)."""
    out = _conntrack(ns, ["-L", "-p", proto, "--sport", str(marker)])
    return next((ln for ln in out.splitlines() if f"sport={marker} " in ln), "")


def conntrack_forget(ns: str | None, proto: str, marker: int) -> None:
    _conntrack(ns, ["-D", "-p", proto, "--sport", str(marker)])


# --- kernel facts ----------------------------------------------------------------------


def read_facts(sandbox: str, vxlan_dev: str, src_ns: str | None, src_if: str,
               probe_len: int) -> Facts:
    if not sandbox or not netns.exists(sandbox):  # "": a macvlan network has none
        return Facts(sandbox_exists=False, probe_len=probe_len)
    fdb: dict[str, str] = {}
    neigh: dict[str, str] = {}
    with netns.ipr(sandbox) as ip:
        idx = ip.link_lookup(ifname=vxlan_dev)
        if idx:
            for e in ip.get_neighbours(family=socket.AF_BRIDGE, ifindex=idx[0]):
                if e.get_attr("NDA_DST") and e.get_attr("NDA_LLADDR"):
                    fdb[e.get_attr("NDA_LLADDR")] = e.get_attr("NDA_DST")
            for family in (socket.AF_INET, socket.AF_INET6):
                for e in ip.get_neighbours(family=family, ifindex=idx[0]):
                    if e["state"] & NUD_PERMANENT and e.get_attr("NDA_LLADDR"):
                        neigh[e.get_attr("NDA_DST")] = e.get_attr("NDA_LLADDR")
    mtu = 0
    if src_if:
        try:
            with netns.ipr(src_ns) as ip:
                idx = ip.link_lookup(ifname=src_if)
                if idx:
                    mtu = ip.get_links(idx[0])[0].get_attr("IFLA_MTU")
        except OSError:
            pass
    return Facts(sandbox_exists=True, fdb=fdb, neigh=neigh, mtu=mtu, probe_len=probe_len)


def underlay_iface(vtep: str) -> str:
    """The host-namespace interface holding the VTEP address ('' if none)."""
    with netns.ipr(None) as ip:
        for a in ip.get_addr():
            if a.get_attr("IFA_ADDRESS") == vtep:
                return ip.get_links(a["index"])[0].get_attr("IFLA_IFNAME")
    return ""
