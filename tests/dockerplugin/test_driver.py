"""The plugin's calls against a fake agent (an in-memory cluster shared by "hosts")."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from meshnet.dockerplugin import protocol as p
from meshnet.dockerplugin.driver import Driver
from meshnet.dockerplugin.state import StateFile
from meshnet.errors import Conflict, UserError
from meshnet.model import DOCKER_NETNS, Endpoint, Network
from meshnet.vxlan.ipam import allocate, check_static
from meshnet.vxlan.state import desired, docker_peer_name, mac_for

NID = "f7eb" + "0" * 60
NID2 = "a1b2" + "0" * 60
EID = "e1" * 32
EID2 = "e2" * 32


@dataclass
class Cluster:
    networks: dict[str, Network] = field(default_factory=dict)
    endpoints: dict[str, Endpoint] = field(default_factory=dict)


class FakeHost:
    def __init__(self, node: str, cluster: Cluster) -> None:
        self.node = node
        self.cluster = cluster
        self.durable_calls = 0
        self.puts: list[Endpoint] = []

    def docker_networks(self) -> dict[str, Network]:
        return dict(self.cluster.networks)

    def docker_endpoint(self, key: str) -> Endpoint | None:
        return self.cluster.endpoints.get(key)

    async def create_network(self, body: dict[str, Any]) -> Network:
        if body["name"] in self.cluster.networks:
            raise Conflict(f"network {body['name']} already exists")
        net = Network(name=body["name"], vni=4096 + len(self.cluster.networks),
                      subnet=body["subnet"], internal=body.get("internal", False))
        self.cluster.networks[net.name] = net
        return net

    async def docker_claim(self, net: Network, static: str | None) -> Endpoint:
        taken = [e.ip for e in self.cluster.endpoints.values() if e.network == net.name]
        ip = check_static(net, static, taken) if static else allocate(net, taken, self.node)
        ep = Endpoint(network=net.name, ip=ip, mac=mac_for(ip), host=self.node,
                      name="ip-" + str(ip).replace(".", "-"), netns=DOCKER_NETNS)
        self.cluster.endpoints[ep.key] = ep
        return ep

    async def docker_put(self, ep: Endpoint) -> None:
        self.puts.append(ep)
        self.cluster.endpoints[ep.key] = ep

    async def docker_remove(self, key: str) -> None:
        self.cluster.endpoints.pop(key, None)

    async def durable(self) -> None:
        self.durable_calls += 1


def body(data: Any) -> bytes:
    return (json.dumps(data) + "\n").encode()  # as Go's json.Encoder


async def call(d: Driver, method: str, data: Any = None) -> tuple[int, dict[str, Any]]:
    return await d.handle(method, b"" if data is None else body(data))


async def ok(d: Driver, method: str, data: Any = None) -> dict[str, Any]:
    status, out = await call(d, method, data)
    assert status == 200, out
    return out


def make(tmp_path, node: str = "h1", cluster: Cluster | None = None) -> tuple[Driver, FakeHost]:
    host = FakeHost(node, cluster or Cluster())
    return Driver(host, StateFile(tmp_path / node / "docker.json")), host


async def create_network(d: Driver, nid: str = NID, subnet: str = "10.77.0.0/24",
                         name: str | None = "appnet") -> dict[str, Any]:
    pool = await ok(d, "IpamDriver.RequestPool", {"AddressSpace": "meshnet", "Pool": subnet,
                                                 "SubPool": "", "Options": {}, "V6": False})
    generic = {"meshnet.network": name} if name else {}
    await ok(d, "NetworkDriver.CreateNetwork", {
        "NetworkID": nid, "Options": {"com.docker.network.enable_ipv6": False,
                                      "com.docker.network.generic": generic},
        "IPv4Data": [{"AddressSpace": "meshnet", "Gateway": pool["Data"][p.GATEWAY_KEY],
                      "Pool": pool["Pool"]}], "IPv6Data": []})
    return pool


async def run_container(d: Driver, pool: dict[str, Any], eid: str = EID, nid: str = NID,
                        ip: str = "", mac: str = "", sandbox: str = "/var/run/docker/netns/1"
                        ) -> dict[str, Any]:
    addr = await ok(d, "IpamDriver.RequestAddress",
                    {"PoolID": pool["PoolID"], "Address": ip, "Options": None})
    ce = await ok(d, "NetworkDriver.CreateEndpoint", {
        "NetworkID": nid, "EndpointID": eid,
        "Interface": {"Address": addr["Address"], "AddressIPv6": "", "MacAddress": mac},
        "Options": {}})
    join = await ok(d, "NetworkDriver.Join", {"NetworkID": nid, "EndpointID": eid,
                                              "SandboxKey": sandbox, "Options": {}})
    return {"address": addr["Address"], "create": ce, "join": join}


def _handshake():
    async def go(tmp):
        d, _ = make(tmp)
        assert await ok(d, "Plugin.Activate") == {"Implements": ["NetworkDriver", "IpamDriver"]}
        assert await ok(d, "NetworkDriver.GetCapabilities") == {
            "Scope": "local", "ConnectivityScope": "global"}
        assert await ok(d, "IpamDriver.GetCapabilities") == {
            "RequiresMACAddress": False, "RequiresRequestReplay": False}
        spaces = await ok(d, "IpamDriver.GetDefaultAddressSpaces")
        assert spaces == {"LocalDefaultAddressSpace": "meshnet",
                          "GlobalDefaultAddressSpace": "meshnet"}
    return go


@pytest.fixture
def run(tmp_path):
    def runner(make_coro):
        asyncio.run(make_coro(tmp_path))
    return runner


def test_handshake(run):
    run(_handshake())


def test_empty_body_is_400_and_garbage_is_500(run):
    async def go(tmp):
        d, host = make(tmp)
        assert (await call(d, "IpamDriver.RequestAddress"))[0] == 400
        status, out = await d.handle("NetworkDriver.CreateEndpoint", b"{not json")
        assert status == 500 and "not JSON" in out["Err"]
        status, out = await d.handle("NetworkDriver.Join", body(["a list"]))
        assert status == 500 and "Err" in out
        status, out = await d.handle("NetworkDriver.Join", body({"NetworkID": 5}))
        assert status == 500 and "NetworkID" in out["Err"]
        assert host.cluster.endpoints == {} and host.cluster.networks == {}
    run(go)


def test_full_lifecycle_leaves_nothing(run):
    async def go(tmp):
        d, host = make(tmp)
        pool = await create_network(d)
        assert pool == {"PoolID": "meshnet-10.77.0.0/24", "Pool": "10.77.0.0/24",
                        "Data": {p.GATEWAY_KEY: "10.77.0.1/24"}}
        assert host.cluster.networks["appnet"].subnet.exploded == "10.77.0.0/24"
        r = await run_container(d, pool)
        ip = r["address"].split("/")[0]
        key = f"appnet/{ip}"
        ep = host.cluster.endpoints[key]
        assert ep.docker_id == EID and ep.host == "h1"
        assert r["create"] == {"Interface": {"MacAddress": mac_for(ep.ip)}}
        assert r["join"] == {
            "InterfaceName": {"SrcName": docker_peer_name(key), "DstPrefix": "eth"},
            "StaticRoutes": [{"Destination": "169.254.53.53/32", "RouteType": 1}],
            "DisableGatewayService": False}
        # the overlay makes the veth for a bound Docker endpoint, peer in the host netns
        ov = desired("h1", host.cluster.networks, host.cluster.endpoints.values(),
                     {"h1": "192.0.2.1"}, 1500, "mn-")
        (port,) = ov.ports.values()
        assert port.netns == "" and port.ifname == docker_peer_name(key) and port.mtu == 1450
        for m in ("NetworkDriver.RevokeExternalConnectivity", "NetworkDriver.Leave",
                  "NetworkDriver.DeleteEndpoint"):
            await ok(d, m, {"NetworkID": NID, "EndpointID": EID})
        await ok(d, "IpamDriver.ReleaseAddress", {"PoolID": pool["PoolID"], "Address": ip})
        assert host.cluster.endpoints == {}
        await ok(d, "NetworkDriver.DeleteNetwork", {"NetworkID": NID})
        await ok(d, "IpamDriver.ReleasePool", {"PoolID": pool["PoolID"]})
        saved = json.loads((tmp / "h1" / "docker.json").read_text())
        assert saved["pools"] == {} and saved["networks"] == {} and saved["endpoints"] == {}
        # everything again (dockerd repeats these after its own crash): still success
        for m in ("NetworkDriver.Leave", "NetworkDriver.DeleteEndpoint"):
            await ok(d, m, {"NetworkID": NID, "EndpointID": EID})
        await ok(d, "IpamDriver.ReleaseAddress", {"PoolID": pool["PoolID"], "Address": ip})
        await ok(d, "NetworkDriver.DeleteNetwork", {"NetworkID": NID})
        assert host.durable_calls >= 3
    run(go)


def test_builtin_ipam_is_refused_with_the_fix(run):
    async def go(tmp):
        d, host = make(tmp)
        status, out = await call(d, "NetworkDriver.CreateNetwork", {
            "NetworkID": NID, "Options": {},
            "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "172.18.0.0/16",
                          "Gateway": "172.18.0.1/16"}], "IPv6Data": []})
        assert status == 500 and "--ipam-driver meshnet" in out["Err"]
        assert host.cluster.networks == {}
    run(go)


def test_same_network_on_two_hosts_is_one_meshnet_network(run):
    async def go(tmp):
        cluster = Cluster()
        d1, _ = make(tmp, "h1", cluster)
        d2, _ = make(tmp, "h2", cluster)
        pool1 = await create_network(d1, NID)
        pool2 = await create_network(d2, NID2)
        assert list(cluster.networks) == ["appnet"]
        a = await run_container(d1, pool1, EID, NID)
        b = await run_container(d2, pool2, EID2, NID2)
        assert a["address"] != b["address"]
        # a different subnet under the same name is refused with the right --subnet
        d3, _ = make(tmp, "h3", cluster)
        pool = await ok(d3, "IpamDriver.RequestPool", {"Pool": "10.78.0.0/24"})
        status, out = await call(d3, "NetworkDriver.CreateNetwork", {
            "NetworkID": NID, "Options": {"com.docker.network.generic":
                                          {"meshnet.network": "appnet"}},
            "IPv4Data": [{"AddressSpace": "meshnet", "Pool": pool["Pool"]}]})
        assert status == 500 and "--subnet 10.77.0.0/24" in out["Err"]
    run(go)


def test_name_is_learned_after_the_call_and_calls_wait_for_it(run):
    async def go(tmp):
        d, host = make(tmp)
        asked = []

        async def namer(nid: str) -> str | None:
            asked.append(nid)
            return "webnet" if len(asked) >= 2 else None  # not in Docker's store at once
        d.namer = namer
        pool = await create_network(d, name=None)
        assert host.cluster.networks == {}  # not during the call
        r = await run_container(d, pool)  # RequestAddress waits for the name
        assert list(host.cluster.networks) == ["webnet"]
        assert r["address"].startswith("10.77.0.")
        assert asked == [NID, NID]
        # a network whose subnet is a meshnet network's joins it, no name needed
        d2, _ = make(tmp, "h2", host.cluster)
        await create_network(d2, NID2, name=None)
        assert d2.state.networks[NID2].name == "webnet"
    run(go)


def test_static_ip_and_mac_are_honoured(run):
    async def go(tmp):
        d, host = make(tmp)
        pool = await create_network(d)
        r = await run_container(d, pool, ip="10.77.0.50", mac="02:aa:bb:cc:dd:ee")
        assert r["address"] == "10.77.0.50/24"
        assert r["create"] == {}  # Docker set the MAC: the answer must not
        assert host.cluster.endpoints["appnet/10.77.0.50"].mac == "02:aa:bb:cc:dd:ee"
        status, out = await call(d, "IpamDriver.RequestAddress",
                                 {"PoolID": pool["PoolID"], "Address": "10.77.0.50"})
        assert status == 500 and "already in use" in out["Err"]
        status, out = await call(d, "IpamDriver.RequestAddress",
                                 {"PoolID": pool["PoolID"], "Address": "10.99.0.5"})
        assert status == 500 and "outside" in out["Err"]
    run(go)


def test_dns_route_only_for_the_first_meshnet_endpoint_of_a_sandbox(run):
    async def go(tmp):
        d, _ = make(tmp)
        pool_a = await create_network(d, NID, "10.77.0.0/24", "a")
        pool_b = await create_network(d, NID2, "10.78.0.0/24", "b")
        ja = (await run_container(d, pool_a, EID, NID, sandbox="/s/1"))["join"]
        jb = (await run_container(d, pool_b, EID2, NID2, sandbox="/s/1"))["join"]
        assert ja["StaticRoutes"] and jb["StaticRoutes"] == []  # two equal routes fail
        assert ja["InterfaceName"]["SrcName"] != jb["InterfaceName"]["SrcName"]
    run(go)


def test_state_survives_a_restart(run):
    async def go(tmp):
        d, host = make(tmp)
        pool = await create_network(d)
        await run_container(d, pool)
        d2 = Driver(host, StateFile(tmp / "h1" / "docker.json"))  # the agent restarted
        assert d2.state.to_dict() == d.state.to_dict()
        await ok(d2, "NetworkDriver.Leave", {"NetworkID": NID, "EndpointID": EID})
        await ok(d2, "NetworkDriver.DeleteEndpoint", {"NetworkID": NID, "EndpointID": EID})
        assert host.cluster.endpoints == {}
        # a second container on the network Docker never re-creates
        r = await run_container(d2, pool, EID2)
        assert r["address"].startswith("10.77.0.")
    run(go)


def test_corrupt_state_file_is_moved_aside(tmp_path):
    path = tmp_path / "docker.json"
    path.write_text("{garbage")
    assert StateFile(path).load().networks == {}
    assert (tmp_path / "docker.corrupt").exists()


def test_auto_pools_skip_held_and_used_subnets(run):
    async def go(tmp):
        d, host = make(tmp)
        seen = set()
        for _ in range(5):  # libnetwork holds a routed pool and asks again: never the same
            out = await ok(d, "IpamDriver.RequestPool", {"Pool": ""})
            assert out["Pool"] not in seen
            seen.add(out["Pool"])
        host.cluster.networks["x"] = Network(name="x", vni=5000, subnet="10.96.0.0/11")
        status, out = await call(d, "IpamDriver.RequestPool", {"Pool": ""})
        assert status == 500 and "--subnet" in out["Err"]
        status, out = await call(d, "IpamDriver.RequestPool", {"Pool": "", "V6": True})
        assert status == 500 and "IPv6" in out["Err"]
    run(go)


def test_endpoint_names_come_from_docker(run):
    async def go(tmp):
        d, host = make(tmp)
        pool = await create_network(d)
        r = await run_container(d, pool)
        key = "appnet/" + r["address"].split("/")[0]
        assert await d.name_endpoint(EID, "c1", ("web",), "websvc")
        ep = host.cluster.endpoints[key]
        assert (ep.name, ep.aliases, ep.service) == ("c1", ("web",), "websvc")
        assert not await d.name_endpoint(EID, "c1", ("web",), "websvc")  # no change
        assert not await d.name_endpoint("ff" * 32, "x", (), "")
    run(go)


def test_a_host_error_is_answered_not_raised(run):
    async def go(tmp):
        d, host = make(tmp)
        pool = await create_network(d)

        async def broken(ep):
            raise RuntimeError("kernel said no")
        host.docker_put = broken  # type: ignore[method-assign]
        addr = await ok(d, "IpamDriver.RequestAddress", {"PoolID": pool["PoolID"]})
        status, out = await call(d, "NetworkDriver.CreateEndpoint", {
            "NetworkID": NID, "EndpointID": EID, "Interface": {"Address": addr["Address"]}})
        assert status == 500 and "kernel said no" in out["Err"]
    run(go)


def test_user_error_type_is_a_plugin_error():
    assert issubclass(p.PluginError, UserError)
    ep = Endpoint(network="n", ip="10.0.0.2", mac="02:00:00:00:00:01", host="h",
                  name="x", netns=DOCKER_NETNS)
    assert ep.docker and ep.docker_id == ""
    assert replace(ep, netns=DOCKER_NETNS + "abc").docker_id == "abc"


def test_a_macvlan_network_is_not_served_through_docker(run):
    async def go(tmp):
        d, host = make(tmp)
        host.cluster.networks["lan"] = Network(
            name="lan", vni=4200, subnet="10.77.0.0/24", driver="macvlan",
            gateway_ip="10.77.0.254")
        status, out = await call(d, "IpamDriver.RequestPool", {"Pool": "10.77.0.0/24"})
        assert status == 200
        status, out = await call(d, "NetworkDriver.CreateNetwork", {
            "NetworkID": NID, "Options": {"com.docker.network.generic":
                                          {"meshnet.network": "lan"}},
            "IPv4Data": [{"AddressSpace": "meshnet", "Pool": out["Pool"]}]})
        assert status == 500 and "is macvlan" in out["Err"]
        assert d.state.networks == {}
    run(go)
