"""Real-kernel development test of the iptables backend (root only).

Creates its own namespaces ``mn-lbdev-<pid>`` (the "host") and ``mn-lbdev-<pid>-ov-000100``
(a sandbox), applies the rendered rules with the real ``iptables-restore`` inside them,
checks ``iptables-save`` there, that observe() reads back exactly what was planned (so the
second plan is empty), that a one-backend change is partial, and that cleanup() removes
everything. The namespaces are removed in a finally.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from meshnet import netns
from meshnet.ipvs.iptables import CommandRunner, IptablesBackend, Observed, observed_of
from meshnet.ipvs.nftables import NftBackend, NftObserved, NftPlan
from meshnet.ipvs.planner import desired
from meshnet.ipvs.rules import HOST, render
from tests.ipvs.tables import LB_IPS, NETS, pub, svc, task

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("iptables-restore"),
    reason="needs root and iptables-restore")


def _save(ns: str, binary: str = "iptables") -> str:
    return subprocess.run(["ip", "netns", "exec", ns, f"{binary}-save"], check=True,
                          capture_output=True, text=True).stdout


@pytest.mark.parametrize("binary", ["iptables", "iptables-legacy"])
def test_apply_observe_partial_cleanup(binary):
    if not shutil.which(f"{binary}-restore"):
        pytest.skip(f"{binary}-restore not installed")
    host = f"mn-lbdev-{os.getpid()}"
    prefix = f"{host}-"
    sandbox = f"{prefix}ov-000100"
    try:
        netns.create(host)
        netns.create(sandbox)
        be = IptablesBackend(CommandRunner(prefix, binary=binary, host_ns=host))
        services = {"web": svc("web", affinity="client-ip"), "dns": svc(
            "dns", vip="10.0.0.101", ports=("53/udp", "53/tcp"))}
        eps = [task(f"10.0.0.{i}", f"h{i % 3 + 1}", "web") for i in range(2, 8)]
        eps += [task("10.0.0.20", "h1", "dns"), task("10.0.0.21", "h2", "dns")]
        pubs = [pub(8080, 80, "web"), pub(8081, 80, "web", local_only=True)]
        st = desired("h1", NETS, services, eps, {}, pubs, prefix, LB_IPS)
        assert st.sandbox(sandbox) is not None

        have = be.observe()
        assert have.namespaces() == set()
        ops = be.plan(st, have, full=True)
        assert {op.ns for op in ops} == {HOST, sandbox}
        have, skipped = be.apply(ops, have)
        assert skipped == []

        dump = _save(sandbox, binary)
        assert ":MESHNET-SERVICES" in dump and "-j MESHNET-SERVICES" in dump
        assert "--to-destination 10.0.0.7:80" in dump and "-m recent" in dump
        assert "MESHNET-INGRESS" in _save(host, binary)

        # what the kernel shows is exactly what we planned: nothing to do the second time
        seen = be.observe()
        assert seen.chains == observed_of(render(st)).chains
        assert seen.jumps == observed_of(render(st)).jumps
        assert be.plan(st, seen) == []

        # one backend goes away: only that service's chains change
        st2 = desired("h1", NETS, services, eps[1:], {}, pubs, prefix, LB_IPS)
        ops = be.plan(st2, seen)
        assert [op.ns for op in ops] == [sandbox]
        written = {name for (_t, name), _d in ops[0].written}
        assert all(n.startswith("MESHNET-SVC-") for n in written) and len(written) == 1
        assert not ops[0].deleted and not ops[0].jumps_added
        have, _ = be.apply(ops, seen)
        assert be.plan(st2, be.observe()) == []
        assert "10.0.0.2:80" not in _save(sandbox, binary)

        removed = be.cleanup()
        assert removed
        for ns in (host, sandbox):
            assert "MESHNET" not in _save(ns, binary)
        assert be.observe().namespaces() == set()
    finally:
        netns.remove(sandbox, kill=False)
        netns.remove(host, kill=False)


SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 80)); s.listen(64); print("ready", flush=True)
while True:
    c, a = s.accept(); c.sendall(f"{sys.argv[1]} {a[0]}".encode()); c.close()
"""
CLIENT = """
import socket, sys, collections
seen = collections.Counter()
for _ in range(int(sys.argv[2])):
    s = socket.create_connection((sys.argv[1], 80), timeout=2); seen[s.recv(64).decode()] += 1
print(dict(seen))
"""


def _sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_vip_datapath_in_a_sandbox(backend):
    """The packet path of the package docstring on a real kernel: containers on the
    sandbox bridge reach a VIP (a /32 on br0, DNATed in the sandbox with br_netfilter on),
    keep their source address, and a task reaching itself is masqueraded (hairpin)."""
    tag = f"mn-lbdev-{os.getpid()}"
    prefix = f"{tag}-"
    sandbox = f"{prefix}ov-000100"
    names = {"c9": "10.0.0.9", "t2": "10.0.0.2", "t3": "10.0.0.3"}
    procs = []
    try:
        netns.create(sandbox)
        ip = ["ip", "-n", sandbox]
        _sh(*ip, "link", "add", "br0", "type", "bridge")
        _sh(*ip, "addr", "add", "10.0.0.1/24", "dev", "br0")
        _sh(*ip, "addr", "add", "10.0.0.100/32", "dev", "br0")  # the VIP
        _sh(*ip, "link", "set", "br0", "up")
        _sh("ip", "netns", "exec", sandbox, "sysctl", "-qw", "net.ipv4.ip_forward=1",
            "net.bridge.bridge-nf-call-iptables=1", "net.ipv4.conf.all.send_redirects=0",
            "net.ipv4.conf.br0.send_redirects=0")
        for name, addr in names.items():
            ns = f"{prefix}{name}"
            netns.create(ns)
            _sh(*ip, "link", "add", f"v{name}", "type", "veth", "peer", "name", "eth0",
                "netns", ns)
            _sh(*ip, "link", "set", f"v{name}", "master", "br0", "up")
            _sh("bridge", "-n", sandbox, "link", "set", "dev", f"v{name}", "hairpin", "on")
            _sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            _sh("ip", "-n", ns, "link", "set", "eth0", "up")
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
            if name != "c9":
                p = subprocess.Popen(["ip", "netns", "exec", ns, "python3", "-c", SERVER, name],
                                     stdout=subprocess.PIPE, text=True)
                procs.append(p)
                assert p.stdout.readline().strip() == "ready"
        eps = [task("10.0.0.2", "h1", "web"), task("10.0.0.3", "h1", "web")]
        st = desired("h1", NETS, {"web": svc("web")}, eps, {}, [], prefix, {})
        if backend == "iptables":
            be = IptablesBackend(CommandRunner(prefix, host_ns=None))
            be.apply([op for op in be.plan(st, Observed()) if op.ns == sandbox], Observed())
        else:
            if not shutil.which("nft"):
                pytest.skip("nft not installed")
            nbe = NftBackend(CommandRunner(prefix, host_ns=None))
            p = nbe.plan(st, NftObserved())
            nbe.apply(NftPlan(tuple(op for op in p.tables if op.ns == sandbox), ()),
                      NftObserved())

        def client(ns: str) -> dict:
            out = subprocess.run(["ip", "netns", "exec", f"{prefix}{ns}", "python3", "-c",
                                  CLIENT, "10.0.0.100", "40"], check=True,
                                 capture_output=True, text=True).stdout
            return eval(out)  # noqa: S307 - our own client's dict

        seen = client("c9")
        assert set(seen) == {"t2 10.0.0.9", "t3 10.0.0.9"}  # both, client address kept
        assert min(seen.values()) >= 5
        seen = client("t2")  # hairpin: t2 reaching itself sees the bridge address
        assert set(seen) == {"t2 10.0.0.1", "t3 10.0.0.2"}
    finally:
        for p in procs:
            p.kill()
            p.wait()
        for name in names:
            netns.remove(f"{prefix}{name}", kill=True)
        netns.remove(sandbox, kill=False)
