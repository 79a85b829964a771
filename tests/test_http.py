"""The agent's small HTTP server: parser, router, and the asyncio server on a unix
socket and on TCP."""

from __future__ import annotations

import asyncio
import json
import os
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshnet.api.http import HttpError, HttpServer, Request, Response, Router, parse_head


def test_parse_head_fields():
    req = parse_head(b"POST /v1/x%20y?netns=a&network=&z=1 HTTP/1.1\r\n"
                     b"Host: x\r\nContent-Length: 12\r\nConnection: close\r\n\r\n")
    assert (req.method, req.path) == ("POST", "/v1/x y")
    assert req.query == {"netns": "a", "network": "", "z": "1"}
    assert req.content_length == 12 and not req.keep_alive
    assert parse_head(b"GET / HTTP/1.1\r\n\r\n").keep_alive
    assert not parse_head(b"GET / HTTP/1.0\r\n\r\n").keep_alive


@pytest.mark.parametrize("head,status", [
    (b"GET\r\n\r\n", 400),
    (b"GET nopath HTTP/1.1\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\n\r\n", 505),
    (b"GET / HTTP/1.1\r\nno colon\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n bad: x\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nContent-Length: 1e3\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 411),
    (b"POST / HTTP/1.1\r\nContent-Length: \xb2\r\n\r\n", 400),  # isdigit() but not int()
])
def test_parse_head_rejects(head, status):
    with pytest.raises(HttpError) as err:
        parse_head(head)
    assert err.value.status == status


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_parse_head_never_crashes(data):
    try:
        parse_head(data + b"\r\n\r\n")
    except HttpError:
        pass


def test_router_params_404_405():
    r = Router()

    async def h(req: Request) -> Response:
        return Response.json(req.match_info)

    r.add("DELETE", "/v1/services/{name}", h)
    r.add("GET", "/v1/services", h)
    handler, params = r.resolve("DELETE", "/v1/services/web")
    assert handler is h and params == {"name": "web"}
    with pytest.raises(HttpError) as e404:
        r.resolve("GET", "/v1/nothing")
    with pytest.raises(HttpError) as e405:
        r.resolve("PUT", "/v1/services")
    with pytest.raises(HttpError) as empty:
        r.resolve("DELETE", "/v1/services/")
    assert (e404.value.status, e405.value.status, empty.value.status) == (404, 405, 404)


def _router() -> Router:
    r = Router()

    async def echo(req: Request) -> Response:
        return Response.json({"body": await req.json(), "q": req.query})

    async def boom(req: Request) -> Response:
        raise RuntimeError("bug")

    r.add("POST", "/echo", echo)
    r.add("GET", "/boom", boom)
    return r


async def _exchange(path: str, raw: bytes, reads: int = 1) -> list[tuple[int, dict]]:
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(raw)
    await writer.drain()
    out = []
    for _ in range(reads):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        status = int(lines[0].split()[1])
        length = int(next(ln.split(":")[1] for ln in lines if ln.startswith("Content-Length")))
        out.append((status, json.loads(await reader.readexactly(length))))
    writer.close()
    return out


def test_server_on_unix_socket(tmp_path):
    path = str(tmp_path / "api.sock")

    async def main():
        srv = HttpServer(_router(), max_body=100)
        await srv.start_unix(path)
        try:
            assert os.stat(path).st_mode & 0o777 == 0o600
            body = b'{"a": 1}'
            # two requests on one keep-alive connection
            one = (b"POST /echo?x=1 HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body)) + body
            got = await _exchange(path, one + one, reads=2)
            assert got == [(200, {"body": {"a": 1}, "q": {"x": "1"}})] * 2
            assert (await _exchange(path, b"GET /boom HTTP/1.1\r\n\r\n"))[0][0] == 500
            big = b"POST /echo HTTP/1.1\r\nContent-Length: 101\r\n\r\n" + b"x" * 101
            assert (await _exchange(path, big))[0] == (413, {"error": "request body too large"})
            assert (await _exchange(path, b"BAD\r\n\r\n"))[0][0] == 400
            assert (await _exchange(path, b"GET /nope HTTP/1.1\r\n\r\n"))[0][0] == 404
            # still serving after all of that
            assert (await _exchange(path, one))[0][0] == 200
        finally:
            await srv.stop()
        assert not os.path.exists(path)

    asyncio.run(main())


def test_server_head_too_large(tmp_path):
    path = str(tmp_path / "api.sock")

    async def main():
        srv = HttpServer(_router())
        await srv.start_unix(path)
        try:
            raw = b"GET /echo HTTP/1.1\r\nX: " + b"a" * 70000 + b"\r\n\r\n"
            assert (await _exchange(path, raw))[0][0] == 431
        finally:
            await srv.stop()

    asyncio.run(main())


def test_server_on_tcp_text_page():
    r = Router()

    async def page(_: Request) -> Response:
        return Response(body=b"m 1\n", content_type="text/plain")

    r.add("GET", "/metrics", page)

    async def main():
        srv = HttpServer(r)
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        await srv.start_tcp("127.0.0.1", port)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /metrics HTTP/1.0\r\n\r\n")
            data = await reader.read()  # HTTP/1.0: the server closes
            writer.close()
        finally:
            await srv.stop()
        assert data.startswith(b"HTTP/1.1 200 OK\r\n") and data.endswith(b"\r\n\r\nm 1\n")
        assert b"Content-Type: text/plain" in data

    asyncio.run(main())


def test_connection_cap_route_before_body_and_graceful_stop(tmp_path):
    path = str(tmp_path / "api.sock")
    r = Router()
    started = asyncio.Event()

    async def slow(req: Request) -> Response:
        started.set()
        await asyncio.sleep(0.3)
        return Response.json({"done": True})

    r.add("GET", "/slow", slow)

    async def main():
        srv = HttpServer(r, max_connections=2)
        await srv.start_unix(path)
        # a POST to an unknown path is refused without waiting for its (unsent) body
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(b"POST /nope HTTP/1.1\r\nContent-Length: 100\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        assert head.startswith(b"HTTP/1.1 404")
        writer.close()
        # the cap: two idle connections held, a third is closed at once
        held = [await asyncio.open_unix_connection(path) for _ in range(2)]
        await asyncio.sleep(0.05)
        third_r, third_w = await asyncio.open_unix_connection(path)
        assert await asyncio.wait_for(third_r.read(), 2) == b"" and srv.refused == 1
        third_w.close()
        # stop() while a handler is in flight: it finishes and answers, then closes
        busy_r, busy_w = held[0]
        busy_w.write(b"GET /slow HTTP/1.1\r\n\r\n")
        await started.wait()
        await srv.stop()
        answer = await asyncio.wait_for(busy_r.read(), 2)
        assert answer.startswith(b"HTTP/1.1 200") and b"Connection: close" in answer
        assert await asyncio.wait_for(held[1][0].read(), 2) == b""  # the idle one: closed
        for _, w in held:
            w.close()

    asyncio.run(main())
