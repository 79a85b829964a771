"""The Engine API client against a small fake dockerd on a unix socket in tmp_path."""

from __future__ import annotations

import asyncio
import json
from http import HTTPStatus

import pytest

from meshnet.api.http import Request, parse_head
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
    """A fake dockerd on a unix socket: one request per connection (the client sends
    ``Connection: close``), answers with a ``Content-Length`` body, ``/events`` as a
    chunked stream that ends when ``release`` is set."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.release = asyncio.Event()

    async def start(self, path: str) -> asyncio.AbstractServer:
        return await asyncio.start_unix_server(self.serve, path)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            req = parse_head(await reader.readuntil(b"\r\n\r\n"))
            assert req.method == "GET", req.method
            if req.path == "/v1.41/events":
                await self.events(req, writer)
            else:
                status, body, headers = self.answer(req)
                writer.write(_head(status, headers + [("Content-Length", str(len(body)))])
                             + body)
            await writer.drain()
        finally:
            writer.close()

    def answer(self, req: Request) -> tuple[int, bytes, list[tuple[str, str]]]:
        if req.path == "/_ping":
            return 200, b"OK", [("Content-Type", "text/plain"), ("Api-Version", "1.41")]
        if req.path == "/v1.41/containers/json":
            self.seen.append(f"all={req.query['all']} filters={req.query.get('filters')}")
            return _json([{"Id": "a", "Names": ["/one"], "State": "running"}])
        parts = req.path.split("/")  # /v1.41/containers/ID/json
        if len(parts) == 5 and parts[2] == "containers" and parts[4] == "json":
            if parts[3] == "missing":
                return _json({"message": "No such container: missing"}, 404)
            if parts[3] == "broken":
                return _json({"message": "boom"}, 500)
            return _json({"Id": parts[3]})
        return _json({"message": f"page not found: {req.path}"}, 404)

    async def events(self, req: Request, writer: asyncio.StreamWriter) -> None:
        self.seen.append(f"events {json.loads(req.query['filters'])}")
        writer.write(_head(200, [("Content-Type", "application/json"),
                                 ("Transfer-Encoding", "chunked")]))
        for part in (b'{"Action":"start","Actor":{"ID":"a"}}\n', b"not json\n\n[1,2]\n",
                     b'{"Action":"die","Actor":{"ID":"a"}}\n'):
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
            await writer.drain()
        await self.release.wait()
        writer.write(b"0\r\n\r\n")  # the end of the stream: dockerd went away


def _head(status: int, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", "Connection: close",
             *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _json(data, status: int = 200) -> tuple[int, bytes, list[tuple[str, str]]]:
    return status, json.dumps(data).encode(), [("Content-Type", "application/json")]


def test_client_against_a_fake_daemon(tmp_path):
    sock = str(tmp_path / "docker.sock")

    async def main():
        daemon = Daemon()
        server = await daemon.start(sock)
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
            server.close()
            await server.wait_closed()
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
