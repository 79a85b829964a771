"""An in-memory overlay kernel: the same observe/apply contract as OverlayKernel."""

from __future__ import annotations

import copy
from collections.abc import Iterable

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

    def netns_exists(self, name: str) -> bool:
        return name in self.container_netns

    def free_ifname(self, name: str, also_taken: Iterable[str] = ()) -> str:
        used = {p.ifname for p in self.state.ports.values() if p.netns == name}
        used |= set(also_taken)
        return next(f"eth{i}" for i in range(1000) if f"eth{i}" not in used)

    def underlay_mtu(self, address: str) -> int | None:
        return 1500

    def apply(self, ops: Iterable[Op]) -> list[str]:
        gone: list[str] = []
        self._apply(ops, gone)
        return gone

    def _apply(self, ops: Iterable[Op], gone: list[str]) -> None:
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
                        gone.append(p.netns)
                        continue
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


class FakeGwKernel:
    """In-memory gateway-bridge kernel (same contract as meshnet.gwbridge.kernel.GwKernel)."""

    def __init__(self, container_netns: Iterable[str] = (), with_default: Iterable[str] = ()):
        from meshnet.gwbridge.state import GwState

        self.state = GwState()
        self.container_netns = set(container_netns)
        self.with_default = set(with_default)
        self.routes: dict[str, str] = {}  #: netns -> default gateway we installed

    def observe(self):
        from meshnet.gwbridge.state import GwPort, GwState

        return GwState(self.state.bridge,
                       {n: GwPort("", n, "", "", "") for n in self.state.ports},
                       self.state.rules)

    def has_default_route(self, ns: str) -> bool:
        return ns in self.with_default or ns in self.routes

    def apply(self, ops) -> list[str]:
        gone = []
        s = self.state
        for op in ops:
            if op.kind == "bridge":
                s.bridge = op.arg
            elif op.kind == "rules":
                assert s.bridge, "rules before the bridge"
                s.rules = op.arg
            elif op.kind == "add_port":
                if op.arg.netns not in self.container_netns:
                    gone.append(op.arg.netns)
                    continue
                assert s.bridge, "port before the bridge"
                s.ports[op.arg.name] = op.arg
                self.routes[op.arg.netns] = op.arg.gateway
            elif op.kind == "del_port":
                p = s.ports.pop(op.arg, None)
                if p:
                    self.routes.pop(p.netns, None)
            elif op.kind == "del_rules":
                s.rules = ""
            elif op.kind == "del_bridge":
                s.bridge = None
        return gone
