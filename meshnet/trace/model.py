"""Trace data: the request, the "traces" table entry, and what a capture saw.

Everything here is plain frozen data that validates itself; nothing does I/O.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from meshnet.errors import ModelError, UserError
from meshnet.model import _Model, check_float, check_name, check_port, check_protocol

MAX_ENTRY_DATA = 1024  #: bytes of JSON per "traces" table entry (summaries, never pcaps)
TRACE_ID_RE = re.compile(r"^[0-9a-f]{8,32}$")


# --- the "traces" table ----------------------------------------------------------------


@dataclass(frozen=True)
class TraceEntry(_Model):
    """One entry of the node-scoped "traces" table.

    ``kind`` "capture": written by the origin of trace ``trace``, asking ``node`` to
    capture (key ``ID/capture/NODE``); ``data`` is a :class:`CaptureOrder` as JSON.
    ``kind`` "result": written by ``node`` (key ``ID/result/NODE``), ``data`` a
    :class:`CaptureReport` as JSON. ``until`` (wall clock) bounds the work: an agent
    ignores orders past it, and results are retracted after it.
    """

    trace: str
    kind: Literal["capture", "result"]
    node: str
    until: float
    data: str = "{}"

    def __post_init__(self) -> None:
        if not isinstance(self.trace, str) or not TRACE_ID_RE.match(self.trace):
            raise ModelError(f"invalid trace id {self.trace!r}")
        if self.kind not in ("capture", "result"):
            raise ModelError(f"invalid trace entry kind {self.kind!r}")
        check_name(self.node, "node name")
        self._set("until", check_float(self.until, 0, float("inf"), "deadline"))
        if not isinstance(self.data, str) or len(self.data.encode()) > MAX_ENTRY_DATA:
            raise ModelError("trace entry data must be a JSON string of at most 1 KiB")

    @property
    def key(self) -> str:
        return entry_key(self.trace, self.kind, self.node)

    def payload(self) -> dict[str, Any]:
        try:
            data = json.loads(self.data)
        except ValueError:
            raise ModelError("trace entry data is not JSON") from None
        if not isinstance(data, dict):
            raise ModelError("trace entry data must be an object")
        return data


def entry_key(trace: str, kind: str, node: str) -> str:
    return f"{trace}/{kind}/{node}"


def compact(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"), sort_keys=True)


@dataclass(frozen=True)
class CaptureOrder:
    """What a destination host captures for a trace: tight enough to see only the probe.

    ``marker`` is the probe's source port (the reply's destination port), ``client``
    the probe's source address as the overlay carries it, ``tasks`` the candidate
    backends on that host, ``target`` their port.
    """

    proto: str
    marker: int
    client: str
    network: str
    vni: int
    tasks: tuple[str, ...]
    target: int
    seconds: float = 3.0
    stop: bool = False  #: the origin is done probing: stop and report
    pcap: str = ""  #: directory to keep the captures in, on that host ('' = do not)

    def to_json(self) -> str:
        return compact({"proto": self.proto, "marker": self.marker, "client": self.client,
                        "network": self.network, "vni": self.vni, "tasks": list(self.tasks),
                        "target": self.target, "seconds": self.seconds, "stop": self.stop,
                        "pcap": self.pcap})

    @classmethod
    def from_payload(cls, d: dict[str, Any]) -> CaptureOrder:
        try:
            order = cls(proto=check_protocol(d["proto"]), marker=check_port(d["marker"]),
                        client=str(ipaddress.ip_address(d["client"])),
                        network=check_name(d["network"], "network name"), vni=int(d["vni"]),
                        tasks=tuple(str(ipaddress.ip_address(t)) for t in d["tasks"]),
                        target=check_port(d["target"]),
                        seconds=check_float(d.get("seconds", 3.0), 0.1, 30, "seconds"),
                        stop=bool(d.get("stop", False)), pcap=str(d.get("pcap", "")))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"invalid capture order: {exc}") from None
        return order


# --- what was seen ---------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """One capture point's summary: how many probe and reply packets it saw, and the
    first of each as one line. ``outer`` holds the VXLAN outer header of the first
    probe (or reply) packet seen on an underlay: source and destination VTEP, UDP
    destination port, VNI."""

    point: str  #: "src", "ingress", "sandbox", "underlay", "task"
    host: str
    iface: str
    probe: int = 0
    reply: int = 0
    first_probe: str = ""
    first_reply: str = ""
    outer: tuple[str, str, int, int] | None = None  #: (src VTEP, dst VTEP, dport, VNI)
    reply_outer: tuple[str, str, int, int] | None = None
    inner_dst: str = ""  #: destination address of the first probe packet (after DNAT)
    reply_flags: str = ""  #: TCP flags of the first reply ("SA", "RA"), "" for UDP
    error: str = ""  #: the capture point could not be opened

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"p": self.point, "h": self.host, "i": self.iface}
        for k, v in (("n", self.probe), ("r", self.reply), ("fp", self.first_probe),
                     ("fr", self.first_reply), ("o", self.outer), ("ro", self.reply_outer),
                     ("d", self.inner_dst), ("f", self.reply_flags), ("e", self.error)):
            if v:
                d[k] = list(v) if isinstance(v, tuple) else v
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Seen:
        try:
            def outer(v: Any) -> tuple[str, str, int, int] | None:
                return (str(v[0]), str(v[1]), int(v[2]), int(v[3])) if v else None

            return cls(point=str(d["p"]), host=str(d["h"]), iface=str(d["i"]),
                       probe=int(d.get("n", 0)), reply=int(d.get("r", 0)),
                       first_probe=str(d.get("fp", ""))[:120],
                       first_reply=str(d.get("fr", ""))[:120], outer=outer(d.get("o")),
                       reply_outer=outer(d.get("ro")), inner_dst=str(d.get("d", "")),
                       reply_flags=str(d.get("f", "")), error=str(d.get("e", ""))[:120])
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ModelError(f"invalid capture summary: {exc}") from None


# --- the request -----------------------------------------------------------------------


@dataclass(frozen=True)
class TraceRequest:
    """``meshnet trace SRC DST[:PORT][/tcp|/udp] [--from HOST]`` as the API receives it."""

    dst: str  #: a name or an address
    src: str = ""  #: an attached container (name or netns) on this host
    port: int | None = None
    proto: str = "tcp"
    from_host: str = ""  #: trace traffic entering this host on a published port
    pcap: str = ""  #: keep captures as pcap files in this directory
    timeout: float = 3.0

    def __post_init__(self) -> None:
        if not self.dst and not self.from_host:
            raise UserError("trace needs a destination")
        if bool(self.src) == bool(self.from_host):
            raise UserError("trace needs either a source container or --from HOST")
        if self.port is not None:
            check_port(self.port)
        check_protocol(self.proto)
        if self.from_host:
            check_name(self.from_host, "host name")
            if self.port is None:
                raise UserError("a trace --from HOST needs the published port (DST:PORT)")
        if self.pcap and not self.pcap.startswith("/"):
            raise UserError(f"--pcap {self.pcap!r}: give an absolute directory")
        check_float(self.timeout, 0.5, 30, "timeout")

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> TraceRequest:
        unknown = set(body) - {"src", "dst", "port", "proto", "from", "pcap", "timeout"}
        if unknown:
            raise UserError(f"unknown trace field(s): {', '.join(sorted(unknown))}")
        return cls(dst=str(body.get("dst") or ""), src=str(body.get("src") or ""),
                   port=body.get("port"), proto=body.get("proto") or "tcp",
                   from_host=str(body.get("from") or ""), pcap=str(body.get("pcap") or ""),
                   timeout=body.get("timeout", 3.0))

    def to_body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"dst": self.dst, "proto": self.proto, "timeout": self.timeout}
        for k, v in (("src", self.src), ("port", self.port), ("from", self.from_host),
                     ("pcap", self.pcap)):
            if v:
                out[k] = v
        return out


def parse_destination(text: str) -> tuple[str, int | None, str]:
    """``DST[:PORT][/tcp|/udp]`` -> (host, port, proto). ``[v6]:port`` for IPv6;
    ``:PORT`` (empty host) is allowed (with --from: this host's own address)."""
    proto = "tcp"
    if "/" in text:
        text, _, proto = text.rpartition("/")
        check_protocol(proto)
    port: int | None = None
    host = text
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise UserError(f"invalid destination {text!r}: expected [ADDR]:PORT")
            port = _port(rest[1:], text)
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        port = _port(p, text)
    elif text.isdigit():
        host, port = "", _port(text, text)
    if host and text.count(":") != 1 and ":" in host and not text.startswith("["):
        ipaddress.ip_address(host)  # a bare IPv6 address: must parse
    return host, port, proto


def _port(text: str, whole: str) -> int:
    try:
        return check_port(int(text))
    except ValueError:
        raise UserError(f"invalid destination {whole!r}: bad port {text!r}") from None
