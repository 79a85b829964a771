"""Issue 6 acceptance: service VIPs, the routing mesh, health, local-only, affinity."""

from __future__ import annotations

import json
import os
import re
import signal
import time

import pytest
from conftest import (
    BOUNDS,
    DEFAULT,
    api,
    host_down,
    ns_exec,
    preset_args,
    py_in,
    settled,
    wait_until,
)
from test_overlay import converged, overlay_setup

from meshnet.errors import UserError


def task(lab, host, name, service, *cmd, network="app"):
    body = {"network": network, "name": name, "service": service, "aliases": []}
    return lab.run(host, name, list(cmd), body)["endpoint"]


def http_task(lab, host, name, service, port=80):
    return task(lab, host, name, service, *py("http", str(port), f"{name} {{peer}}"))


def py(*args):
    import sys
    return [sys.executable, "-m", "meshnet.testing.traffic", *args]


def hits(ns, url, n, gap=0.0):
    r = py_in(ns, "hits", url, str(n), str(gap), timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def spread_ok(res, names, n, share=0.2):
    c = res["counts"]
    assert res["errors"] == 0, res
    assert set(c) == set(names), c
    assert all(c[x] >= share * n for x in names), c


#: the backends that run here (the IPVS kernel test, tests/ipvs/test_ipvs.py, skips with
#: the reason on a kernel without ip_vs)
BACKENDS = ["iptables", "nftables"]


@pytest.fixture(params=BACKENDS)
def lb(request):
    return request.param


@pytest.fixture
def mesh(make_lab, lb, request):
    """3 task hosts (h1..h3) + h4 with no task; an outside client at 192.0.2.9."""
    preset = getattr(request, "param", "swift")
    lab = make_lab(hosts=4, agent_args=("--lb", lb, *preset_args(preset)))
    overlay_setup(lab, "app", "10.100.0.0/24")
    a = api(lab, "h1")
    web = a.post("/v1/services", {"name": "web", "network": "app", "ports": ["80/tcp"],
                                  "health": {"kind": "tcp", "interval": 0.2, "timeout": 0.2,
                                             "retries": 1}})
    udp = a.post("/v1/services", {"name": "dns", "network": "app", "ports": ["53/udp"]})
    for i in (1, 2, 3):
        http_task(lab, f"h{i}", f"web{i}", "web")
        task(lab, f"h{i}", f"u{i}", "dns", *py("udpecho", "53", f"u{i}"))
    lab.run("h4", "client", ["sleep", "3600"], {"network": "app", "name": "client",
                                                 "aliases": []})
    converged(lab, 7)
    a.post("/v1/published", {"published": 8080, "target": 80, "protocol": "tcp"})
    a.post("/v1/published", {"published": 5353, "target": 53, "protocol": "udp"})
    outside = lab.add_bare_host("h9")
    settled(lab)
    return lab, web, udp, outside


def test_vip_and_published_port_reach_every_task(mesh):
    lab, web, udp, outside = mesh
    client = lab.spec.container_ns("client")
    names = ["web1", "web2", "web3"]
    spread_ok(hits(client, f"http://{web['vip']}/", 300), names, 300)
    for h in ("h1", "h2", "h3", "h4"):  # h4 runs no task
        spread_ok(hits(outside, f"http://{lab.spec.host_addr(h)}:8080/", 300), names, 300)
    r = json.loads(py_in(client, "udphits", udp["vip"], "53", "150").stdout)
    assert r["errors"] <= 3 and set(r["counts"]) == {"u1", "u2", "u3"}, r
    for h in ("h1", "h4"):
        r = json.loads(py_in(outside, "udphits", lab.spec.host_addr(h), "5353", "150").stdout)
        assert r["errors"] <= 3 and set(r["counts"]) == {"u1", "u2", "u3"}, r
    # localhost on a host, as Docker's routing mesh
    r = ns_exec(lab.spec.host_ns("h4"), *py("get", "http://127.0.0.1:8080/", "3"))
    assert r.returncode == 0 and r.stdout.split()[0] in names, r.stdout + r.stderr


def test_health_check_removes_a_dead_task_within_1s(mesh):
    lab, web, _, outside = mesh
    client = lab.spec.container_ns("client")
    pid = lab.containers()["web2"]["pid"]
    os.killpg(pid, signal.SIGKILL)  # the task's server dies; its namespace stays
    killed = time.time()
    res = hits(client, f"http://{web['vip']}/", 60, gap=0.05)
    late = [b for t, b in res["log"] if t > killed + 1.0]
    assert late and all(b.split()[0] in ("web1", "web3") for b in late), res["log"][:30]
    # health is gossiped: every host stops sending to it (through the mesh too)
    res = hits(outside, f"http://{lab.spec.host_addr('h3')}:8080/", 40)
    assert "web2" not in res["counts"] and res["errors"] == 0, res


@pytest.mark.parametrize("mesh", DEFAULT, indirect=True)
def test_dead_host_tasks_removed(mesh, request):
    """A host dies: within the preset's bound of the kill (conftest.BOUNDS) its task is
    out of the VIP's rotation on the client's host, and the mesh from another host never
    sends to it."""
    lab, web, _, outside = mesh
    bound = BOUNDS[request.node.callspec.params["mesh"]]["detect"]
    client = lab.spec.container_ns("client")
    web3 = next(e["ip"] for e in api(lab, "h4").get("/v1/endpoints") if e["name"] == "web3")
    sandboxes = [n for n in os.listdir("/run/netns")
                 if n.startswith(lab.spec.host_ns("h4") + "-ov-")]

    def in_rules() -> bool:  # h4's load balancer (iptables or nftables) still names web3
        text = "".join(ns_exec(n, "iptables-save").stdout + ns_exec(n, "nft", "list",
                                                                     "ruleset").stdout
                       for n in sandboxes)
        return re.search(rf"(?<![\d.]){re.escape(web3)}(?!\d)", text) is not None
    assert in_rules()
    t0 = time.monotonic()
    host_down(lab, "h3")
    wait_until(lambda: not in_rules(), timeout=bound + 15, interval=0.05,
               what="web3 out of h4's load balancer")
    took = time.monotonic() - t0
    assert {m["name"]: m["state"] for m in api(lab, "h4").get("/v1/members")}["h3"] == "failed"
    assert took < bound, f"{took:.2f} s from the kill (bound {bound} s)"
    settled(lab)
    res = hits(client, f"http://{web['vip']}/", 60)
    assert res["errors"] == 0 and "web3" not in res["counts"], res
    res = hits(outside, f"http://{lab.spec.host_addr('h4')}:8080/", 30)
    assert res["errors"] == 0 and "web3" not in res["counts"], res


def test_local_only_keeps_client_address_and_affinity_sticks(make_lab, lb):
    lab = make_lab(hosts=2, agent_args=("--lb", lb))
    overlay_setup(lab, "app", "10.101.0.0/24")
    a = api(lab, "h1")
    a.post("/v1/services", {"name": "web", "network": "app", "ports": ["80/tcp"]})
    sticky = a.post("/v1/services", {"name": "sticky", "network": "app", "ports": ["80/tcp"],
                                     "affinity": "client-ip"})
    for i in (1, 2):
        http_task(lab, f"h{i}", f"web{i}", "web")
        http_task(lab, f"h{i}", f"st{i}", "sticky")
    lab.run("h2", "client", ["sleep", "3600"], {"network": "app", "name": "client",
                                                 "aliases": []})
    converged(lab, 5)
    a.post("/v1/published", {"published": 9090, "target": 80, "service": "web",
                             "local_only": True})
    outside = lab.add_bare_host("h9")
    settled(lab)
    res = hits(outside, f"http://{lab.spec.host_addr('h1')}:9090/", 20)
    assert res["counts"] == {"web1": 20}, res  # only the local task
    bodies = {b for _, b in res["log"]}
    assert bodies == {"web1 192.0.2.9"}, bodies  # the client's real address
    res = hits(lab.spec.container_ns("client"), f"http://{sticky['vip']}/", 40)
    assert len(res["counts"]) == 1 and res["errors"] == 0, res


def test_agent_restart_keeps_connections_and_rules(mesh, lb):
    lab, web, _, outside = mesh
    a = api(lab, "h1")
    raw = a.post("/v1/services", {"name": "raw", "network": "app", "ports": ["7000/tcp"]})
    task(lab, "h1", "rawt", "raw", *py("sink", "7000"))
    a.post("/v1/published", {"published": 7070, "target": 7000})
    for h in lab.spec.host_names:
        wait_until(lambda h=h: "rawt" in [e["name"] for e in api(lab, h).get("/v1/endpoints")],
                   what=f"rawt on {h}")
    settled(lab)

    def save(h):
        text = ns_exec(lab.spec.host_ns(h), "iptables-save").stdout
        sbs = sorted(n for n in os.listdir("/run/netns")
                     if n.startswith(lab.spec.host_ns(h) + "-ov-"))
        text += "".join(ns_exec(n, "iptables-save").stdout for n in sbs)
        text += "".join(ns_exec(n, "nft", "list", "ruleset").stdout for n in sbs)
        return [ln.split(" [")[0] for ln in text.splitlines() if not ln.startswith("#")]

    client = lab.spec.container_ns("client")  # on h4: VIP DNAT happens in h4's sandbox
    via_vip = py_in(client, "stream", raw["vip"], "7000", "5", background=True)
    via_mesh = py_in(outside, "stream", lab.spec.host_addr("h4"), "7070", "5", background=True)
    time.sleep(0.5)
    before = save("h4")
    os.kill(lab.agent_pid("h4"), signal.SIGKILL)
    time.sleep(0.3)
    lab.restart_agent("h4", extra=("--lb", lb))
    for p in (via_vip, via_mesh):
        out, _ = p.communicate(timeout=30)
        res = json.loads(out)
        assert res["error"] is None and res["sent"] > 100_000, res
    after = save("h4")
    assert sorted(set(before) - set(after)) == [] and sorted(set(after) - set(before)) == []
    assert after == before


def test_invalid_publish_and_service_input(mesh):
    lab, web, _, _ = mesh
    a = api(lab, "h2")
    before = (a.get("/v1/published"), a.get("/v1/services"))
    cases = [
        ({"published": 8080, "target": 80}, "already published"),
        ({"published": 8081, "target": 80, "service": "nope"}, "no service"),
        ({"published": 8082, "target": 81}, "no service expose"),
        ({"published": 8083, "target": 53, "protocol": "tcp", "service": "web"}, "does not expose"),
    ]
    for body, needle in cases:
        with pytest.raises(UserError, match=needle):
            a.post("/v1/published", body)
    with pytest.raises(UserError, match="outside"):
        a.post("/v1/services", {"name": "x", "network": "app", "vip": "10.200.0.5"})
    assert (a.get("/v1/published"), a.get("/v1/services")) == before


def test_host_mode_binds_only_where_a_task_runs(make_lab):
    lab = make_lab(hosts=2)
    overlay_setup(lab, "app", "10.102.0.0/24")
    a = api(lab, "h1")
    a.post("/v1/services", {"name": "web", "network": "app", "ports": ["80/tcp"]})
    http_task(lab, "h1", "web1", "web")
    converged(lab, 1)
    a.post("/v1/published", {"published": 9191, "target": 80, "mode": "host"})
    outside = lab.add_bare_host("h9")
    wait_until(lambda: py_in(outside, "get", "http://192.0.2.1:9191/", "2").returncode == 0,
               what="host-mode port on the task's host")
    r = py_in(outside, "get", "http://192.0.2.1:9191/", "2")
    assert r.stdout.split()[:2] == ["web1", "192.0.2.9"], r.stdout  # client address kept
    r = py_in(outside, "get", "http://192.0.2.2:9191/", "2")
    assert r.returncode != 0 and "refused" in r.stdout.lower(), r.stdout
    listeners = ns_exec(lab.spec.host_ns("h2"), "ss", "-Hlntu").stdout
    assert ":9191" not in listeners


def test_udp_flow_moves_when_its_backend_is_removed(make_lab, lb):
    """UDP has no close: the conntrack entry to a removed backend must be cleared, or the
    same client flow keeps hitting the dead task until the entry times out."""
    lab = make_lab(hosts=2, agent_args=("--lb", lb))
    overlay_setup(lab, "app", "10.103.0.0/24")
    a = api(lab, "h1")
    svc = a.post("/v1/services", {"name": "u", "network": "app", "ports": ["53/udp"]})
    for i in (1, 2):
        task(lab, f"h{i}", f"u{i}", "u", *py("udpecho", "53", f"u{i}"))
    lab.run("h1", "client", ["sleep", "600"], {"network": "app", "name": "client",
                                                "aliases": []})
    converged(lab, 3)
    settled(lab)
    flow = py_in(lab.spec.container_ns("client"), "udpsticky", svc["vip"], "53", "60", "0.1",
                 background=True)
    first = flow.stdout.readline().split()[1]  # the task this one flow is pinned to
    assert first in ("u1", "u2"), first
    other = "u2" if first == "u1" else "u1"
    removed = time.time()
    api(lab, "h1" if first == "u1" else "h2").delete(
        f"/v1/endpoints?netns={lab.spec.container_ns(first)}")
    rest, _ = flow.communicate(timeout=60)
    later = [line.split()[1] for line in rest.splitlines() if float(line.split()[0]) >
             removed + 1.0]
    assert later and set(later) == {other}, rest


def test_a_released_lb_address_can_be_a_containers(make_lab):
    """The LB address of a routing-mesh network has a local bridge FDB entry for its MAC.
    Once unpublished, the address is free; a container given it later (and so its MAC)
    must not find its frames swallowed by the bridge."""
    lab = make_lab(hosts=2)
    overlay_setup(lab, "app", "10.101.0.0/24")
    a = api(lab, "h1")
    a.post("/v1/services", {"name": "web", "network": "app", "ports": ["80/tcp"]})
    http_task(lab, "h2", "web2", "web")
    lab.run("h1", "keep", ["sleep", "3600"],  # keeps h1's sandbox when the mesh goes
            {"network": "app", "name": "keep", "aliases": []})
    a.post("/v1/published", {"published": 8080, "target": 80, "protocol": "tcp"})
    lb = wait_until(lambda: [e for e in api(lab, "h1").get("/v1/endpoints")
                             if e["host"] == "h1" and not e["netns"]], 10, what="LB address")
    ip, mac = lb[0]["ip"], lb[0]["mac"]
    vni = a.get("/v1/networks")[0]["vni"]
    sandbox = f"{lab.spec.host_ns('h1')}-ov-{vni:06x}"

    def br0_fdb() -> str:
        import subprocess
        return subprocess.run(["bridge", "-n", sandbox, "fdb", "show", "dev", "br0"],
                              capture_output=True, text=True).stdout
    wait_until(lambda: mac in br0_fdb(), 10, what="the LB address's FDB entry")
    a.delete("/v1/published/8080-tcp")
    wait_until(lambda: mac not in br0_fdb(), 10, what="the LB FDB entry removed")
    ep = lab.run("h1", "late", ["sleep", "3600"],
                 {"network": "app", "name": "late", "aliases": [], "ip": ip})["endpoint"]
    assert ep["ip"] == ip and ep["mac"] == mac
    r = ns_exec(lab.spec.container_ns("late"), "ping", "-c", "2", "-W", "2", "web2")
    assert r.returncode == 0, r.stdout + r.stderr
