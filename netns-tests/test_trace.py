"""Issue 9 acceptance: `meshnet trace` walks real probes through a 3-host lab."""

from __future__ import annotations

import json
import os
import time

import pytest
from conftest import api, meshnet, ns_exec, wait_until
from test_overlay import converged, overlay_setup


def py(*args):
    import sys
    return [sys.executable, "-m", "meshnet.testing.traffic", *args]


@pytest.fixture
def svc(make_lab):
    """Service web (80/tcp) with its only task on h3, client c1 on h1, 8080 published."""
    lab = make_lab(hosts=3)
    overlay_setup(lab, "app", "10.120.0.0/24")
    a = api(lab, "h1")
    web = a.post("/v1/services", {"name": "web", "network": "app", "ports": ["80/tcp"]})
    task = lab.run("h3", "web3", py("http", "80", "web3 {peer}"),
                   {"network": "app", "name": "web3", "service": "web", "aliases": []})
    c1 = lab.run("h1", "c1", ["sleep", "3600"], {"network": "app", "name": "c1",
                                                  "aliases": []})
    converged(lab, 2)
    a.post("/v1/published", {"published": 8080, "target": 80, "protocol": "tcp"})
    net = next(n for n in a.get("/v1/networks") if n["name"] == "app")
    wait_until(lambda: all(len(api(lab, h).get("/v1/endpoints")) == 5
                           for h in lab.spec.host_names),  # + one LB address per host
               what="LB addresses everywhere")
    time.sleep(0.5)
    return lab, web, task["endpoint"], c1["endpoint"], net


def trace(lab, host, *args):
    r = meshnet("trace", "--api", lab.spec.api_socket(host), "--json", *args)
    assert r.stdout, r.stderr
    return r.returncode, json.loads(r.stdout)


def hop(report, name):
    return next(h for h in report["hops"] if h["name"] == name)


def no_trace_state(lab):
    """Nothing left by a trace: no table entries on any host, no capture sockets."""
    for h in lab.spec.host_names:
        wait_until(lambda h=h: api(lab, h).get("/v1/trace") == [], timeout=5,
                   what=f"no trace entries on {h}")
        for ns in [lab.spec.host_ns(h)] + [n for n in os.listdir("/run/netns")
                                            if n.startswith(lab.spec.host_ns(h) + "-ov-")]:
            lines = ns_exec(ns, "cat", "/proc/net/packet").stdout.strip().splitlines()
            assert len(lines) <= 1, (ns, lines)  # the header only


def test_trace_to_service_on_h3_shows_every_hop(svc):
    lab, web, task, c1, net = svc
    rc, rep = trace(lab, "h1", "c1", "web")
    assert rc == 0 and rep["verdict"]["ok"], json.dumps(rep, indent=1)
    names = [h["name"] for h in rep["hops"]]
    assert names == ["resolution", "load-balancing", "source", "encapsulation",
                     "decapsulation", "delivery", "reply"], names
    assert all(h["ok"] for h in rep["hops"]), rep["hops"]
    assert web["vip"] in hop(rep, "resolution")["observed"]
    assert task["ip"] in hop(rep, "load-balancing")["observed"]
    h1, h3 = lab.spec.host_addr("h1"), lab.spec.host_addr("h3")
    outer = f"{h1} -> {h3} udp/4789 vni {net['vni']}"
    assert hop(rep, "encapsulation")["observed"] == outer
    assert outer in hop(rep, "decapsulation")["observed"]
    assert hop(rep, "delivery")["where"].startswith("h3 ")
    assert "[SA]" in hop(rep, "reply")["observed"]
    underlay = [s for s in rep["seen"] if s["p"] == "underlay"]
    assert {s["h"] for s in underlay} == {"h1", "h3"}
    assert all(s["o"] == [h1, h3, 4789, net["vni"]] for s in underlay), underlay
    assert rep["expected"]["vni"] == net["vni"]
    no_trace_state(lab)
    # people's output, and pcaps
    out = meshnet("trace", "--api", lab.spec.api_socket("h1"), "c1", "web:80/tcp", "--pcap",
                  str(lab.spec.state_dir / "pcap"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "encapsulation" in out.stdout and "verdict: delivered" in out.stdout, out.stdout
    files = os.listdir(lab.spec.state_dir / "pcap")
    assert any("-h3-task-" in f for f in files) and any("-h1-underlay-" in f for f in files)


def test_missing_fdb_entry_is_named(svc):
    lab, web, task, c1, net = svc
    vni = f"{net['vni']:06x}"
    sandbox = f"{lab.spec.host_ns('h1')}-ov-{vni}"
    full = lambda: api(lab, "h1").get("/v1/metrics")["reconcile"]["vxlan"]["full_runs"]  # noqa: E731
    n = full()
    wait_until(lambda: full() > n, timeout=40, what="an overlay full resync on h1")
    # right after a full resync: ~30 s before the next one repairs the entry
    r = ns_exec(sandbox, "bridge", "fdb", "del", task["mac"], "dev", f"mn-vx{vni}",
                "dst", lab.spec.host_addr("h3"))
    assert r.returncode == 0, r.stderr
    rc, rep = trace(lab, "h1", "c1", "web")
    assert rc == 1, json.dumps(rep, indent=1)
    v = rep["verdict"]
    assert v["hop"] == "encapsulation", v
    assert "missing FDB entry" in v["cause"] and task["mac"] in v["cause"], v
    assert hop(rep, "load-balancing")["ok"] and hop(rep, "source")["ok"]
    # meshnet repairs it by itself at its next full resync
    wait_until(lambda: task["mac"] in ns_exec(sandbox, "bridge", "fdb", "show").stdout,
               timeout=40, what="FDB entry repaired")
    no_trace_state(lab)


def test_published_port_from_h2_shows_the_mesh_hop(svc):
    lab, web, task, c1, net = svc
    rc, rep = trace(lab, "h2", "--from", "h2", ":8080")
    assert rc == 0 and rep["verdict"]["ok"], json.dumps(rep, indent=1)
    mesh = hop(rep, "mesh")
    assert mesh["ok"] and "web3 on h3" in mesh["expected"], mesh
    assert lab.spec.host_addr("h3") in mesh["expected"]
    assert web["vip"] in mesh["observed"] or web["vip"] in mesh["expected"]
    h2, h3 = lab.spec.host_addr("h2"), lab.spec.host_addr("h3")
    assert hop(rep, "encapsulation")["observed"] == f"{h2} -> {h3} udp/4789 vni {net['vni']}"
    assert hop(rep, "delivery")["ok"] and hop(rep, "reply")["ok"]
    no_trace_state(lab)


def test_unknown_name_stops_at_resolution(svc):
    lab, *_ = svc
    rc, rep = trace(lab, "h1", "c1", "nosuch.lab.invalid:80")
    assert rc == 1
    assert [h["name"] for h in rep["hops"]] == ["resolution"]
    assert rep["verdict"]["hop"] == "resolution" and "NXDOMAIN" in rep["verdict"]["cause"]
    out = meshnet("trace", "--api", lab.spec.api_socket("h1"), "c1", "nosuch")
    assert out.returncode == 1 and "NXDOMAIN" in out.stdout, out.stdout + out.stderr
    no_trace_state(lab)
