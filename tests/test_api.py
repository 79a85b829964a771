"""The agent's API over a real unix socket, in-process (no kernel objects involved)."""

import asyncio
import ipaddress
import os
import stat
import subprocess
import sys

import pytest

from meshnet.agent import Agent, pick_vni
from meshnet.api.client import ApiClient
from meshnet.api.server import ApiServer
from meshnet.config import AgentConfig
from meshnet.errors import UserError
from meshnet.testing.fakekernel import FakeGwKernel, FakeOverlayKernel


class FakeLbNet:
    def __init__(self):
        self.states = []

    def apply(self, state):
        self.states.append(state)
        return []


def fake_lb(host, mode, probe=None):
    from meshnet.ipvs.agentlb import LoadBalancing
    from meshnet.ipvs.iptables import IptablesBackend
    from tests.ipvs.fakeipt import FakeIptables

    ipt = FakeIptables(("", "mn-ov-000001"))
    return LoadBalancing(host, mode, backend=IptablesBackend(ipt), net=FakeLbNet(), probe=probe)


@pytest.fixture
def api(tmp_path):
    sock = str(tmp_path / "api.sock")
    loop = asyncio.new_event_loop()
    kernel = FakeOverlayKernel({"lab-c1", "lab-c2", "lab-c3"})
    agent = Agent(AgentConfig(node="t1", bind="127.0.0.1", api=sock, state_dir=str(tmp_path),
                              dns_upstreams=("127.0.0.1:9",)),
                  overlay_kernel=kernel,
                  gw_kernel=FakeGwKernel({"lab-c1", "lab-c2", "lab-c3"}, with_default={"lab-c3"}),
                  lb_factory=fake_lb)
    server = ApiServer(agent, sock)
    loop.run_until_complete(agent.start_dataplane())
    loop.run_until_complete(server.start())
    client = ApiClient(sock)

    def call(method, url, body=None):
        fut = loop.run_in_executor(None, client.request, method, url, body)
        return loop.run_until_complete(fut)

    call.loop = loop
    yield call, sock, agent
    loop.run_until_complete(server.stop())
    loop.run_until_complete(agent.stop_dataplane())
    pending = asyncio.all_tasks(loop)
    for t in pending:
        t.cancel()
    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    loop.close()


def test_socket_is_root_only(api):
    _, sock, _ = api
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600


def test_status_and_members(api):
    call, _, _ = api
    st = call("GET", "/v1/status")
    assert st["node"] == "t1" and st["state"] == "up" and st["networks"] == 0
    (me,) = call("GET", "/v1/members")
    assert me["name"] == "t1" and me["state"] == "alive"


def test_network_lifecycle_and_errors_change_nothing(api):
    call, _, agent = api
    net = call("POST", "/v1/networks", {"name": "app", "subnet": "10.1.0.0/24"})
    assert net["vni"] >= 4096 and net["subnet"] == "10.1.0.0/24"
    bad = [
        ({"name": "x", "subnet": "10.0.0.0/33"}, "subnet"),
        ({"name": "app", "subnet": "10.2.0.0/24"}, "already exists"),
        ({"name": "y", "subnet": "10.2.0.0/24", "vni": net["vni"]}, "already used"),
        ({"name": "y", "subnet": "10.2.0.0/24", "vni": 0}, "VNI"),
        ({"name": "y", "subnet": "10.2.0.0/24", "colour": "red"}, "unknown"),
        ({"name": "y"}, "needs"),
    ]
    for body, needle in bad:
        with pytest.raises(UserError, match=needle):
            call("POST", "/v1/networks", body)
    assert [n["name"] for n in call("GET", "/v1/networks")] == ["app"]
    with pytest.raises(UserError, match="no network"):
        call("DELETE", "/v1/networks/nope")
    call("DELETE", "/v1/networks/app")
    assert call("GET", "/v1/networks") == []


def test_same_subnet_allowed_in_two_networks(api):
    call, _, _ = api
    call("POST", "/v1/networks", {"name": "a", "subnet": "10.9.0.0/24"})
    call("POST", "/v1/networks", {"name": "b", "subnet": "10.9.0.0/24"})
    assert len(call("GET", "/v1/networks")) == 2


def test_pick_vni_deterministic_and_avoids_taken():
    v = pick_vni("app", set())
    assert v == pick_vni("app", set()) and 4096 <= v <= 16_777_215
    assert pick_vni("app", {v}) != v


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "meshnet", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})})


def test_cli_against_agent(api):
    call, sock, _ = api
    loop = call.loop

    def cli(*args):
        fut = loop.run_in_executor(None, lambda: run_cli(*args, "--api", sock))
        return loop.run_until_complete(fut)

    r = cli("network", "create", "app", "--subnet", "10.1.0.0/24", "--vni", "4242")
    assert r.returncode == 0 and "vni 4242" in r.stdout
    r = cli("network", "ls")
    assert "app" in r.stdout and "4242" in r.stdout
    r = cli("network", "create", "app", "--subnet", "10.1.0.0/24")
    assert r.returncode == 2 and r.stderr.strip() == "meshnet: error: network app already exists"
    r = cli("members", "--json")
    assert r.returncode == 0 and '"t1"' in r.stdout


@pytest.mark.parametrize("args,needle", [
    (["network", "create", "x", "--subnet", "10.0.0.0/33"], "subnet"),
    (["network", "create", "x", "--subnet", "10.0.0.0/24", "--vni", "0"], "VNI"),
    (["status", "--api", "/nonexistent/api.sock"], "no agent"),
    (["bogus"], "invalid choice"),
    (["agent", "--config", "/nonexistent.toml"], "does not exist"),
    (["lab", "exec", "--name", "BAD", "h1", "--", "true"], "lab name"),
])
def test_cli_user_errors_are_one_line_exit_2(args, needle):
    r = run_cli(*args, env={"MESHNET_API": "/nonexistent/api.sock"})
    assert r.returncode == 2, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in r.stderr


def test_attach_detach_program_the_overlay(api):
    call, _, agent = api
    call("POST", "/v1/networks", {"name": "app", "subnet": "10.1.0.0/24"})
    ep = call("POST", "/v1/endpoints", {"netns": "lab-c1", "network": "app", "name": "web1",
                                        "aliases": ["www"]})
    assert ep["ifname"] == "eth0" and ep["ip"].startswith("10.1.0.") and ep["host"] == "t1"
    kernel = agent.overlay_kernel
    assert len(kernel.state.sandboxes) == 1 and len(kernel.state.ports) == 1
    (port,) = kernel.state.ports.values()
    assert port.mtu == 1450 and port.addr == ep["ip"] + "/24" and port.mac == ep["mac"]
    ep2 = call("POST", "/v1/endpoints", {"netns": "lab-c2", "network": "app", "ip": "10.1.0.77"})
    assert ep2["ip"] == "10.1.0.77" and ep2["name"] == "lab-c2"
    bad = [
        ({"netns": "lab-c1", "network": "app"}, "already attached"),
        ({"netns": "lab-zz", "network": "app"}, "no network namespace"),
        ({"netns": "lab-c1", "network": "nope"}, "no network named"),
        ({"netns": "lab-c3", "network": "app", "ip": "10.9.9.9"}, "outside"),
        ({"netns": "lab-c3", "network": "app", "ip": "10.1.0.77"}, "in use"),
        ({"netns": "lab-c1", "network": "app", "colour": 1}, "unknown"),
    ]
    before = (dict(kernel.state.ports), call("GET", "/v1/endpoints"))
    for body, needle in bad:
        with pytest.raises(UserError, match=needle):
            call("POST", "/v1/endpoints", body)
    assert (dict(kernel.state.ports), call("GET", "/v1/endpoints")) == before
    with pytest.raises(UserError, match="in use"):
        call("DELETE", "/v1/networks/app")
    gone = call("DELETE", "/v1/endpoints?netns=lab-c1")
    assert [e["name"] for e in gone] == ["web1"]
    assert len(kernel.state.ports) == 1
    call("DELETE", "/v1/endpoints?netns=lab-c2&network=app")
    assert kernel.state.sandboxes == {} and call("GET", "/v1/endpoints") == []
    with pytest.raises(UserError, match="not attached"):
        call("DELETE", "/v1/endpoints?netns=lab-c2")


def test_restart_restores_local_endpoints(api, tmp_path):
    call, _, agent = api
    call("POST", "/v1/networks", {"name": "app", "subnet": "10.1.0.0/24"})
    ep = call("POST", "/v1/endpoints", {"netns": "lab-c1", "network": "app"})
    fresh = Agent(agent.config, overlay_kernel=agent.overlay_kernel, gw_kernel=agent.gw_kernel,
                  lb_factory=fake_lb)
    fresh.store.put("networks", "app", agent.store.networks()["app"], 0)
    loop = call.loop
    loop.run_until_complete(fresh.start_dataplane())
    try:
        assert [e.to_dict() for e in fresh.local_endpoints()] == [ep]
        loop.run_until_complete(fresh.overlay_sync.settled())
        assert fresh.overlay.last_plan == []  # adopts the kernel as it is
    finally:
        loop.run_until_complete(fresh.stop_dataplane())


def test_gateway_bridge_follows_endpoints(api):
    call, _, agent = api
    gw = agent.gw_kernel
    call("POST", "/v1/networks", {"name": "app", "subnet": "10.1.0.0/24"})
    call("POST", "/v1/networks", {"name": "priv", "subnet": "10.2.0.0/24", "internal": True})
    call("POST", "/v1/endpoints", {"netns": "lab-c1", "network": "priv"})
    assert gw.state.bridge is None  # internal only: no gateway
    call("POST", "/v1/endpoints", {"netns": "lab-c1", "network": "app"})
    call("POST", "/v1/endpoints", {"netns": "lab-c2", "network": "app"})
    call("POST", "/v1/endpoints", {"netns": "lab-c3", "network": "app"})  # has its own route
    assert gw.state.bridge == "198.18.0.1/16" and "MASQUERADE" in gw.state.rules
    ports = {p.netns: p for p in gw.state.ports.values()}
    assert set(ports) == {"lab-c1", "lab-c2"}
    assert ports["lab-c1"].ifname == "eth2" and ports["lab-c2"].ifname == "eth1"
    assert ports["lab-c1"].addr != ports["lab-c2"].addr
    call("DELETE", "/v1/endpoints?netns=lab-c1&network=app")
    assert set(p.netns for p in gw.state.ports.values()) == {"lab-c2"}
    call("DELETE", "/v1/endpoints?netns=lab-c2")
    assert gw.state.bridge is None and gw.state.rules == "" and not gw.state.ports


def test_services_vip_allocation_and_errors(api):
    call, _, agent = api
    call("POST", "/v1/networks", {"name": "app", "subnet": "10.1.0.0/24"})
    svc = call("POST", "/v1/services", {"name": "web", "network": "app", "ports": ["80/tcp"],
                                        "health": {"kind": "http", "path": "/h"}})
    assert svc["vip"].startswith("10.1.0.") and svc["ports"] == [{"port": 80, "protocol": "tcp"}]
    rr = call("POST", "/v1/services", {"name": "db", "network": "app", "mode": "dnsrr"})
    assert rr["vip"] is None
    ep = call("POST", "/v1/endpoints", {"netns": "lab-c1", "network": "app", "service": "web"})
    assert ep["ip"] != svc["vip"]
    bad = [
        ({"name": "web", "network": "app"}, "already exists"),
        ({"name": "x", "network": "nope"}, "no network"),
        ({"name": "x", "network": "app", "vip": "10.9.0.5"}, "outside"),
        ({"name": "x", "network": "app", "vip": svc["vip"]}, "in use"),
        ({"name": "x", "network": "app", "ports": ["99999"]}, "port"),
        ({"name": "x", "network": "app", "mode": "dnsrr", "vip": "10.1.0.50"}, "no VIP"),
        ({"name": "x", "network": "app", "health": {"kind": "smtp"}}, "health"),
    ]
    for body, needle in bad:
        with pytest.raises(UserError, match=needle):
            call("POST", "/v1/services", body)
    assert [s["name"] for s in call("GET", "/v1/services")] == ["db", "web"]
    with pytest.raises(UserError, match="in use"):
        call("DELETE", "/v1/networks/app")
    call("DELETE", "/v1/services/db")
    with pytest.raises(UserError, match="no service"):
        call("DELETE", "/v1/services/db")


def test_backend_change_leaves_lb_net_objects_alone(api):
    """A task joining a service changes no VIP, LB address, ingress link or route: the
    partial LB sync must not re-program them (a full sync still does)."""
    call, _, agent = api
    lb_runner = next(r for r in agent.runners if r.name == "lb")

    def settle():
        call.loop.run_until_complete(lb_runner.settled(timeout=5))

    call("POST", "/v1/networks", {"name": "app", "subnet": "10.1.0.0/24"})
    web = call("POST", "/v1/services", {"name": "web", "network": "app", "ports": ["80/tcp"]})
    call("POST", "/v1/endpoints", {"netns": "lab-c1", "network": "app", "service": "web"})
    settle()
    net = agent.lb.net
    before = len(net.states)
    assert before and net.states[-1].sandboxes[0].vips == (ipaddress.ip_address(web["vip"]),)
    call("POST", "/v1/endpoints", {"netns": "lab-c2", "network": "app", "service": "web"})
    settle()
    assert len(net.states) == before  # one more backend: nothing for the net objects
    api_svc = call("POST", "/v1/services", {"name": "api", "network": "app",
                                            "ports": ["81/tcp"]})
    call("POST", "/v1/endpoints", {"netns": "lab-c3", "network": "app", "service": "api"})
    settle()
    assert len(net.states) > before  # a new VIP: applied
    assert ipaddress.ip_address(api_svc["vip"]) in net.states[-1].sandboxes[0].vips
    n = len(net.states)
    lb_runner.kick(full=True)
    settle()
    assert len(net.states) == n + 1  # the full sync applies regardless


def test_concurrent_docker_claims_overlap_their_waits(api):
    """dockerd restarts its restart-always containers in parallel: their address claims
    are all published (distinct addresses) while the first is still waiting, instead of
    queueing one claim wait after another."""
    import types

    call, _, agent = api
    call("POST", "/v1/networks", {"name": "app", "subnet": "10.1.0.0/24"})
    net = agent.store.networks()["app"]
    agent.cluster = types.SimpleNamespace(claim_wait=0.2)
    loop = call.loop

    async def go():
        tasks = [asyncio.create_task(agent.docker_claim(net, None)) for _ in range(5)]
        await asyncio.sleep(0.05)
        pending = [e for e in agent.store.endpoints().values() if e.docker]
        assert len(pending) == 5 and not any(t.done() for t in tasks)
        return await asyncio.gather(*tasks)

    try:
        eps = loop.run_until_complete(go())
    finally:
        agent.cluster = None
    assert len({e.ip for e in eps}) == 5
    assert all(agent.store.endpoints()[e.key] == e for e in eps)
