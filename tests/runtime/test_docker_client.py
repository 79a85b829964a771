"""The Engine API client against a small aiohttp server on a unix socket in tmp_path."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web

from meshnet.runtime.docker import (
    DockerClient,
    DockerError,
    DockerUnavailable,
    negotiate,
)


@pytest.mark.parametrize("server, want", [("1.41", "1.41"), ("1.50", "1.45"), (None, "1.45"),
                                          ("garbage", "1.45"), ("1.24", "1.24")])
def test_negotiate(server, want):
    assert negotiate(server) == want


def test_negotiate_refuses_an_ancient_daemon():
    with pytest.raises(DockerError, match="needs >= 1.24"):
        negotiate("1.12")


class Daemon:
    def __init__(self) -> None:
        self.seen: list[str] = []
        self.release = asyncio.Event()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/_ping", self.ping)
        app.router.add_get("/v1.41/containers/json", self.containers)
        app.router.add_get("/v1.41/containers/{id}/json", self.inspect)
        app.router.add_get("/v1.41/events", self.events)
        return app

    async def ping(self, request):
        return web.Response(text="OK", headers={"Api-Version": "1.41"})

    async def containers(self, request):
        self.seen.append(f"all={request.query['all']} filters={request.query.get('filters')}")
        return web.json_response([{"Id": "a", "Names": ["/one"], "State": "running"}])

    async def inspect(self, request):
        if request.match_info["id"] == "missing":
            return web.json_response({"message": "No such container: missing"}, status=404)
        if request.match_info["id"] == "broken":
            return web.json_response({"message": "boom"}, status=500)
        return web.json_response({"Id": request.match_info["id"]})

    async def events(self, request):
        self.seen.append(f"events {json.loads(request.query['filters'])}")
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(b'{"Action":"start","Actor":{"ID":"a"}}\n')
        await resp.write(b"not json\n\n[1,2]\n")
        await resp.write(b'{"Action":"die","Actor":{"ID":"a"}}\n')
        await self.release.wait()
        return resp  # closes the stream: dockerd went away


def test_client_against_a_fake_daemon(tmp_path):
    sock = str(tmp_path / "docker.sock")

    async def main():
        daemon = Daemon()
        runner = web.AppRunner(daemon.app())
        await runner.setup()
        site = web.UnixSite(runner, sock)
        await site.start()
        client = DockerClient(sock, timeout=5)
        try:
            assert await client.ping() == "1.41"
            assert [c["Id"] for c in await client.containers(["meshnet.network"], all=True)] \
                == ["a"]
            assert daemon.seen[-1] == 'all=1 filters={"label": ["meshnet.network"]}'
            assert await client.inspect("x1") == {"Id": "x1"}
            assert await client.inspect("missing") is None
            with pytest.raises(DockerError, match="500: boom"):
                await client.inspect("broken")
            stream = await client.events({"type": ["container"], "event": ["start", "die"]})
            assert daemon.seen[-1] == "events {'type': ['container'], 'event': ['start', 'die']}"
            got = []
            with pytest.raises(DockerUnavailable, match="closed by dockerd"):
                async for ev in stream:
                    got.append(ev["Action"])
                    if len(got) == 2:
                        daemon.release.set()
            assert got == ["start", "die"] and client.bad_lines == 2
            await stream.close()
        finally:
            await client.close()
            await runner.cleanup()
        # the daemon is gone: every call says so
        with pytest.raises(DockerUnavailable, match="cannot reach dockerd"):
            await client.events({})
        await client.close()

    asyncio.run(main())


def test_no_socket_is_unavailable(tmp_path):
    async def main():
        client = DockerClient(str(tmp_path / "nothing.sock"), timeout=1)
        try:
            with pytest.raises(DockerUnavailable):
                await client.containers()
        finally:
            await client.close()

    asyncio.run(main())
