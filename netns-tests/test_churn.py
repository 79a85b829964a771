"""Issue 10 at CI size: attach/detach and service churn leave nothing behind, and hostile
packets at the gossip port and the resolver are counted and dropped while the agent keeps
serving. (The 1,000-cycle churn and the 5-host load figures are `bench.run scale`.)"""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import api, ns_exec, settled, wait_until

from meshnet import netns
from meshnet.testing.identity import diff, snapshot


@pytest.mark.parametrize("lb", ["iptables", "nftables"])
def test_attach_detach_and_service_churn_leave_nothing(make_lab, lb):
    lab = make_lab(hosts=3, agent_args=["--lb", lb])
    a = api(lab, "h1")
    a.post("/v1/networks", {"name": "app", "subnet": "10.141.0.0/20"})
    a.post("/v1/services", {"name": "keep", "network": "app", "ports": ["80/tcp"]})
    keep = lab.run("h1", "keep", ["sleep", "3600"], {"network": "app", "name": "keep",
                                                     "service": "keep", "aliases": []})
    assert keep
    wait_until(lambda: all(len(api(lab, h).get("/v1/endpoints")) == 1
                           for h in lab.spec.host_names), what="first endpoint everywhere")
    settled(lab)
    before = snapshot(lab)
    # the snapshot sees meshnet's objects (keep's LB rules, its FDB entries elsewhere)
    nft = [x for k, v in before.items() if k.endswith(" nft") for x in v]
    assert any("MESHNET" in x or "meshnet" in x for x in nft), nft
    assert any(v for k, v in before.items() if k.endswith(" fdb")), before
    names = {h: [lab.spec.container_ns(f"{h}x{i}") for i in range(3)] for h in lab.spec.host_names}
    for nss in names.values():
        for ns in nss:
            netns.create(ns)
    try:
        def cycle(host: str, n: int) -> None:
            c = api(lab, host)
            for i in range(n):
                ns = names[host][i % 3]
                c.post("/v1/endpoints", {"netns": ns, "network": "app",
                                         "service": "keep" if i % 2 else None})
                c.delete(f"/v1/endpoints?netns={ns}")

        with ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda h: cycle(h, 40), lab.spec.host_names))
        for i in range(20):  # services with a task each, created and removed
            a.post("/v1/services", {"name": f"s{i}", "network": "app", "ports": ["81/tcp"]})
            ns = names["h2"][0]
            api(lab, "h2").post("/v1/endpoints", {"netns": ns, "network": "app",
                                                  "service": f"s{i}"})
            api(lab, "h2").delete(f"/v1/endpoints?netns={ns}")
            a.delete(f"/v1/services/s{i}")
    finally:
        for nss in names.values():
            for ns in nss:
                netns.remove(ns)

    def same():
        after = snapshot(lab)
        return after if after == before else None

    try:
        wait_until(same, timeout=40, interval=2, what="everything back to the start")
    except AssertionError:
        after = snapshot(lab)
        raise AssertionError(f"churn left objects behind: {diff(before, after)}") from None
    # and the cluster still works: one endpoint (keep) everywhere, the service alive
    for h in lab.spec.host_names:
        eps = api(lab, h).get("/v1/endpoints")
        assert [e["name"] for e in eps] == ["keep"]
        assert [s["name"] for s in api(lab, h).get("/v1/services")] == ["keep"]


def _dns_bad(lab) -> int:
    d = api(lab, "h1").get("/v1/metrics").get("dns", {})
    return d.get("malformed", 0) + d.get("dropped", 0)


def _gossip_drops(lab, host: str) -> int:
    g = api(lab, host).get("/v1/metrics").get("gossip", {})
    return sum(v for k, v in g.items() if k.startswith("drop."))


def test_hostile_packets_are_counted_and_dropped(make_lab):
    lab = make_lab(hosts=2)
    a = api(lab, "h1")
    a.post("/v1/networks", {"name": "app", "subnet": "10.142.0.0/24"})
    assert lab.run("h1", "c1", ["sleep", "3600"], {"network": "app", "name": "c1",
                                                   "aliases": []})
    drops0 = _gossip_drops(lab, "h1")
    # from h2's namespace to h1's gossip port: random junk, a truncated compound, an
    # oversized datagram, and junk on the TCP push/pull port
    sender = """
import random, socket
rng = random.Random(10)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(300):
    s.sendto(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 1400))), ("192.0.2.1", 7946))
s.sendto(bytes([7, 5, 0, 9]), ("192.0.2.1", 7946))
s.sendto(b"\\x00" * 65000, ("192.0.2.1", 7946))
for _ in range(5):
    t = socket.create_connection(("192.0.2.1", 7946), timeout=5)
    t.sendall(bytes(rng.randrange(256) for _ in range(3000)))
    t.close()
"""
    r = subprocess.run(["ip", "netns", "exec", lab.spec.host_ns("h2"), "python3", "-c", sender],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    wait_until(lambda: _gossip_drops(lab, "h1") >= drops0 + 290, timeout=10,
               what="gossip drops counted")
    # the resolver: junk datagrams from inside the container get dropped or FORMERR
    dns0 = _dns_bad(lab)
    junk = """
import random, socket
rng = random.Random(11)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(200):
    s.sendto(bytes(rng.randrange(256) for _ in range(rng.randrange(0, 600))), ("127.0.0.11", 53))
s.sendto(b"\\xff" * 9000, ("127.0.0.11", 53))
"""
    r = subprocess.run(["ip", "netns", "exec", lab.spec.container_ns("c1"), "python3", "-c",
                        junk], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    wait_until(lambda: _dns_bad(lab) >= dns0 + 150, timeout=10, what="malformed DNS counted")
    # everything still works: membership, a DNS answer, the API
    assert all(m["state"] == "alive" for m in a.get("/v1/members"))
    out = ns_exec(lab.spec.container_ns("c1"), "dig", "+short", "+time=2", "c1").stdout
    assert out.strip() == a.get("/v1/endpoints")[0]["ip"]
