"""``meshnet cleanup``: remove every kernel object meshnet owns on this host, nothing else.

What meshnet owns, by name (style guide rule 5):

* labs recorded under /run/meshnet/*/lab.json (their processes, namespaces, containers);
* network namespaces named ``mn-*`` (with any process still inside them);
* links named ``mn-*`` / ``mn_*`` in this namespace, and VLAN sub-interfaces with the
  alias ``meshnet`` (made for macvlan networks' ``NAME.VLAN`` parents);
* iptables chains named ``MESHNET-*`` (nft and legacy back ends, every table), and the
  jumps into them from built-in chains;
* nftables tables named ``meshnet*``;
* in containers' namespaces, the DNS redirect chains ``MESHNET-DNS-*``, and the
  ``/etc/netns/NAME/resolv.conf`` files meshnet wrote.

Each step is safe to repeat; objects that are already gone are skipped.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

from pyroute2.iproute.linux import IPRoute

from meshnet import netns
from meshnet.macvlan.state import VLAN_ALIAS

OWNED_LINK = re.compile(r"^mn[-_]")
OWNED_CHAIN = re.compile(r"^MESHNET-[A-Za-z0-9_-]*$")


def owned_links() -> list[str]:
    """Links named mn-*/mn_*, and the VLAN sub-interfaces meshnet made for macvlan
    networks (alias ``meshnet``)."""
    out = []
    with IPRoute() as ip:
        for link in ip.get_links():
            name = link.get_attr("IFLA_IFNAME")
            if name and (OWNED_LINK.match(name) or link.get_attr("IFLA_IFALIAS") == VLAN_ALIAS):
                out.append(name)
    return sorted(out)


def remove_links() -> list[str]:
    removed = []
    with IPRoute() as ip:
        for name in owned_links():
            idx = ip.link_lookup(ifname=name)
            if idx:
                try:
                    ip.link("del", index=idx[0])
                    removed.append(name)
                except Exception:  # a veth peer that went with its partner
                    pass
    return removed


def _saver(binary: str) -> str | None:
    return shutil.which(binary)


def iptables_owned(save: str) -> dict[str, list[str]]:
    """{table: [chain, ...]} of MESHNET-* chains in an iptables-save dump."""
    out: dict[str, list[str]] = {}
    table = ""
    for line in save.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        elif line.startswith(":"):
            chain = line[1:].split()[0]
            if OWNED_CHAIN.match(chain):
                out.setdefault(table, []).append(chain)
    return out


def remove_iptables() -> list[str]:
    removed = []
    for variant in ("iptables", "iptables-legacy", "ip6tables", "ip6tables-legacy"):
        save, restore = _saver(f"{variant}-save"), _saver(f"{variant}-restore")
        if not save or not restore:
            continue
        dump = subprocess.run([save], capture_output=True, text=True).stdout
        owned = iptables_owned(dump)
        if not owned:
            continue
        lines = []
        for table, chains in owned.items():
            lines.append(f"*{table}")
            # drop every rule that jumps to one of ours, then flush and delete ours
            current = ""
            for line in dump.splitlines():
                if line.startswith("*"):
                    current = line[1:].strip()
                elif current == table and line.startswith("-A "):
                    parts = line.split()
                    if any(OWNED_CHAIN.match(p) for p in parts[2:]) and not OWNED_CHAIN.match(
                            parts[1]):
                        lines.append("-D " + line[3:])
            lines += [f"-F {c}" for c in chains] + [f"-X {c}" for c in chains] + ["COMMIT"]
            removed += [f"{variant}:{table}/{c}" for c in chains]
        subprocess.run([restore, "--noflush"], input="\n".join(lines) + "\n", text=True,
                       capture_output=True, check=False)
    return removed


def remove_nft() -> list[str]:
    nft = shutil.which("nft")
    if not nft:
        return []
    out = subprocess.run([nft, "list", "tables"], capture_output=True, text=True).stdout
    removed = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "table" and parts[2].startswith("meshnet"):
            subprocess.run([nft, "delete", "table", parts[1], parts[2]], capture_output=True)
            removed.append(f"{parts[1]} {parts[2]}")
    return removed


def remove_container_state() -> list[str]:
    """In other named namespaces (containers), meshnet owns only its DNS redirect chains;
    in /etc/netns it owns the resolv.conf files it wrote (same content, byte for byte)."""
    from meshnet.dns.sandbox import resolv_conf_text

    removed = []
    for ns in netns.list_netns():
        if ns.startswith("mn-"):
            continue
        try:
            removed += [f"{ns}:{c}" for c in netns.run_in(ns, remove_iptables)]
        except OSError:
            continue
    root = "/etc/netns"
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        path = os.path.join(root, name, "resolv.conf")
        try:
            with open(path) as f:
                if f.read() != resolv_conf_text():
                    continue
            os.unlink(path)
            removed.append(path)
            os.rmdir(os.path.join(root, name))
        except OSError:
            continue
    return removed


def cleanup_host() -> dict[str, list[str]]:
    from meshnet.lab.lab import Lab

    labs = []
    for name in Lab.names():
        Lab.load(name).down()
        labs.append(name)
    namespaces = [n for n in netns.list_netns() if n.startswith("mn-") and netns.remove(n)]
    return {
        "labs": labs,
        "namespaces": namespaces,
        "links": remove_links(),
        "iptables": remove_iptables(),
        "nftables": remove_nft(),
        "containers": remove_container_state(),
    }
