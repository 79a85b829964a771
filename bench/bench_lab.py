"""Lab construction: meshnet's netlink (pyroute2) build of a 10-host underlay vs the same
topology built by a shell script of `ip` commands (how one does it by hand).

Both build: one underlay namespace with a bridge, and per host a namespace, a veth pair
into the bridge, an address, links up. Agents are not started (that is measured elsewhere).
"""

from __future__ import annotations

import os
import subprocess

from bench.common import Result, median, timed
from meshnet import netns
from meshnet.lab.lab import Lab
from meshnet.lab.topology import LabSpec

HOSTS = 10
REPEAT = 5


def _meshnet_build(name: str) -> None:
    lab = Lab(LabSpec(name=name, hosts=HOSTS))
    try:
        lab._build_underlay()
        with netns.ipr(lab.spec.underlay_ns) as ul:
            for h in lab.spec.host_names:
                lab._build_host(h, ul)
    finally:
        for n in [n for n in netns.list_netns() if n.startswith(lab.spec.ns_prefix)]:
            netns.remove(n, kill=False)


def _shell_script(name: str) -> str:
    ul = f"mn-{name}-ul"
    lines = [f"ip netns add {ul}", f"ip -n {ul} link set lo up",
             f"ip -n {ul} link add br0 type bridge", f"ip -n {ul} link set br0 up"]
    for k in range(1, HOSTS + 1):
        ns = f"mn-{name}-h{k}"
        lines += [
            f"ip netns add {ns}",
            f"ip -n {ul} link add h{k} type veth peer name eth0 netns {ns}",
            f"ip -n {ul} link set h{k} master br0 up",
            f"ip -n {ns} link set lo up",
            f"ip -n {ns} addr add 192.0.2.{k}/24 dev eth0",
            f"ip -n {ns} link set eth0 up",
        ]
    return "set -e\n" + "\n".join(lines) + "\n"


def _shell_build(name: str) -> None:
    try:
        subprocess.run(["sh", "-c", _shell_script(name)], check=True)
    finally:
        for n in [n for n in netns.list_netns() if n.startswith(f"mn-{name}-")]:
            netns.remove(n, kill=False)


def run() -> list[Result]:
    tag = f"b{os.getpid() % 10000}"
    mn = timed(lambda: _meshnet_build(tag + "m"), REPEAT)
    sh = timed(lambda: _shell_build(tag + "s"), REPEAT)
    return [Result(
        bench="lab", metric=f"build a {HOSTS}-host lab underlay (median of {REPEAT})",
        unit="s", meshnet=median(mn), anchor_name="shell script of `ip` commands",
        anchor=median(sh), goal="no slower than the shell anchor (ratio <= 1)",
        samples={"meshnet": mn, "anchor": sh},
    )]
