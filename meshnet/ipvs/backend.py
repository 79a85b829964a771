"""The common backend interface and ``choose_backend``.

Both backends follow the reconciler contract (style rule 3), with plain-data plans::

    have = backend.observe()                  # read the kernel (full syncs, startup)
    ops = backend.plan(want, have, full)      # pure: LbState x observed -> ops
    have, skipped = backend.apply(ops, have)  # -> the state now in the kernel
    backend.cleanup()                         # remove everything meshnet owns

``skipped`` lists namespaces that do not exist yet (a sandbox the overlay has not made):
their ops were not applied and the next sync retries them.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

from meshnet.errors import ConfigError
from meshnet.ipvs.iptables import CommandRunner, IptablesBackend
from meshnet.ipvs.ipvs import IpvsBackend, ipvs_available
from meshnet.ipvs.nftables import NftBackend
from meshnet.ipvs.state import LbConfig, LbState

LbChoice = Literal["auto", "ipvs", "iptables", "nftables"]


class LbBackend(Protocol):
    name: str

    def observe(self) -> Any: ...
    def plan(self, want: LbState, have: Any, full: bool = False) -> Any: ...
    def apply(self, ops: Any, have: Any) -> tuple[Any, list[str]]: ...
    def cleanup(self) -> list[str]: ...


def choose_backend(lb: LbChoice, prefix: str, *, host_ns: str | None = None,
                   iptables: str = "iptables", config: LbConfig | None = None,
                   probe=ipvs_available) -> tuple[LbBackend, str]:
    """(backend, why it was chosen). ``auto``: iptables. The IPVS backend has never run
    against a kernel with ip_vs in meshnet's tests (the development machine has none), so
    ``auto`` does not pick it; ``ipvs`` picks it with a warning (``UNVERIFIED`` in the
    reason) and on a kernel without it is a configuration error (one clear line).
    ``nftables`` (never chosen by ``auto``): sandboxes in nftables maps, so a backend
    change costs the same at any number of services; not visible in ``iptables-save``.
    ``iptables`` names the binary family (``iptables`` or ``iptables-legacy``, or a path
    prefix such as ``/usr/sbin/iptables-legacy``)."""
    runner = CommandRunner(prefix, binary=iptables, host_ns=host_ns)
    if lb == "iptables":
        return IptablesBackend(runner, config), "iptables: chosen by configuration"
    if lb == "nftables":
        return NftBackend(runner, config), "nftables: chosen by configuration"
    ok, why = probe()
    if lb == "ipvs":
        if not ok:
            raise ConfigError(f"--lb ipvs: this kernel has no IPVS ({why})")
        return IpvsBackend(runner, config), f"ipvs: chosen by configuration ({UNVERIFIED})"
    if lb != "auto":
        raise ConfigError(f"invalid lb {lb!r}: use auto, ipvs, iptables or nftables")
    if ok:
        return IptablesBackend(runner, config), ("iptables (auto): the kernel has IPVS, but "
                                                 f"meshnet's IPVS backend is {UNVERIFIED}")
    return IptablesBackend(runner, config), f"iptables: no IPVS ({why}) (auto)"


UNVERIFIED = "UNVERIFIED: never run against a kernel with ip_vs in meshnet's tests"
