"""The overlay kernel adapter against the real kernel, on a 2-host lab (no gossip involved)."""

from __future__ import annotations

import subprocess
from ipaddress import ip_address

from meshnet.model import Endpoint, Network
from meshnet.vxlan.kernel import OverlayKernel
from meshnet.vxlan.plan import plan
from meshnet.vxlan.state import desired, mac_for


def ns_exec(ns: str, *cmd: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True,
                          timeout=timeout)


def test_two_hosts_ping_over_vxlan_and_plans_converge(make_lab):
    lab = make_lab(hosts=2, underlay_mtu=1400)
    net = Network(name="a", vni=0x4242, subnet="10.42.0.0/24")
    other = Network(name="b", vni=0x4243, subnet="10.42.0.0/24")  # same subnet, isolated
    for c, h in (("c1", "h1"), ("c2", "h2"), ("c3", "h2")):
        lab.run(h, c, ["sleep", "600"])
    eps = [
        Endpoint(network=n.name, ip=ip, mac=mac_for(ip_address(ip)), host=h, name=c,
                 netns=lab.spec.container_ns(c))
        for n, ip, h, c in ((net, "10.42.0.2", "h1", "c1"), (net, "10.42.0.3", "h2", "c2"),
                            (other, "10.42.0.3", "h2", "c3"))
    ]
    vteps = {h: lab.spec.host_addr(h) for h in ("h1", "h2")}
    nets = {"a": net, "b": other}
    # a prefix of its own: the lab agents reconcile (and would remove) "<host>-ov-*"
    kernels = {h: OverlayKernel(lab.spec.host_ns(h) + "-x-", host_ns=lab.spec.host_ns(h))
               for h in ("h1", "h2")}
    for h, k in kernels.items():
        want = desired(h, nets, eps, vteps, 1400, k.prefix)
        k.apply(plan(want, k.observe()))
        assert plan(want, k.observe()) == [], "second plan must be empty"

    c1 = lab.spec.container_ns("c1")
    r = ns_exec(c1, "ping", "-c", "2", "-W", "2", "10.42.0.3")
    assert r.returncode == 0, r.stdout + r.stderr
    # MTU derived from the underlay: 1400 - 50
    mtu = ns_exec(c1, "cat", "/sys/class/net/eth0/mtu").stdout.strip()
    assert mtu == "1350"
    r = ns_exec(c1, "ping", "-c", "1", "-W", "2", "-M", "do", "-s", str(1350 - 28), "10.42.0.3")
    assert r.returncode == 0, r.stdout + r.stderr
    r = ns_exec(c1, "ping", "-c", "1", "-W", "1", "-M", "do", "-s", str(1400 - 28), "10.42.0.3")
    assert r.returncode != 0 and "message too long" in (r.stdout + r.stderr).lower()

    # drift: delete the FDB entry by hand; the plan names exactly that and repairs it
    k1 = kernels["h1"]
    sb = next(iter(k1.observe().sandboxes))
    vx = f"mn-vx{0x4242:06x}"
    subprocess.run(["ip", "netns", "exec", sb, "bridge", "fdb", "del",
                    mac_for(ip_address("10.42.0.3")), "dev", vx, "dst", "192.0.2.2", "self"],
                   check=True)
    want = desired("h1", nets, eps, vteps, 1400, k1.prefix)
    ops = plan(want, k1.observe())
    assert [type(o).__name__ for o in ops] == ["SetFdb"]
    k1.apply(ops)
    assert plan(want, k1.observe()) == []

    # removal of the remote endpoint takes exactly its two entries
    want = desired("h1", nets, eps[:1] + eps[2:], vteps, 1400, k1.prefix)
    ops = plan(want, k1.observe())
    assert sorted(type(o).__name__ for o in ops) == ["DeleteFdb", "DeleteNeigh"]
    k1.apply(ops)
    assert plan(want, k1.observe()) == []
    # and the last local endpoint takes the whole sandbox with it
    for h, k in kernels.items():
        k.apply(plan(desired(h, nets, [], vteps, 1400, k.prefix), k.observe()))
        assert k.observe().sandboxes == {}
