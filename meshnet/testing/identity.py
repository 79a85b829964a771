"""What meshnet owns on a lab, by identity (for leak checks: the churn test and the scale
benchmark). Counts would hide a leak that replaces one object by another."""

from __future__ import annotations

import os
import subprocess
import time
from collections import Counter
from typing import Any

from meshnet import netns


def ns_exec(ns: str, *cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True,
                          timeout=60)


def _lines(ns: str, *cmd: str) -> list[str]:
    return sorted(ln.strip() for ln in ns_exec(ns, *cmd).stdout.splitlines() if ln.strip())


def _nft_objects(ns: str) -> list[str]:
    """Every nftables rule, set/map line and meshnet-owned chain, as "table/chain: line".
    Empty built-in chains and tables are left out: iptables-nft makes them on a first
    rule and never removes them (harmless, and no meshnet object)."""
    out, table, block, lines = [], "", "", []
    for raw in ns_exec(ns, "nft", "-s", "list", "ruleset").stdout.splitlines():
        ln = raw.strip()
        if ln.startswith("table "):
            table = ln.rstrip(" {")
        elif ln.startswith(("chain ", "set ", "map ")):
            block, lines = ln.rstrip(" {"), []
        elif ln == "}" and block:
            owned = any(m in block for m in ("MESHNET", "meshnet", "mn-"))
            if lines or owned or "meshnet" in table:
                out.append(f"{table}/{block}")
            out += [f"{table}/{block}: {x}" for x in lines]
            block = ""
        elif ln == "}":
            table = ""
        elif block and not ln.startswith(("type ", "policy ")):
            lines.append(ln)
    return sorted(out)


def _links(ns: str) -> list[str]:
    """Each link by name, kind and peer/master (not ifindex, which churn moves on)."""
    out = []
    for ln in ns_exec(ns, "ip", "-o", "-d", "link").stdout.splitlines():
        parts = ln.split()
        name = parts[1].rstrip(":").split("@")[0]
        kind = next((parts[i + 1] for i, w in enumerate(parts[:-1]) if w in
                     ("vxlan", "bridge", "veth", "macvlan", "dummy")), "")
        master = next((parts[i + 1] for i, w in enumerate(parts[:-1]) if w == "master"), "")
        out.append(f"{name} {kind} {master}".strip())
    return sorted(out)


#: /proc/PID/net tables and the whitespace-split column of each row's inode
_INODE_COLUMN = {"tcp": 9, "tcp6": 9, "udp": 9, "udp6": 9, "raw": 9, "raw6": 9,
                 "unix": 6, "netlink": 9, "packet": 8}
_TCP_STATES = {"01": "established", "0A": "listen"}


def _socket_kinds(pid: int) -> dict[str, str]:
    """Socket inode -> "socket PROTO[ STATE]", from the tables of the process's namespace
    (a TCP stream's state: established, listen, or the hex code of another)."""
    kinds: dict[str, str] = {}
    for table, at in _INODE_COLUMN.items():
        try:
            with open(f"/proc/{pid}/net/{table}", encoding="ascii", errors="replace") as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            parts = row.split()
            if len(parts) <= at:
                continue
            kind = f"socket {table}"
            if table.startswith("tcp"):
                kind += " " + _TCP_STATES.get(parts[3], parts[3])
            kinds[parts[at]] = kind
    return kinds


def _fds(pid: int) -> list[str]:
    """The agent's open files by kind (``socket tcp established``, ``socket netlink``,
    ``pipe``, ``anon_inode:[eventpoll]``, a path); the least busy of a few samples: a
    gossip TCP stream in flight is not a leak."""
    samples = []
    for _ in range(5):
        kinds, sockets = [], _socket_kinds(pid)
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                kinds.append(sockets.get(target[8:-1], "socket"))
            elif target.startswith("pipe:["):
                kinds.append("pipe")
            else:
                kinds.append(target)
        samples.append(sorted(kinds))
        time.sleep(0.2)
    return min(samples, key=len)


def snapshot(lab: Any) -> dict[str, object]:
    """Everything meshnet owns, by identity: namespaces, links, every nftables object
    (iptables-nft rules included, so MESHNET chains too), FDB and neighbour entries,
    and the agent's open files."""
    snap: dict[str, object] = {
        "namespaces": sorted(n for n in netns.list_netns() if lab.spec.name in n)}
    spaces = [lab.spec.host_ns(h) for h in lab.spec.host_names]
    spaces += [n for n in netns.list_netns() if "-ov-" in n and lab.spec.name in n]
    for ns in spaces:
        snap[f"{ns} links"] = _links(ns)
        snap[f"{ns} nft"] = _nft_objects(ns)
        snap[f"{ns} fdb"] = _lines(ns, "bridge", "fdb", "show", "permanent")
        snap[f"{ns} neigh"] = _lines(ns, "ip", "neigh", "show", "nud", "permanent")
    for h in lab.spec.host_names:
        snap[f"{h} fds"] = _fds(lab.agent_pid(h))
    return snap


def diff(before: dict[str, object], after: dict[str, object]) -> dict[str, Any]:
    """Per key: what went and what is new (empty when nothing differs)."""
    out: dict[str, Any] = {}
    for k in before.keys() | after.keys():
        b, a = before.get(k) or [], after.get(k) or []
        if b != a:  # as multisets: one more socket of a kind is "new"
            cb, ca = Counter(b), Counter(a)  # type: ignore[arg-type]
            out[k] = {"gone": sorted((cb - ca).elements()), "new": sorted((ca - cb).elements())}
    return out
