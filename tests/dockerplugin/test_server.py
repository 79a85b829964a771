"""The plugin front over a real unix socket, and request bodies fuzzed."""

from __future__ import annotations

import asyncio
import json
import socket

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshnet.dockerplugin.protocol import METHODS, NO_BODY
from meshnet.dockerplugin.server import PluginServer, listen_fd_socket
from tests.dockerplugin.test_driver import Cluster, FakeHost


async def exchange(path: str, raw: bytes, reads: int = 1) -> list[bytes]:
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(raw)
    out = []
    for _ in range(reads):
        head = await reader.readuntil(b"\r\n\r\n")
        length = int([h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")][0]
                     .split(b":")[1])
        out.append(head + await reader.readexactly(length))
    writer.close()
    return out


def post(method: str, body: bytes = b"") -> bytes:
    return (f"POST /{method} HTTP/1.1\r\nHost: \r\nUser-Agent: Go-http-client/1.1\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Accept: application/vnd.docker.plugins.v1.2+json\r\n\r\n").encode() + body


def status_and_json(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body)


def test_protocol_over_the_socket(tmp_path):
    async def go():
        server = PluginServer(FakeHost("h1", Cluster()), str(tmp_path / "meshnet.sock"),
                              str(tmp_path))
        await server.start()
        try:
            path = str(tmp_path / "meshnet.sock")
            # dockerd's handshake on one keep-alive connection, then an idle pause
            answers = await exchange(path, b"".join(post(m) for m in NO_BODY), reads=4)
            codes = [status_and_json(a) for a in answers]
            assert codes[0] == (200, {"Implements": ["NetworkDriver", "IpamDriver"]})
            assert all(c == 200 for c, _ in codes)
            assert b"Connection: keep-alive" in answers[-1]
            assert server._http.idle_timeout is None
            # unknown method: 404 with Err (Docker shows it); empty body: 400
            (a,) = await exchange(path, post("NetworkDriver.Teleport", b"{}"))
            assert status_and_json(a) == (404, {"Err": status_and_json(a)[1]["Err"]})
            (a,) = await exchange(path, post("IpamDriver.RequestPool"))
            assert status_and_json(a)[0] == 400
        finally:
            await server.stop()
    asyncio.run(go())


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=5),
    max_leaves=12)
field_names = st.sampled_from(["NetworkID", "EndpointID", "PoolID", "Address", "Pool",
                               "Interface", "Options", "IPv4Data", "IPv6Data", "SandboxKey",
                               "V6", "SubPool", "AddressSpace", "MacAddress"])
bodies = st.dictionaries(field_names, json_values, max_size=6).map(
    lambda d: json.dumps(d).encode()) | st.binary(max_size=64)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(method=st.sampled_from(METHODS), raw=bodies)
def test_fuzzed_bodies_are_answered_and_change_nothing_when_refused(tmp_path_factory, method,
                                                                    raw):
    tmp = tmp_path_factory.mktemp("fuzz")
    from meshnet.dockerplugin.driver import Driver
    from meshnet.dockerplugin.state import StateFile

    host = FakeHost("h1", Cluster())
    d = Driver(host, StateFile(tmp / "docker.json"))
    status, answer = asyncio.run(d.handle(method, raw))
    assert status in (200, 400, 500)
    json.dumps(answer)
    if status != 200:
        assert set(answer) == {"Err"}
        assert host.cluster.networks == {} and host.cluster.endpoints == {}
        assert not (tmp / "docker.json").exists() or d.state.pools == {}


def test_systemd_socket_is_used_when_passed(tmp_path, monkeypatch):
    import os

    path = str(tmp_path / "p.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.listen()
    fd = os.dup(s.fileno())  # pretend systemd passed fds 3..fd, this one last
    try:
        env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": str(fd - 2)}
        got = listen_fd_socket(path, env)
        assert got is not None and got.getsockname() == path
        got.close()
        assert listen_fd_socket(path, {"LISTEN_PID": "1", "LISTEN_FDS": str(fd - 2)}) is None
        assert listen_fd_socket(str(tmp_path / "other.sock"), env) is None
    finally:
        os.close(fd)
        s.close()
