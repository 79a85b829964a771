"""Issue 20 acceptance: macvlan networks on the lab's underlay (the "physical" LAN)."""

from __future__ import annotations

import re
import subprocess
import threading

import pytest
from conftest import agent_log, api, lab_exec, meshnet, ns_exec, settled, unique, wait_until

from meshnet.errors import UserError

LAN = {"name": "lan", "subnet": "192.0.2.0/24", "driver": "macvlan",
       "gateway": "192.0.2.254", "ip_range": "192.0.2.128/26"}


def links(lab, host: str) -> str:
    return subprocess.run(["ip", "-n", lab.spec.host_ns(host), "-d", "link"],
                          capture_output=True, text=True).stdout


@pytest.fixture
def lan_lab(make_lab):
    lab = make_lab(hosts=2)
    api(lab, "h1").post("/v1/networks", LAN)
    for h in ("h1", "h2"):
        wait_until(lambda h=h: "lan" in [n["name"] for n in api(lab, h).get("/v1/networks")],
                   what=f"lan on {h}")
    return lab


def test_containers_on_the_lan_by_name_unique_addresses_direct_source(lan_lab):
    lab = lan_lab
    recs: dict[str, dict] = {}

    def run(host: str, name: str) -> None:
        recs[name] = lab.run(host, name, ["sleep", "3600"],
                             {"network": "lan", "name": name, "aliases": []})
    threads = [threading.Thread(target=run, args=(h, c)) for h, c in (("h1", "c1"),
                                                                      ("h2", "c2"))]
    for t in threads:  # attached at the same moment on two hosts
        t.start()
    for t in threads:
        t.join()
    ip1, ip2 = recs["c1"]["endpoint"]["ip"], recs["c2"]["endpoint"]["ip"]
    assert ip1 != ip2
    assert all(ip.startswith("192.0.2.1") and 128 <= int(ip.split(".")[3]) < 192
               for ip in (ip1, ip2)), (ip1, ip2)
    c1, c2 = lab.spec.container_ns("c1"), lab.spec.container_ns("c2")
    out = ns_exec(c1, "ip", "-d", "link", "show", "eth0").stdout
    assert "macvlan mode bridge" in out and "mtu 1500" in out
    assert "default via 192.0.2.254" in ns_exec(c1, "ip", "route").stdout
    # by name, both ways, through 127.0.0.11 on each host
    for src, dst in ((c1, "c2"), (c2, "c1")):
        r = wait_until(lambda s=src, d=dst: ns_exec(s, "ping", "-c1", "-W1", d).returncode == 0,
                       10, what=f"{src} pings {dst}")
        assert r
    assert ip2 in ns_exec(c1, "dig", "+short", "c2").stdout
    # straight onto the LAN: the outside resolver sees the container's own address
    resolver_ns = f"mn-{lab.spec.name}-h253"
    cap = subprocess.Popen(["ip", "netns", "exec", resolver_ns, "tcpdump", "-lni", "eth0",
                            "-c", "1", "udp port 53 and dst host 192.0.2.253"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cap.stderr.readline()  # "listening on eth0": capturing from here on
    assert "192.0.2.253" in ns_exec(c1, "dig", "+short", "@192.0.2.253",
                                    "example.com").stdout
    line = cap.communicate(timeout=10)[0]
    assert re.search(rf"IP {re.escape(ip1)}\.\d+ > 192\.0\.2\.253\.53", line), line
    # nothing of the overlay for a macvlan network
    assert "vxlan" not in links(lab, "h1")
    # the macvlan limit: the host cannot reach its own macvlan container (no shim here)
    host1 = lab.spec.host_ns("h1")
    assert ns_exec(host1, "ping", "-c1", "-W1", ip1).returncode != 0
    assert ns_exec(lab.spec.host_ns("h2"), "ping", "-c1", "-W1", ip1).returncode == 0
    # a restarted agent adopts the ports: no macvlan change applied
    before = agent_log(lab, "h1").count("macvlan change")
    lab.stop_agent("h1")
    lab.restart_agent("h1")
    settled(lab)  # every programmer ran (and found nothing to do)
    assert agent_log(lab, "h1").count("macvlan change") == before
    assert ns_exec(c1, "ping", "-c1", "-W1", "c2").returncode == 0


def test_dnsrr_services_and_what_is_refused(lan_lab):
    lab = lan_lab
    a = api(lab, "h1")
    with pytest.raises(UserError, match="--mode dnsrr"):
        a.post("/v1/services", {"name": "db", "network": "lan", "ports": ["5432/tcp"]})
    a.post("/v1/services", {"name": "db", "network": "lan", "mode": "dnsrr",
                            "ports": ["5432/tcp"]})
    for h, n in (("h1", "db1"), ("h2", "db2")):
        lab.run(h, n, ["sleep", "3600"], {"network": "lan", "name": n, "aliases": [],
                                          "service": "db"})
    lab.run("h2", "cl", ["sleep", "3600"], {"network": "lan", "name": "cl", "aliases": []})
    cl = lab.spec.container_ns("cl")
    ips = {e["ip"] for e in a.get("/v1/endpoints") if e["service"] == "db"}
    wait_until(lambda: set(ns_exec(cl, "dig", "+short", "tasks.db").stdout.split()) == ips,
               10, what="tasks.db")
    assert set(ns_exec(cl, "dig", "+short", "db").stdout.split()) == ips  # dnsrr: the tasks
    with pytest.raises(UserError, match="nothing to publish"):
        a.post("/v1/published", {"published": 5432, "target": 5432, "service": "db",
                                 "protocol": "tcp", "mode": "host"})


def kernel_has_8021q() -> bool:
    ns = f"mn-{unique()}-vl"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "add", "d0", "type", "veth", "peer", "d1"],
                       check=True)
        return subprocess.run(["ip", "-n", ns, "link", "add", "link", "d0", "name", "d0.42",
                               "type", "vlan", "id", "42"], capture_output=True).returncode == 0
    finally:
        subprocess.run(["ip", "netns", "del", ns])


HAS_8021Q = kernel_has_8021q()


@pytest.mark.skipif(HAS_8021Q, reason="this kernel has 802.1Q: the other test runs")
def test_vlan_parent_without_8021q_is_one_clear_line(make_lab):
    lab = make_lab(hosts=1)
    r = lab_exec(lab, "h1", "meshnet", "network", "create", "v42", "--driver", "macvlan",
                 "--subnet", "198.51.100.0/24", "--gateway", "198.51.100.254",
                 "--parent", "eth0.42")
    assert r.returncode == 2, r
    assert "cannot create the VLAN parent eth0.42: this kernel has no 802.1Q (8021q) " \
        "support" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert api(lab, "h1").get("/v1/networks") == []
    assert "mn-vlprobe" not in links(lab, "h1") and "eth0.42" not in links(lab, "h1")


@pytest.mark.skipif(not HAS_8021Q, reason="CONFIG_VLAN_8021Q is not set in this kernel: "
                                          "no VLAN sub-interface can be made here")
def test_vlan_parent_made_and_removed_with_its_network(make_lab):
    lab = make_lab(hosts=2)
    a = api(lab, "h1")
    a.post("/v1/networks", {"name": "v42", "subnet": "198.51.100.0/24", "driver": "macvlan",
                            "gateway": "198.51.100.254", "parent": "eth0.42"})
    for h in ("h1", "h2"):
        wait_until(lambda h=h: "eth0.42@eth0" in links(lab, h) and "vlan protocol 802.1Q id 42"
                   in links(lab, h), 10, what=f"eth0.42 on {h}")
    for h, n in (("h1", "v1"), ("h2", "v2")):
        lab.run(h, n, ["sleep", "3600"], {"network": "v42", "name": n, "aliases": []})
    v1 = lab.spec.container_ns("v1")
    wait_until(lambda: ns_exec(v1, "ping", "-c1", "-W1", "v2").returncode == 0, 10,
               what="v1 pings v2 over VLAN 42")
    # the frames on the LAN carry the tag
    cap = subprocess.Popen(["ip", "netns", "exec", lab.spec.host_ns("h2"), "tcpdump", "-lenni",
                            "eth0", "-c", "1", "vlan 42 and icmp"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    cap.stderr.readline()  # "listening on eth0": capturing from here on
    ns_exec(v1, "ping", "-c2", "-W1", "v2")
    assert "vlan 42" in cap.communicate(timeout=10)[0]
    for h, n in (("h1", "v1"), ("h2", "v2")):
        a2 = api(lab, h)
        a2.delete(f"/v1/endpoints?netns={lab.spec.container_ns(n)}")
    a.delete("/v1/networks/v42")
    for h in ("h1", "h2"):
        wait_until(lambda h=h: "eth0.42" not in links(lab, h), 10, what=f"eth0.42 gone on {h}")


def test_invalid_macvlan_input_is_one_line_and_changes_nothing(make_lab):
    lab = make_lab(hosts=2)
    cases = [
        (["--subnet", "192.0.2.0/24"], "needs --gateway"),
        (["--subnet", "192.0.2.0/24", "--gateway", "10.1.1.1"], "not a host address"),
        (["--subnet", "192.0.2.0/24", "--gateway", "192.0.2.254"], "contains host addresses"),
        (["--subnet", "192.0.2.0/24", "--gateway", "192.0.2.254", "--ip-range",
          "192.0.2.0/28"], "contains host addresses"),
        (["--subnet", "192.0.2.0/24", "--gateway", "192.0.2.254", "--ip-range",
          "192.0.2.128/26", "--parent", "nope0"], "parent interface nope0 does not exist"),
    ]
    for args, message in cases:
        r = lab_exec(lab, "h1", "meshnet", "network", "create", "bad", "--driver", "macvlan",
                     *args)
        assert r.returncode == 2, r
        assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert api(lab, "h1").get("/v1/networks") == []
    assert "--driver" in meshnet("network", "create", "--help").stdout


def test_the_shim_lets_a_host_reach_its_own_macvlan_containers(make_lab):
    lab = make_lab(hosts=2, agent_args=("--macvlan-shim",))
    api(lab, "h1").post("/v1/networks", LAN)
    wait_until(lambda: "lan" in [n["name"] for n in api(lab, "h2").get("/v1/networks")],
               what="lan on h2")
    ip1 = lab.run("h1", "c1", ["sleep", "3600"],
                  {"network": "lan", "name": "c1", "aliases": []})["endpoint"]["ip"]
    ip2 = lab.run("h2", "c2", ["sleep", "3600"],
                  {"network": "lan", "name": "c2", "aliases": []})["endpoint"]["ip"]
    host1 = lab.spec.host_ns("h1")
    wait_until(lambda: ns_exec(host1, "ping", "-c1", "-W1", ip1).returncode == 0, 10,
               what="h1 reaches its own container through the shim")
    assert ns_exec(host1, "ping", "-c1", "-W1", ip2).returncode == 0  # and the others
    shim = [e for e in api(lab, "h1").get("/v1/endpoints") if e["name"] == "h1-shim"]
    assert len(shim) == 1 and 128 <= int(shim[0]["ip"].split(".")[3]) < 192
    assert "mn-mvs" in links(lab, "h1")
    before = agent_log(lab, "h1").count("macvlan change")
    lab.stop_agent("h1")
    lab.restart_agent("h1")  # the shim is adopted, not made again
    settled(lab)
    assert agent_log(lab, "h1").count("macvlan change") == before
    # the last container gone: the shim and its address go too
    api(lab, "h1").delete(f"/v1/endpoints?netns={lab.spec.container_ns('c1')}")
    wait_until(lambda: "mn-mvs" not in links(lab, "h1"), 10, what="shim removed")
    wait_until(lambda: not [e for e in api(lab, "h2").get("/v1/endpoints")
                            if e["name"] == "h1-shim"], 5, what="the shim address released")


def test_trace_walks_the_lan_hop(lan_lab):
    import json
    import sys

    lab = lan_lab
    lab.run("h1", "c1", ["sleep", "3600"], {"network": "lan", "name": "c1", "aliases": []})
    lab.run("h2", "web", [sys.executable, "-m", "meshnet.testing.traffic", "http", "80", "hi"],
            {"network": "lan", "name": "web", "aliases": []})
    web = lab.spec.container_ns("web")
    wait_until(lambda: "LISTEN" in ns_exec(web, "ss", "-ltn").stdout, 10, what="web listens")
    r = lab_exec(lab, "h1", "meshnet", "trace", "c1", "web:80", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    hops = {h["name"]: h for h in report["hops"]}
    assert report["expected"]["lan"] == "eth0"
    assert hops["lan out"]["ok"] and hops["lan in"]["ok"], report["hops"]
    assert hops["delivery"]["ok"] and hops["reply"]["ok"], report["hops"]
    assert report["verdict"]["ok"], report["verdict"]
