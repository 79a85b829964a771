"""Docker containers -> the endpoints this host should have (pure: no I/O, no clock).

``container_from_inspect`` reads one ``GET /containers/{id}/json`` answer into a
:class:`Container` (or None: not running, not labelled). ``desired`` turns the running
containers into :class:`Attachment` rows, and ``plan`` compares them with the host's
local endpoints and returns the ordered ops: every detach first (frees addresses and
names), then every attach. Applying a plan and planning again gives an empty plan.

Which local endpoints are Docker's (and so may be detached by a plan): those on a
``/proc/PID/ns/net`` path that the watcher attached in this process (``owned``: (netns,
network) pairs), or whose
name is the name of a labelled container (any state: this catches endpoints restored
after an agent restart whose container has since gone). Endpoints attached through the
API on named namespaces are never touched.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from meshnet.errors import UserError
from meshnet.model import check_name, parse_ip

LABEL_NETWORK = "meshnet.network"  #: NET[,NET2...]: the networks to attach to (required)
LABEL_SERVICE = "meshnet.service"  #: the service the container is a task of
LABEL_ALIASES = "meshnet.aliases"  #: a,b: extra DNS names
LABEL_IP = "meshnet.ip"  #: a static address (only with exactly one network)

PROC_NETNS = re.compile(r"^/proc/(\d+)/ns/net$")


class LabelError(UserError):
    """A container's meshnet labels cannot be used (the container is left unattached)."""


def _split(text: str) -> tuple[str, ...]:
    out: list[str] = []
    for part in text.split(","):
        part = part.strip()
        if part and part not in out:
            out.append(part)
    return tuple(out)


@dataclass(frozen=True)
class Container:
    """A running container that asked for meshnet networks."""

    id: str
    name: str  #: without Docker's leading '/'; also the endpoint name
    pid: int
    networks: tuple[str, ...]
    service: str = ""
    aliases: tuple[str, ...] = ()
    ip: str = ""
    resolv_conf: str = ""  #: Docker's ResolvConfPath (bind-mounted as /etc/resolv.conf)

    @property
    def netns(self) -> str:
        return f"/proc/{self.pid}/ns/net"

    @property
    def short(self) -> str:
        return self.id[:12]


def parse_labels(labels: Mapping[str, str]) -> tuple[tuple[str, ...], str, tuple[str, ...], str]:
    """(networks, service, aliases, ip) from a container's labels; raises LabelError."""
    try:
        networks = tuple(check_name(n, "network name")
                         for n in _split(labels.get(LABEL_NETWORK, "")))
        if not networks:
            raise LabelError(f"label {LABEL_NETWORK} names no network")
        service = labels.get(LABEL_SERVICE, "").strip()
        if service:
            check_name(service, "service name")
        aliases = tuple(check_name(a, "alias") for a in _split(labels.get(LABEL_ALIASES, "")))
        ip = labels.get(LABEL_IP, "").strip()
        if ip:
            parse_ip(ip, f"label {LABEL_IP}")
            if len(networks) != 1:
                raise LabelError(f"label {LABEL_IP} needs exactly one network in "
                                 f"{LABEL_NETWORK}, not {len(networks)}")
    except LabelError:
        raise
    except UserError as exc:
        raise LabelError(str(exc)) from None
    return networks, service, aliases, ip


def container_from_inspect(data: Mapping[str, Any]) -> Container | None:
    """A running, labelled container; None if it is not running or has no meshnet label.

    Raises LabelError for labels that cannot be used, or a network mode that shares a
    namespace meshnet must not touch (``host``, ``container:ID``).
    """
    state = data.get("State") or {}
    labels = (data.get("Config") or {}).get("Labels") or {}
    if LABEL_NETWORK not in labels or not state.get("Running") or not state.get("Pid"):
        return None
    mode = str((data.get("HostConfig") or {}).get("NetworkMode") or "")
    if mode == "host" or mode.startswith("container:"):
        raise LabelError(f"network mode {mode!r} shares a namespace; use --network none")
    networks, service, aliases, ip = parse_labels(labels)
    name = str(data.get("Name") or "").lstrip("/")
    return Container(id=str(data["Id"]), name=name, pid=int(state["Pid"]), networks=networks,
                     service=service, aliases=aliases, ip=ip,
                     resolv_conf=str(data.get("ResolvConfPath") or ""))


@dataclass(frozen=True)
class Attachment:
    """One container on one network: the body of an agent attach."""

    container: str  #: container id
    netns: str
    network: str
    name: str
    service: str = ""
    aliases: tuple[str, ...] = ()
    ip: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return (self.netns, self.network)

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"netns": self.netns, "network": self.network, "name": self.name,
                               "aliases": list(self.aliases)}
        if self.service:
            out["service"] = self.service
        if self.ip:
            out["ip"] = self.ip
        return out


@dataclass(frozen=True)
class Observed:
    """A local endpoint as the plan sees it."""

    netns: str
    network: str
    name: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.netns, self.network)


@dataclass(frozen=True)
class Detach:
    netns: str
    network: str
    name: str


@dataclass(frozen=True)
class Attach:
    attachment: Attachment


Op = Attach | Detach


def desired(containers: Iterable[Container]) -> dict[tuple[str, str], Attachment]:
    out: dict[tuple[str, str], Attachment] = {}
    for c in containers:
        for net in c.networks:
            a = Attachment(container=c.id, netns=c.netns, network=net, name=c.name,
                           service=c.service, aliases=c.aliases, ip=c.ip)
            out[a.key] = a
    return out


def is_docker(e: Observed, owned: set[tuple[str, str]], docker_names: set[str]) -> bool:
    return bool(PROC_NETNS.match(e.netns)) and (e.key in owned or e.name in docker_names)


def plan(want: Mapping[tuple[str, str], Attachment], observed: Iterable[Observed],
         owned: set[tuple[str, str]], docker_names: set[str]) -> list[Op]:
    """Detach Docker endpoints nobody wants, then attach what is missing (sorted)."""
    seen = list(observed)
    have = {e.key for e in seen}
    ops: list[Op] = [Detach(e.netns, e.network, e.name)
                     for e in sorted(seen, key=lambda e: e.key)
                     if e.key not in want and is_docker(e, owned, docker_names)]
    ops += [Attach(want[k]) for k in sorted(want) if k not in have]
    return ops
