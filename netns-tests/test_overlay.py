"""Issue 4 acceptance: VXLAN overlay on a 3-host lab, programmed from gossip."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from conftest import api, host_down, listening, ns_exec, py_in, wait_until


def overlay_setup(lab, network="app", subnet="10.60.0.0/24"):
    api(lab, "h1").post("/v1/networks", {"name": network, "subnet": subnet})
    for h in lab.spec.host_names:  # the network reaches every host by gossip
        wait_until(lambda h=h: network in [n["name"] for n in api(lab, h).get("/v1/networks")],
                   what=f"network {network} on {h}")


def run(lab, host, name, network, *cmd):
    rec = lab.run(host, name, list(cmd) or ["sleep", "3600"],
                  {"network": network, "name": name, "aliases": []})
    return rec["endpoint"]


def converged(lab, count):
    def check():
        return all(len(api(lab, h).get("/v1/endpoints")) == count for h in lab.spec.host_names)
    wait_until(check, timeout=10, what=f"{count} endpoints on every host")


def kernel_dump(lab, host):
    """FDB, neighbour and link state of every sandbox of a host, as text (duplicates show)."""
    prefix = lab.spec.host_ns(host) + "-ov-"
    out = []
    for ns in sorted(n for n in os.listdir("/run/netns") if n.startswith(prefix)):
        out.append(ns)
        out += sorted(line for line in ns_exec(ns, "bridge", "fdb", "show").stdout.splitlines()
                      if " dst " in line)
        out += sorted(ns_exec(ns, "ip", "neigh", "show", "nud", "permanent").stdout.splitlines())
        out += sorted(ns_exec(ns, "ip", "-br", "link").stdout.splitlines())
    return out


@pytest.fixture
def three(make_lab):
    lab = make_lab(hosts=3)
    overlay_setup(lab)
    overlay_setup(lab, "other", "10.60.0.0/24")  # same subnet, another VNI
    eps = {c: run(lab, h, c, "app") for c, h in (("c1", "h1"), ("c2", "h2"), ("c3", "h3"))}
    eps["x1"] = run(lab, "h2", "x1", "other")
    converged(lab, 4)
    return lab, eps


def ping(lab, src, ip, count=1):
    return ns_exec(lab.spec.container_ns(src), "ping", "-c", str(count), "-W", "2", ip)


def test_cross_host_ping_tcp_and_isolation(three):
    lab, eps = three
    for src, dst in (("c1", "c2"), ("c1", "c3"), ("c2", "c3"), ("c3", "c1")):
        r = ping(lab, src, eps[dst]["ip"])
        assert r.returncode == 0, (src, dst, r.stdout)
    sink = py_in(lab.spec.container_ns("c3"), "sink", "5001", background=True)
    try:
        listening(lab.spec.container_ns("c3"), 5001)
        r = py_in(lab.spec.container_ns("c1"), "stream", eps["c3"]["ip"], "5001", "1")
        res = json.loads(r.stdout)
        assert res["error"] is None and res["sent"] > 50_000, r
    finally:
        sink.kill()
        sink.wait()
    for dst in ("c1", "c2", "c3"):  # another network with the same subnet reaches none
        if eps[dst]["ip"] != eps["x1"]["ip"]:
            assert ping(lab, "x1", eps[dst]["ip"]).returncode != 0


class Capture:
    """ICMP echo requests arriving on a container's eth0 (incoming only), seen by tcpdump."""

    def __init__(self, lab, ctr: str) -> None:
        import subprocess

        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", lab.spec.container_ns(ctr), "tcpdump", "-i", "eth0", "-Q", "in", "-nn",
             "-l", "icmp[icmptype] == icmp-echo"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.proc.stderr.readline()  # "listening on eth0 ...": capturing from here on

    def stop(self) -> list[str]:
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=10)
        return [line for line in out.splitlines() if line.strip()]


def test_same_subnet_networks_isolated_on_the_wire(three):
    """Packet evidence: with the same addresses on two networks (x2 on 'other' holds c3's
    address, x3 holds c1's), pings on one network reach exactly their own network's
    holder of the address; tcpdump in the other network's holder sees none of them."""
    lab, eps = three
    body = {"network": "other", "aliases": []}
    eps["x2"] = lab.run("h1", "x2", ["sleep", "3600"],
                        {**body, "name": "x2", "ip": eps["c3"]["ip"]})["endpoint"]
    eps["x3"] = lab.run("h3", "x3", ["sleep", "3600"],
                        {**body, "name": "x3", "ip": eps["c1"]["ip"]})["endpoint"]
    converged(lab, 6)
    caps = {c: Capture(lab, c) for c in ("c1", "c3", "x2", "x3")}
    try:
        assert ping(lab, "c2", eps["c3"]["ip"], count=3).returncode == 0  # app: c2 -> c3
        assert ping(lab, "x1", eps["x3"]["ip"], count=3).returncode == 0  # other: x1 -> x3
        assert ping(lab, "x2", eps["x3"]["ip"], count=3).returncode == 0  # other: x2 -> x3
        time.sleep(0.5)
    finally:
        seen = {c: cap.stop() for c, cap in caps.items()}
    src = {c: eps[c]["ip"] for c in eps}

    def echoes(ctr, sender):
        return [line for line in seen[ctr] if f"IP {src[sender]} >" in line]
    assert len(echoes("c3", "c2")) == 3, seen["c3"]
    assert len(echoes("x3", "x1")) == 3 and len(echoes("x3", "x2")) == 3, seen["x3"]
    # the same destination address on the other network saw nothing at all
    assert seen["x2"] == [], seen["x2"]  # holds c3's address on 'other'
    assert seen["c1"] == [], seen["c1"]  # holds x3's address on 'app'


def test_detach_removes_entries_on_every_host_within_1s(three):
    lab, eps = three
    mac = eps["c3"]["mac"]
    for h in ("h1", "h2"):
        wait_until(lambda h=h: any(mac in line for line in kernel_dump(lab, h)),
                   what=f"c3's FDB entry on {h}")
    t0 = time.monotonic()
    api(lab, "h3").delete(f"/v1/endpoints?netns={lab.spec.container_ns('c3')}")
    for h in ("h1", "h2"):
        wait_until(lambda h=h: not any(mac in line for line in kernel_dump(lab, h)),
                   timeout=5, interval=0.02, what=f"c3's entries gone on {h}")
    assert time.monotonic() - t0 < 1.0


def test_killed_host_endpoints_removed_everywhere(three):
    lab, eps = three
    host_down(lab, "h3")

    def failed():
        return {m["name"]: m["state"] for m in api(lab, "h1").get("/v1/members")}.get(
            "h3") in ("dead", "failed")
    wait_until(failed, timeout=15, what="h3 marked failed")
    mac = eps["c3"]["mac"]
    for h in ("h1", "h2"):
        wait_until(lambda h=h: not any(mac in line for line in kernel_dump(lab, h)),
                   timeout=5, what=f"h3's endpoints gone on {h}")
        names = [e["name"] for e in api(lab, h).get("/v1/endpoints")]
        assert "c3" not in names


def test_agent_kill_and_restart_keeps_stream_and_kernel_state(three):
    lab, eps = three
    before = kernel_dump(lab, "h1")
    sink = py_in(lab.spec.container_ns("c2"), "sink", "5002", background=True)
    try:
        listening(lab.spec.container_ns("c2"), 5002)
        stream = py_in(lab.spec.container_ns("c1"), "stream", eps["c2"]["ip"], "5002", "6",
                       background=True)
        time.sleep(1)
        os.kill(lab.agent_pid("h1"), signal.SIGKILL)
        time.sleep(0.5)
        lab.restart_agent("h1")
        converged(lab, 4)
        out, err = stream.communicate(timeout=30)
        res = json.loads(out)
        assert res["error"] is None, res
        time.sleep(0.5)
        assert kernel_dump(lab, "h1") == before
    finally:
        sink.kill()
        sink.wait()


def test_mtu_from_underlay(make_lab):
    lab = make_lab(hosts=2, underlay_mtu=1400)
    overlay_setup(lab)
    eps = {c: run(lab, h, c, "app") for c, h in (("c1", "h1"), ("c2", "h2"))}
    converged(lab, 2)
    assert eps["c1"]["ifname"] == "eth0"
    ns = lab.spec.container_ns("c1")
    assert ns_exec(ns, "cat", "/sys/class/net/eth0/mtu").stdout.strip() == "1350"
    ok = ns_exec(ns, "ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1322", eps["c2"]["ip"])
    assert ok.returncode == 0, ok.stdout + ok.stderr
    big = ns_exec(ns, "ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1372", eps["c2"]["ip"])
    assert big.returncode != 0 and "message too long" in (big.stdout + big.stderr).lower()


def test_concurrent_attach_addresses_unique_cluster_wide(make_lab):
    from concurrent.futures import ThreadPoolExecutor

    from meshnet.errors import UserError
    from meshnet.lab.lab import netns

    lab = make_lab(hosts=3)
    overlay_setup(lab, "app", "10.61.0.0/28")  # 13 usable addresses: collisions are likely
    names = {h: [f"{h}n{i}" for i in range(3)] for h in lab.spec.host_names}
    for ns_names in names.values():
        for n in ns_names:
            netns.create(lab.spec.container_ns(n))

    def attach(host, n, ip=None):
        body = {"netns": lab.spec.container_ns(n), "network": "app", "name": n}
        if ip:
            body["ip"] = ip
        try:
            return api(lab, host).post("/v1/endpoints", body)
        except UserError as exc:
            return exc

    try:
        # the same static address asked on two hosts at once: exactly one gets it
        with ThreadPoolExecutor(4) as pool:
            a, b = pool.map(lambda hn: attach(*hn, ip="10.61.0.9"),
                            [("h1", "h1n0"), ("h2", "h2n0")])
        results = [a, b]
        winners = [r for r in results if isinstance(r, dict)]
        losers = [r for r in results if isinstance(r, UserError)]
        assert len(winners) == 1 and len(losers) == 1, results
        assert "in use" in str(losers[0])
        # dynamic addresses, many at once on every host: all unique everywhere
        jobs = [(h, n) for h, ns_names in names.items() for n in ns_names[1:]]
        with ThreadPoolExecutor(6) as pool:
            got = list(pool.map(lambda hn: attach(*hn), jobs))
        assert all(isinstance(g, dict) for g in got), got
        converged(lab, 1 + len(jobs))
        for h in lab.spec.host_names:
            ips = [e["ip"] for e in api(lab, h).get("/v1/endpoints")]
            assert len(ips) == len(set(ips)) == 1 + len(jobs)
    finally:
        for ns_names in names.values():
            for n in ns_names:
                netns.remove(lab.spec.container_ns(n))


def test_full_resync_repairs_a_deleted_fdb_entry(three):
    lab, eps = three
    mac = eps["c2"]["mac"]
    sandbox = next(n for n in os.listdir("/run/netns")
                   if n.startswith(lab.spec.host_ns("h1") + "-ov-"))
    wait_until(lambda: mac in ns_exec(sandbox, "bridge", "fdb", "show").stdout)
    vx = next(line.split()[2] for line in ns_exec(sandbox, "bridge", "fdb", "show").stdout
              .splitlines() if line.startswith(mac))
    ns_exec(sandbox, "bridge", "fdb", "del", mac, "dev", vx, "self", check=True)
    assert mac not in ns_exec(sandbox, "bridge", "fdb", "show").stdout
    wait_until(lambda: mac in ns_exec(sandbox, "bridge", "fdb", "show").stdout, timeout=40,
               what="the periodic full resync to restore the entry")
    assert ping(lab, "c1", eps["c2"]["ip"]).returncode == 0
