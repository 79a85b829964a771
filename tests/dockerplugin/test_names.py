"""What the plugin reads from the Docker Engine API (inspect answers, network list)."""

from __future__ import annotations

import asyncio

from meshnet.dockerplugin.driver import Driver
from meshnet.dockerplugin.names import DockerNames, endpoint_names
from meshnet.dockerplugin.state import NetworkBinding, StateFile
from meshnet.model import Network
from meshnet.runtime.docker import DockerError
from tests.dockerplugin.test_driver import Cluster, FakeHost

INSPECT = {
    "Id": "7850670ba3fa86f40c6863d68704422f90e1613ff465a444010979cb483540a3",
    "Name": "/web1",
    "Config": {"Labels": {"meshnet.service": "web"}},
    "NetworkSettings": {"Networks": {
        "appnet": {"EndpointID": "ee" * 32, "Aliases": ["7850670ba3fa", "www", "web1", "bad name!"]},
        "bridge": {"EndpointID": "", "Aliases": None},
    }},
}


def test_endpoint_names_from_inspect():
    assert endpoint_names(INSPECT) == [("ee" * 32, "web1", ("www",), "web")]
    assert endpoint_names({"Name": "/x", "NetworkSettings": {"Networks": "junk"}}) == []
    assert endpoint_names({}) == []


class FakeDocker:
    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.created: list[dict] = []

    async def networks(self):
        return [{"Name": n} for n in self.names]

    async def post_json(self, path, data):
        assert path == "/networks/create"
        if data["Name"] in self.names:
            raise DockerError(409, "network with name exists")
        self.created.append(data)
        self.names.append(data["Name"])
        return {"Id": "x"}


def test_every_meshnet_network_gets_a_docker_network_once(tmp_path):
    cluster = Cluster(networks={
        "appnet": Network(name="appnet", vni=4096, subnet="10.77.0.0/24"),
        "db": Network(name="db", vni=4097, subnet="10.78.0.0/24", internal=True),
        "mine": Network(name="mine", vni=4098, subnet="10.79.0.0/24")})
    d = Driver(FakeHost("h2", cluster), StateFile(tmp_path / "docker.json"))
    d.state.networks["n1"] = NetworkBinding("mine", "meshnet-10.79.0.0/24")  # made here
    docker = FakeDocker(["bridge", "db"])  # "db" exists already (made by the user)
    names = DockerNames(d, docker)  # type: ignore[arg-type]
    asyncio.run(names.ensure_networks())
    assert [c["Name"] for c in docker.created] == ["appnet"]
    made = docker.created[0]
    assert made["Driver"] == "meshnet" and made["IPAM"] == {
        "Driver": "meshnet", "Config": [{"Subnet": "10.77.0.0/24"}]}
    assert made["Options"] == {"meshnet.network": "appnet"}
    assert d.state.ensured == {"appnet", "db"}
    docker.names.remove("appnet")  # the user removed it: not made again
    asyncio.run(names.ensure_networks())
    assert len(docker.created) == 1
    del cluster.networks["appnet"]  # removed cluster-wide: forgotten, may come back
    asyncio.run(names.ensure_networks())
    assert d.state.ensured == {"db"}


class FakeNetworks:
    def __init__(self) -> None:
        self.endpoints: dict[str, list[str]] = {}  # NetworkID -> EndpointIDs dockerd lists

    async def network(self, nid):
        return {"Containers": {f"c{i}": {"EndpointID": e}
                               for i, e in enumerate(self.endpoints.get(nid, []))}}


def test_endpoints_dockerd_forgot_are_reaped_after_two_passes(tmp_path):
    from tests.dockerplugin.test_driver import EID, EID2, NID, create_network, run_container

    async def go():
        host = FakeHost("h1", Cluster())
        d = Driver(host, StateFile(tmp_path / "docker.json"))
        pool = await create_network(d)
        await run_container(d, pool, EID)
        await run_container(d, pool, EID2, sandbox="/s/2")
        docker = FakeNetworks()
        docker.endpoints[NID] = [EID]  # EID2's container stopped while the agent was down
        names = DockerNames(d, docker)  # type: ignore[arg-type]
        assert await names.reap_stale(now=100.0) == []  # first miss: not yet
        assert await names.reap_stale(now=110.0) == []  # too soon
        assert await names.reap_stale(now=121.0) == [EID2]
        assert list(d.state.endpoints) == [EID]
        assert [e.docker_id for e in host.cluster.endpoints.values()] == [EID]
        docker.endpoints[NID] = []  # a blip: listed again before the second pass
        await names.reap_stale(now=200.0)
        docker.endpoints[NID] = [EID]
        assert await names.reap_stale(now=230.0) == []
        assert list(d.state.endpoints) == [EID]
    asyncio.run(go())


def test_a_network_made_through_docker_here_is_not_made_again_after_rm(tmp_path):
    from tests.dockerplugin.test_driver import NID, create_network

    async def go():
        host = FakeHost("h1", Cluster())
        d = Driver(host, StateFile(tmp_path / "docker.json"))
        await create_network(d)
        await d.handle("NetworkDriver.DeleteNetwork", b'{"NetworkID": "%s"}' % NID.encode())
        docker = FakeDocker(["bridge"])  # the user removed appnet
        await DockerNames(d, docker).ensure_networks()  # type: ignore[arg-type]
        assert docker.created == []
    asyncio.run(go())
