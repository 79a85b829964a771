"""Per-container plumbing: sockets inside the container's namespace, the NAT redirect,
resolv.conf.

Design notes
------------
* Docker's trick (reference section 1c): a UDP socket and a TCP listener are bound on
  **127.0.0.11 port 0** *inside* the container's namespace (a worker thread setns()es
  in, binds, and returns; the sockets keep their namespace), and the nat table of that
  namespace DNATs 127.0.0.11:53 to those ports and SNATs the source port back to 53.
  Port 53 is never bound, so the container may run its own DNS server on it.
* Kernel objects created per container namespace (and only there): chains
  ``MESHNET-DNS-OUTPUT`` and ``MESHNET-DNS-POSTROUTING`` in table nat, each with two
  rules, and one jump to each from ``OUTPUT`` / ``POSTROUTING`` for ``-d 127.0.0.11``.
  Applied with ``iptables-restore --noflush``: declaring our chains flushes and refills
  just them; the jumps are added only when missing, so applying twice changes nothing.
  Removing the namespace removes everything; :func:`nat_cleanup_text` removes it
  explicitly.
* resolv.conf for named namespaces: ``/etc/netns/NAME/resolv.conf`` (what ``ip netns
  exec`` bind-mounts over /etc/resolv.conf): ``nameserver 127.0.0.11`` and
  ``options ndots:0``, written atomically.
"""

from __future__ import annotations

import os
import socket
import subprocess
from dataclasses import dataclass

from meshnet import netns

DNS_ADDR = "127.0.0.11"
CHAIN_OUT = "MESHNET-DNS-OUTPUT"
CHAIN_POST = "MESHNET-DNS-POSTROUTING"
JUMP_OUT = f"-A OUTPUT -d {DNS_ADDR}/32 -j {CHAIN_OUT}"
JUMP_POST = f"-A POSTROUTING -d {DNS_ADDR}/32 -j {CHAIN_POST}"


@dataclass
class DnsSockets:
    udp: socket.socket
    tcp: socket.socket
    udp_port: int
    tcp_port: int

    def close(self) -> None:
        self.udp.close()
        self.tcp.close()


def _bind_pair(addr: str, port: int = 0) -> DnsSockets:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        udp.bind((addr, port))
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind((addr, port))
        tcp.listen(128)
        udp.setblocking(False)
        tcp.setblocking(False)
    except BaseException:
        udp.close()
        tcp.close()
        raise
    return DnsSockets(udp, tcp, udp.getsockname()[1], tcp.getsockname()[1])


def open_sockets(ns: str | None, addr: str = DNS_ADDR) -> DnsSockets:
    """UDP + listening TCP sockets on ``addr`` port 0 inside namespace ``ns`` (a name
    under /run/netns or a path such as /proc/PID/ns/net; None: the current one).

    Loopback must be up in the namespace (it is once any meshnet endpoint is attached).
    """
    return netns.run_in(ns, lambda: _bind_pair(addr))


def open_docker_upstream(ns: str, addr: str) -> DnsSockets:
    """Docker upstream mode: ``addr`` (link-local, /32 on the sandbox's loopback, so the
    sandbox answers ARP for it on its bridge) and UDP+TCP sockets on ``addr`` port 53
    inside the network's sandbox ``ns``. Docker's resolver in a container forwards the
    names it does not know there (the container reaches it over its meshnet interface,
    by the connected route the plugin's Join hands Docker)."""
    def inside() -> DnsSockets:
        from pyroute2.iproute.linux import IPRoute

        with IPRoute() as ip:
            have = {a.get_attr("IFA_ADDRESS") for a in ip.get_addr(index=1)}
            if addr not in have:
                ip.addr("add", index=1, address=addr, prefixlen=32)
        return _bind_pair(addr, 53)

    return netns.run_in(ns, inside)


def nat_rules_text(udp_port: int, tcp_port: int, with_jumps: bool = True) -> str:
    """iptables-restore input (use ``--noflush``) for the container's nat table."""
    lines = ["*nat", f":{CHAIN_OUT} - [0:0]", f":{CHAIN_POST} - [0:0]"]
    if with_jumps:
        lines += [JUMP_OUT, JUMP_POST]
    lines += [
        f"-A {CHAIN_OUT} -d {DNS_ADDR}/32 -p udp -m udp --dport 53 "
        f"-j DNAT --to-destination {DNS_ADDR}:{udp_port}",
        f"-A {CHAIN_OUT} -d {DNS_ADDR}/32 -p tcp -m tcp --dport 53 "
        f"-j DNAT --to-destination {DNS_ADDR}:{tcp_port}",
        f"-A {CHAIN_POST} -s {DNS_ADDR}/32 -p udp -m udp --sport {udp_port} "
        "-j SNAT --to-source :53",
        f"-A {CHAIN_POST} -s {DNS_ADDR}/32 -p tcp -m tcp --sport {tcp_port} "
        "-j SNAT --to-source :53",
        "COMMIT", "",
    ]
    return "\n".join(lines)


def nat_cleanup_text() -> str:
    """iptables-restore --noflush input removing our chains and jumps (all must exist)."""
    return "\n".join(["*nat", JUMP_OUT.replace("-A ", "-D ", 1),
                      JUMP_POST.replace("-A ", "-D ", 1), f"-F {CHAIN_OUT}",
                      f"-F {CHAIN_POST}", f"-X {CHAIN_OUT}", f"-X {CHAIN_POST}", "COMMIT", ""])


def _run_in(ns: str | None, argv: list[str], stdin: str = "") -> subprocess.CompletedProcess:
    return netns.run_cmd(ns, argv, input=stdin, capture_output=True, text=True, check=False)


def nat_repair_text(saved: str, udp_port: int, tcp_port: int) -> str | None:
    """The ``--noflush`` input that makes the container's nat table right, given its
    ``iptables-save -t nat`` text; None if it already is (nothing to run)."""
    have = saved.splitlines()
    text = nat_rules_text(udp_port, tcp_port, with_jumps=False)
    want_rules = [ln for ln in text.splitlines() if ln.startswith("-A ")]
    ours = [ln for ln in have if ln.startswith((f"-A {CHAIN_OUT} ", f"-A {CHAIN_POST} "))]
    jumps = [j for j in (JUMP_OUT, JUMP_POST) if j not in have]
    if not jumps and ours == want_rules:
        return None
    if jumps:
        head, rest = text.split("\n", 3)[:3], text.split("\n", 3)[3]
        text = "\n".join([*head, *jumps, rest])
    return text


def apply_nat(ns: str | None, udp_port: int, tcp_port: int) -> bool:
    """Install (or re-point, or repair) the redirect in ``ns``; idempotent: returns False
    when it was already right (one iptables-save, no restore). Raises OSError."""
    saved = _run_in(ns, ["iptables-save", "-t", "nat"])
    if saved.returncode != 0:
        raise OSError(f"iptables-save in {ns}: {saved.stderr.strip()}")
    text = nat_repair_text(saved.stdout, udp_port, tcp_port)
    if text is None:
        return False
    res = _run_in(ns, ["iptables-restore", "--noflush"], text)
    if res.returncode != 0:
        raise OSError(f"iptables-restore in {ns}: {res.stderr.strip()}")
    return True


def resolv_conf_text(options: str = "ndots:0") -> str:
    return f"nameserver {DNS_ADDR}\noptions {options}\n"


def write_resolv_conf(name: str, root: str = "/etc/netns", options: str = "ndots:0") -> str:
    """Write ``<root>/<name>/resolv.conf`` atomically; returns its path."""
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"invalid namespace name {name!r}")
    d = os.path.join(root, name)
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "resolv.conf")
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(resolv_conf_text(options))
    os.replace(tmp, path)
    return path


def remove_resolv_conf(name: str, root: str = "/etc/netns") -> None:
    """Remove what :func:`write_resolv_conf` wrote (and the directory if then empty)."""
    d = os.path.join(root, name)
    try:
        os.unlink(os.path.join(d, "resolv.conf"))
    except FileNotFoundError:
        pass
    try:
        os.rmdir(d)
    except OSError:
        pass


def read_host_upstreams(include_loopback: bool = False,
                        paths: tuple[str, ...] = ("/etc/resolv.conf",
                                                  "/run/systemd/resolve/resolv.conf")):
    """The host's upstreams: the first file giving any (the second is systemd-resolved's
    real list, used when /etc/resolv.conf only names the 127.0.0.53 stub)."""
    from meshnet.dns.forwarder import parse_resolv_conf

    for p in paths:
        try:
            with open(p) as f:
                ups = parse_resolv_conf(f.read(), include_loopback)
        except OSError:
            continue
        if ups:
            return ups
    return []


def remove_nat(ns: str | None) -> None:
    """Remove the redirect chains and jumps from ``ns``'s nat table, if present."""
    saved = _run_in(ns, ["iptables-save", "-t", "nat"])
    if saved.returncode != 0 or f":{CHAIN_OUT} " not in saved.stdout:
        return
    _run_in(ns, ["iptables-restore", "--noflush"], nat_cleanup_text())
