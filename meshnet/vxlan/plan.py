"""``plan(desired, observed)`` -> ordered operations (pure). Applying a plan and planning
again gives an empty plan.

Order: create sandboxes, add ports, set FDB, set neighbours; then delete neighbours,
FDB, ports and sandboxes. Objects inside a sandbox that is being deleted are not deleted
one by one (the namespace takes them with it). A sandbox whose device settings differ
(MTU, local VTEP) is updated in place, never recreated, so traffic keeps flowing.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshnet.vxlan.state import Overlay, Port, Sandbox


@dataclass(frozen=True)
class CreateSandbox:
    sandbox: Sandbox


@dataclass(frozen=True)
class UpdateSandbox:
    sandbox: Sandbox


@dataclass(frozen=True)
class DeleteSandbox:
    ns: str


@dataclass(frozen=True)
class AddPort:
    port: Port


@dataclass(frozen=True)
class DeletePort:
    ns: str
    name: str


@dataclass(frozen=True)
class SetFdb:
    ns: str
    mac: str
    vtep: str


@dataclass(frozen=True)
class DeleteFdb:
    ns: str
    mac: str


@dataclass(frozen=True)
class SetNeigh:
    ns: str
    ip: str
    mac: str


@dataclass(frozen=True)
class DeleteNeigh:
    ns: str
    ip: str


Op = (CreateSandbox | UpdateSandbox | DeleteSandbox | AddPort | DeletePort | SetFdb | DeleteFdb
      | SetNeigh | DeleteNeigh)


def plan(want: Overlay, have: Overlay) -> list[Op]:
    ops: list[Op] = []
    for ns, sb in sorted(want.sandboxes.items()):
        cur = have.sandboxes.get(ns)
        if cur is None:
            ops.append(CreateSandbox(sb))
        elif cur != sb:
            ops.append(UpdateSandbox(sb))
    for key, port in sorted(want.ports.items()):
        if have.ports.get(key) is None:
            ops.append(AddPort(port))
    for (ns, mac), vtep in sorted(want.fdb.items()):
        if have.fdb.get((ns, mac)) != vtep:
            ops.append(SetFdb(ns, mac, vtep))
    for (ns, ip), mac in sorted(want.neigh.items()):
        if have.neigh.get((ns, ip)) != mac:
            ops.append(SetNeigh(ns, ip, mac))

    gone = {ns for ns in have.sandboxes if ns not in want.sandboxes}
    for ns, ip in sorted(have.neigh):
        if (ns, ip) not in want.neigh and ns not in gone:
            ops.append(DeleteNeigh(ns, ip))
    for ns, mac in sorted(have.fdb):
        if (ns, mac) not in want.fdb and ns not in gone:
            ops.append(DeleteFdb(ns, mac))
    for ns, name in sorted(have.ports):
        if (ns, name) not in want.ports and ns not in gone:
            ops.append(DeletePort(ns, name))
    ops.extend(DeleteSandbox(ns) for ns in sorted(gone))
    return ops
