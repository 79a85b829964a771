"""The real kernel behind the gateway bridge: netlink (pyroute2) and iptables-restore.

Runs on the agent's kernel thread (synchronous), in the host namespace (``host_ns``
None) or in a named one (the lab's tests drive it from outside).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

from pyroute2.netlink.exceptions import NetlinkError

from meshnet import netns
from meshnet.errors import KernelError
from meshnet.gwbridge.state import BRIDGE, GwPort, GwState, Op

OWNED = re.compile(r"^-A (MESHNET-GW-[A-Z]+) (.*)$")
JUMP = re.compile(r"^-A (POSTROUTING|FORWARD) -j (MESHNET-GW-[A-Z]+)$")
JUMPS = {"nat": ("POSTROUTING", "MESHNET-GW-POSTROUTING"),
         "filter": ("FORWARD", "MESHNET-GW-FORWARD")}


class GwKernel:
    def __init__(self, host_ns: str | None = None, iptables: str = "iptables") -> None:
        self.host_ns = host_ns
        self.save = shutil.which(f"{iptables}-save") or f"{iptables}-save"
        self.restore = shutil.which(f"{iptables}-restore") or f"{iptables}-restore"

    def _run(self, argv: list[str], stdin: str | None = None) -> str:
        if self.host_ns:
            argv = ["ip", "netns", "exec", self.host_ns, *argv]
        r = subprocess.run(argv, input=stdin, capture_output=True, text=True)
        if r.returncode != 0:
            raise KernelError(f"{' '.join(argv[:3])} failed: {r.stderr.strip()}")
        return r.stdout

    # --- observe ------------------------------------------------------------------

    def observe(self) -> GwState:
        out = GwState()
        with netns.dumper(self.host_ns) as d:  # the fast reader: runs every full resync
            links = d.links()
            br = [link.index for link in links if link.name == BRIDGE]
            if br:
                for a in d.addrs():
                    if a.index == br[0]:
                        out.bridge = f"{a.address}/{a.prefixlen}"
                        break
                out.bridge = out.bridge or "?"
                for link in links:
                    if link.name.startswith("mn-gw") and link.master == br[0]:
                        out.ports[link.name] = GwPort("", link.name, "", "", "")
        out.rules = self.observe_rules()
        return out

    def observe_rules(self) -> str:
        lines, jumps = [], []
        for table in ("nat", "filter"):
            for line in self._run([self.save, "-t", table]).splitlines():
                m = OWNED.match(line)
                if m:
                    lines.append(f"{table} {m.group(1)} {m.group(2)}")
                elif JUMP.match(line):
                    jumps.append(f"{table} {line}")
        if not lines and not jumps:
            return ""
        # the desired text has no jump lines: present jumps are implied, missing ones
        # make the observed text differ so that the plan re-applies
        complete = all(f"{t} -A {c} -j {ch}" in jumps for t, (c, ch) in JUMPS.items())
        return "\n".join(lines) + ("" if complete else "\n(missing jump)")

    # --- apply --------------------------------------------------------------------

    def apply(self, ops: list[Op]) -> list[str]:
        gone = []
        for op in ops:
            try:
                if op.kind == "bridge":
                    self._bridge(str(op.arg))
                elif op.kind == "rules":
                    self._rules(str(op.arg))
                elif op.kind == "add_port":
                    assert isinstance(op.arg, GwPort)
                    if not self._add_port(op.arg):
                        gone.append(op.arg.netns)
                elif op.kind == "del_port":
                    with netns.ipr(self.host_ns) as ip:
                        idx = ip.link_lookup(ifname=str(op.arg))
                        if idx:
                            ip.link("del", index=idx[0])
                elif op.kind == "del_rules":
                    self.remove_rules()
                elif op.kind == "del_bridge":
                    with netns.ipr(self.host_ns) as ip:
                        idx = ip.link_lookup(ifname=BRIDGE)
                        if idx:
                            ip.link("del", index=idx[0])
            except NetlinkError as exc:
                raise KernelError(f"gwbridge {op.kind}: {exc}") from exc
        return gone

    def _bridge(self, addr: str) -> None:
        ip_, _, plen = addr.partition("/")
        with netns.ipr(self.host_ns) as ip:
            br = ip.link_lookup(ifname=BRIDGE)
            if not br:
                ip.link("add", ifname=BRIDGE, kind="bridge")
                br = ip.link_lookup(ifname=BRIDGE)
            for a in ip.get_addr(index=br[0]):
                if f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}" != addr:
                    ip.addr("del", index=br[0], address=a.get_attr("IFA_ADDRESS"),
                            prefixlen=a["prefixlen"])
            if not ip.get_addr(index=br[0]):
                ip.addr("add", index=br[0], address=ip_, prefixlen=int(plen))
            ip.link("set", index=br[0], state="up")
        self._run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])

    def _rules(self, text: str) -> None:
        by_table: dict[str, list[str]] = {"nat": [], "filter": []}
        for line in text.splitlines():
            table, chain, rest = line.split(" ", 2)
            by_table[table].append(f"-A {chain} {rest}")
        have = self._run([self.save])
        out = []
        for table, (builtin, chain) in JUMPS.items():
            out += [f"*{table}", f":{chain} - [0:0]", f"-F {chain}", *by_table[table]]
            if f"-A {builtin} -j {chain}" not in have:
                out.append(f"-I {builtin} 1 -j {chain}" if builtin == "FORWARD"
                           else f"-A {builtin} -j {chain}")
            out.append("COMMIT")
        self._run([self.restore, "--noflush"], "\n".join(out) + "\n")

    def remove_rules(self) -> None:
        have = self._run([self.save])
        out = []
        for table, (builtin, chain) in JUMPS.items():
            out.append(f"*{table}")
            if f"-A {builtin} -j {chain}" in have:
                out.append(f"-D {builtin} -j {chain}")
            if f":{chain} " in have:
                out += [f"-F {chain}", f"-X {chain}"]
            out.append("COMMIT")
        self._run([self.restore, "--noflush"], "\n".join(out) + "\n")

    def _add_port(self, port: GwPort) -> bool:
        try:
            fd = os.open(netns.path_of(port.netns), os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            with netns.ipr(self.host_ns) as ip:
                stale = ip.link_lookup(ifname=port.name)
                if stale:
                    ip.link("del", index=stale[0])
                ip.link("add", ifname=port.name, kind="veth",
                        peer={"ifname": port.ifname, "net_ns_fd": fd})
                idx = ip.link_lookup(ifname=port.name)[0]
                ip.link("set", index=idx, master=ip.link_lookup(ifname=BRIDGE)[0], state="up")
                ip.brport("set", index=idx, isolated=1)
        finally:
            os.close(fd)
        addr, _, plen = port.addr.partition("/")
        with netns.ipr(port.netns) as c:
            idx = c.link_lookup(ifname=port.ifname)[0]
            c.addr("replace", index=idx, address=addr, prefixlen=int(plen))
            c.link("set", index=idx, state="up")
            c.route("replace", dst="default", gateway=port.gateway, oif=idx)
        return True

    # --- container queries ----------------------------------------------------------

    def has_default_route(self, ns: str) -> bool:
        with netns.ipr(ns) as c:
            return any(r.get_attr("RTA_DST") is None and r["dst_len"] == 0
                       for r in c.get_routes(family=2, table=254))
