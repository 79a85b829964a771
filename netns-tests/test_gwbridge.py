"""Issue 5 acceptance: egress through the per-host gateway bridge."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from conftest import api, ns_exec, py_in, settled, wait_until
from test_overlay import converged, overlay_setup, run


@pytest.fixture
def egress(make_lab):
    lab = make_lab(hosts=2)
    outside = lab.add_bare_host("h9")  # an "outside" server on the underlay: 192.0.2.9
    server = py_in(outside, "http", "8080", "hello {peer}", background=True)
    sink = py_in(outside, "sink", "9000", background=True)
    overlay_setup(lab, "app", "10.80.0.0/24")
    api(lab, "h1").post("/v1/networks", {"name": "priv", "subnet": "10.81.0.0/24",
                                         "internal": True})
    eps = {c: run(lab, h, c, net) for c, h, net in (("c1", "h1", "app"), ("c2", "h1", "app"),
                                                    ("c3", "h2", "app"), ("p1", "h1", "priv"))}
    converged(lab, 4)
    settled(lab)
    yield lab, eps
    for p in (server, sink):
        p.kill()
        p.wait()


def get(lab, c, url="http://192.0.2.9:8080/"):
    return py_in(lab.spec.container_ns(c), "get", url, "3")


def test_egress_masquerades_to_the_host_underlay_address(egress):
    lab, _ = egress
    for c, host_addr in (("c1", "192.0.2.1"), ("c3", "192.0.2.2")):
        r = get(lab, c)
        assert r.returncode == 0 and r.stdout.strip() == f"hello {host_addr}", r.stdout
    saved = ns_exec(lab.spec.host_ns("h1"), "iptables-save").stdout
    assert "-A MESHNET-GW-POSTROUTING -s 198.18.0.0/16 ! -o mn_gwbridge -j MASQUERADE" in saved


def test_no_traffic_between_containers_over_the_gateway_bridge(egress):
    lab, eps = egress

    def gw_addr(c):
        out = ns_exec(lab.spec.container_ns(c), "ip", "-o", "-4", "addr").stdout
        return next(line.split()[3].split("/")[0] for line in out.splitlines()
                    if "198.18." in line)
    a1, a2 = gw_addr("c1"), gw_addr("c2")
    assert a1 != a2
    for src, dst in (("c1", a2), ("c2", a1)):
        r = ns_exec(lab.spec.container_ns(src), "ping", "-c", "1", "-W", "1", dst)
        assert r.returncode != 0, f"{src} reached {dst} over the gateway bridge"
    assert ns_exec(lab.spec.container_ns("c1"), "ping", "-c", "1", "-W", "2",
                   eps["c2"]["ip"]).returncode == 0  # the overlay still connects them


def test_internal_network_has_no_way_out(egress):
    lab, _ = egress
    ns = lab.spec.container_ns("p1")
    routes = ns_exec(ns, "ip", "route").stdout
    assert "default" not in routes and "198.18." not in ns_exec(ns, "ip", "addr").stdout
    assert get(lab, "p1").returncode != 0


def test_agent_restart_keeps_outbound_connections(egress):
    lab, _ = egress
    before = ns_exec(lab.spec.host_ns("h1"), "iptables-save").stdout
    stream = py_in(lab.spec.container_ns("c1"), "stream", "192.0.2.9", "9000", "5",
                   background=True)
    time.sleep(1)
    os.kill(lab.agent_pid("h1"), signal.SIGKILL)
    time.sleep(0.3)
    lab.restart_agent("h1")
    out, _ = stream.communicate(timeout=30)
    assert json.loads(out)["error"] is None, out
    after = ns_exec(lab.spec.host_ns("h1"), "iptables-save").stdout
    strip = [ln.split(" [")[0] for ln in before.splitlines() if not ln.startswith("#")]
    assert strip == [ln.split(" [")[0] for ln in after.splitlines() if not ln.startswith("#")]


def test_everything_removed_with_the_last_endpoint(egress):
    lab, _ = egress
    for c in ("c1", "c2", "p1"):
        api(lab, "h1").delete(f"/v1/endpoints?netns={lab.spec.container_ns(c)}")
    wait_until(lambda: "mn_gwbridge" not in ns_exec(lab.spec.host_ns("h1"), "ip", "link").stdout,
               what="gateway bridge removed")
    saved = ns_exec(lab.spec.host_ns("h1"), "iptables-save").stdout
    assert "MESHNET" not in saved


def test_internal_network_dns_does_not_forward(egress):
    lab, _ = egress
    log = lab.spec.state_dir / "resolver.log"
    before = log.read_text() if log.exists() else ""
    out = ns_exec(lab.spec.container_ns("p1"), "dig", "+time=2", "+tries=1",
                  "leak-check.lab.example").stdout
    assert "status: REFUSED" in out, out
    ok = ns_exec(lab.spec.container_ns("c1"), "dig", "+short", "+time=2", "+tries=1",
                 "fine.lab.example").stdout.split()
    assert ok == ["192.0.2.253"]  # the same query from a non-internal container is answered
    after = log.read_text()
    assert "leak-check" not in after[len(before):] and "fine.lab.example" in after
