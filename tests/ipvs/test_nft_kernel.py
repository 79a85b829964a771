"""Real-kernel test of the nftables backend (root only): what it programs reads back as
planned (a second plan is empty), a one-backend change is one netlink transaction of
elements, a refused transaction changes nothing, cleanup removes the table. Namespaces
``mn-nftdev-<pid>*`` are removed in a finally."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess

import pytest

from meshnet import netns
from meshnet.errors import KernelError
from meshnet.ipvs.iptables import CommandRunner, IptablesBackend
from meshnet.ipvs.nftables import ElementWriter, NftBackend
from meshnet.ipvs.nftnl import SetChange, ranges_elems
from meshnet.ipvs.nftrules import TABLE, _range
from meshnet.ipvs.planner import desired
from meshnet.ipvs.rules import HOST
from tests.ipvs.tables import LB_IPS, NETS, pub, svc, task

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("nft") or not shutil.which("iptables-restore"),
    reason="needs root, nft and iptables-restore")


def _list(ns: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "ruleset"], check=True,
                          capture_output=True, text=True).stdout


@contextlib.contextmanager
def _host_and_sandbox(tag: str):
    """(prefix, host namespace, sandbox namespace), removed afterwards."""
    host = f"mn-nftdev-{os.getpid()}{tag}"
    prefix = f"{host}-"
    sandbox = f"{prefix}ov-000100"
    try:
        netns.create(host)
        netns.create(sandbox)
        yield prefix, host, sandbox
    finally:
        netns.remove(sandbox, kill=False)
        netns.remove(host, kill=False)


def test_apply_observe_change_cleanup():
    with _host_and_sandbox("") as (prefix, host, sandbox):
        be = NftBackend(CommandRunner(prefix, host_ns=host))
        services = {"web": svc("web", affinity="client-ip"), "dns": svc(
            "dns", vip="10.0.0.101", ports=("53/udp", "53/tcp"))}
        eps = [task(f"10.0.0.{i}", f"h{i % 3 + 1}", "web") for i in range(2, 8)]
        eps += [task("10.0.0.20", "h1", "dns"), task("10.0.0.21", "h2", "dns")]
        pubs = [pub(8080, 80, "web")]
        st = desired("h1", NETS, services, eps, {}, pubs, prefix, LB_IPS)
        have = be.observe()
        assert have.tables == {}
        p = be.plan(st, have, full=True)
        assert [op.ns for op in p.tables] == [sandbox] and {r.ns for r in p.rules} == {HOST}
        have, skipped = be.apply(p, have)
        assert skipped == []
        text = _list(sandbox)
        assert "10.0.0.101 . udp . 53 : goto svc_" in text
        assert "10.0.0.7 . 80" in text and "jhash ip saddr" in text
        assert "MESHNET" not in text  # the sandbox holds no iptables rules

        # the kernel holds exactly what was planned: nothing to do after a restart
        restarted = NftBackend(CommandRunner(prefix, host_ns=host))
        seen = restarted.observe()
        assert seen.tables == have.tables
        assert not restarted.plan(st, seen)

        # one backend goes away: elements of one map, no nft script
        st2 = desired("h1", NETS, services, eps[1:], {}, pubs, prefix, LB_IPS)
        p = be.plan(st2, have)
        assert [op.ns for op in p.tables] == [sandbox] and not p.rules
        assert p.tables[0].script == "" and len(p.tables[0].elements) == 1
        have, _ = be.apply(p, have)
        assert "10.0.0.2 . 80" not in _list(sandbox)
        assert be.observe().tables == have.tables

        # a service goes away: its dispatch element, chain and map
        st3 = desired("h1", NETS, {"web": services["web"]}, eps[1:6], {}, pubs, prefix,
                      LB_IPS)
        have, _ = be.apply(be.plan(st3, have), have)
        assert "10.0.0.101" not in _list(sandbox) and be.observe().tables == have.tables

        removed = be.cleanup()
        assert f"{sandbox}:table ip {TABLE}" in removed and len(removed) >= 2
        assert TABLE not in _list(sandbox)
        assert "MESHNET" not in subprocess.run(["ip", "netns", "exec", host, "iptables-save"],
                                               capture_output=True, text=True).stdout


def test_element_batches_are_atomic_and_follow_a_recreated_namespace():
    ns = f"mn-nftdev-{os.getpid()}-w"
    script = (f"add table ip {TABLE}\nadd map ip {TABLE} be_A {{ typeof numgen random mod "
              f"65536 : ip daddr . tcp dport; flags interval; }}\n")
    w = ElementWriter()
    try:
        netns.create(ns)
        subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=script,
                       text=True, check=True)
        two = ranges_elems([(0, 32767, "10.0.0.1", 80), (32768, 65535, "10.0.0.2", 80)])
        w.write(ns, TABLE, [SetChange("be_A", add=two)])

        def ranges():
            out = subprocess.run(["ip", "netns", "exec", ns, "nft", "-j", "list", "map",
                                  "ip", TABLE, "be_A"], capture_output=True, text=True).stdout
            m = next(o["map"] for o in json.loads(out)["nftables"] if "map" in o)
            return tuple(sorted(_range(e) for e in m.get("elem", [])))
        assert ranges() == ((0, 32767, "10.0.0.1", 80), (32768, 65535, "10.0.0.2", 80))
        one = ranges_elems([(0, 65535, "10.0.0.3", 80)])
        with pytest.raises(KernelError, match="No such file"):  # be_B does not exist
            w.write(ns, TABLE, [SetChange("be_A", two, one), SetChange("be_B", add=one)])
        assert ranges() == ((0, 32767, "10.0.0.1", 80), (32768, 65535, "10.0.0.2", 80))
        # the namespace is made again under the same name: a new socket, in the new one
        netns.remove(ns, kill=False)
        netns.create(ns)
        subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=script,
                       text=True, check=True)
        w.write(ns, TABLE, [SetChange("be_A", add=one)])
        assert ranges() == ((0, 65535, "10.0.0.3", 80),)
    finally:
        w.close()
        netns.remove(ns, kill=False)


def test_iptables_backend_removes_what_an_nftables_run_left():
    with _host_and_sandbox("-s") as (prefix, host, sandbox):
        st = desired("h1", NETS, {"web": svc("web")}, [task("10.0.0.2", "h1", "web")], {},
                     [], prefix, LB_IPS)
        be = NftBackend(CommandRunner(prefix, host_ns=host))
        be.apply(be.plan(st, be.observe()), be.observe())
        assert TABLE in _list(sandbox)
        ipt = IptablesBackend(CommandRunner(prefix, host_ns=host))
        have = ipt.observe()  # the switch: the nftables table would DNAT before our chains
        assert TABLE not in _list(sandbox)
        ipt.apply(ipt.plan(st, have), have)
        assert "MESHNET-SERVICES" in subprocess.run(
            ["ip", "netns", "exec", sandbox, "iptables-save"], capture_output=True,
            text=True).stdout
        # and back: the nftables backend removes the iptables chains from the sandbox
        seen = be.observe()
        be.apply(be.plan(st, seen), seen)
        assert "MESHNET" not in subprocess.run(
            ["ip", "netns", "exec", sandbox, "iptables-save"], capture_output=True,
            text=True).stdout
        assert TABLE in _list(sandbox)
