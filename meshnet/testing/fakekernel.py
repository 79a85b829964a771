"""An in-memory overlay kernel: the same observe/apply contract as OverlayKernel."""

from __future__ import annotations

import copy
from collections.abc import Iterable

from meshnet.vxlan.kernel import NetnsGone
from meshnet.vxlan.plan import (
    AddPort,
    CreateSandbox,
    DeleteFdb,
    DeleteNeigh,
    DeletePort,
    DeleteSandbox,
    Op,
    SetFdb,
    SetNeigh,
    UpdateSandbox,
)
from meshnet.vxlan.state import Overlay, Port


class FakeOverlayKernel:
    def __init__(self, container_netns: Iterable[str] = ()) -> None:
        self.state = Overlay()
        self.container_netns = set(container_netns)
        self.applied: list[Op] = []
        self.fail_on: type | None = None  #: raise on the next op of this type

    def observe(self) -> Overlay:
        obs = copy.deepcopy(self.state)
        # the real kernel cannot see a port's container side: only that it exists
        obs.ports = {k: Port(p.ns, p.name, "", "", "", "", 0) for k, p in obs.ports.items()}
        return obs

    def apply(self, ops: Iterable[Op]) -> None:
        s = self.state
        for op in ops:
            if self.fail_on is not None and isinstance(op, self.fail_on):
                self.fail_on = None
                raise RuntimeError(f"injected failure on {op}")
            self.applied.append(op)
            match op:
                case CreateSandbox(sandbox=sb) | UpdateSandbox(sandbox=sb):
                    s.sandboxes[sb.ns] = sb
                case DeleteSandbox(ns=ns):
                    s.sandboxes.pop(ns, None)
                    for table in (s.ports, s.fdb, s.neigh):
                        for key in [k for k in table if k[0] == ns]:
                            del table[key]
                case AddPort(port=p):
                    if p.netns not in self.container_netns:
                        raise NetnsGone(p.netns)
                    assert p.ns in s.sandboxes, "port before its sandbox"
                    s.ports[(p.ns, p.name)] = p
                case DeletePort(ns=ns, name=name):
                    s.ports.pop((ns, name), None)
                case SetFdb(ns=ns, mac=mac, vtep=vtep):
                    assert ns in s.sandboxes
                    s.fdb[(ns, mac)] = vtep
                case DeleteFdb(ns=ns, mac=mac):
                    s.fdb.pop((ns, mac), None)
                case SetNeigh(ns=ns, ip=ip, mac=mac):
                    assert ns in s.sandboxes
                    s.neigh[(ns, ip)] = mac
                case DeleteNeigh(ns=ns, ip=ip):
                    s.neigh.pop((ns, ip), None)
