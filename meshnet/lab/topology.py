"""Pure naming and addressing of a lab: no kernel access here."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from meshnet.errors import UserError

LAB_RE = re.compile(r"^[a-z][a-z0-9]{0,11}$")
UNDERLAY = ipaddress.ip_network("192.0.2.0/24")
MAX_HOSTS = 200
RUN_DIR = Path("/run/meshnet")


def check_lab_name(name: str) -> str:
    if not LAB_RE.match(name):
        raise UserError(f"invalid lab name {name!r}: 1-12 lowercase letters or digits")
    return name


@dataclass(frozen=True)
class LabSpec:
    name: str = "lab"
    hosts: int = 3
    underlay_mtu: int = 1500
    docker: bool = False  #: one dockerd per host, wired to its agent (lab/dockerd.py)

    def __post_init__(self) -> None:
        check_lab_name(self.name)
        if not 1 <= self.hosts <= MAX_HOSTS:
            raise UserError(f"invalid --hosts {self.hosts}: must be 1-{MAX_HOSTS}")
        if not 1280 <= self.underlay_mtu <= 9000:
            raise UserError(f"invalid --underlay-mtu {self.underlay_mtu}: must be 1280-9000")

    @property
    def host_names(self) -> list[str]:
        return [f"h{k}" for k in range(1, self.hosts + 1)]

    @property
    def underlay_ns(self) -> str:
        return f"mn-{self.name}-ul"

    def host_ns(self, host: str) -> str:
        return f"mn-{self.name}-{host}"

    def host_addr(self, host: str) -> str:
        return str(UNDERLAY.network_address + int(host[1:]))

    @property
    def ns_prefix(self) -> str:
        """Every namespace of this lab except containers starts with this."""
        return f"mn-{self.name}-"

    def container_ns(self, name: str) -> str:
        return f"{self.name}-{name}"

    @property
    def state_dir(self) -> Path:
        return RUN_DIR / self.name

    def api_socket(self, host: str) -> str:
        return str(self.state_dir / f"{host}.sock")

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "hosts": self.hosts, "underlay_mtu": self.underlay_mtu,
                "docker": self.docker}
