"""The unix-socket HTTP client used for the Docker Engine API."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshnet.runtime import unixhttp
from meshnet.runtime.unixhttp import ChunkDecoder, HttpClientError, parse_status_head


def chunked(parts: list[bytes]) -> bytes:
    return b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in parts if p) + b"0\r\nX: y\r\n\r\n"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=50), max_size=8), st.lists(st.integers(1, 30), max_size=20))
def test_chunk_decoder_any_split(parts, cuts):
    wire = chunked(parts)
    dec, out, pos = ChunkDecoder(), b"", 0
    for c in [*cuts, len(wire)]:
        out += dec.feed(wire[pos:pos + c])
        pos += c
    assert out == b"".join(parts) and dec.done


@pytest.mark.parametrize("wire", [b"zz\r\n", b"3\r\nabcXY", b"-1\r\n", b"1" * 2000])
def test_chunk_decoder_rejects(wire):
    with pytest.raises(HttpClientError):
        ChunkDecoder().feed(wire)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_chunk_decoder_never_crashes(data):
    try:
        ChunkDecoder().feed(data)
    except HttpClientError:
        pass


def test_parse_status_head():
    assert parse_status_head(b"HTTP/1.1 404 Not Found\r\nApi-Version: 1.41\r\n\r\n") == \
        (404, "Not Found", {"api-version": "1.41"})
    with pytest.raises(HttpClientError):
        parse_status_head(b"SSH-2.0-OpenSSH\r\n\r\n")


def _serve(path: str, answer: bytes, seen: list[bytes]):
    async def handle(reader, writer):
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(answer)
        await writer.drain()
        writer.close()

    return asyncio.start_unix_server(handle, path)


def test_bodies_over_a_unix_socket(tmp_path):
    path = str(tmp_path / "s.sock")

    async def main():
        seen: list[bytes] = []
        for answer, check in [
            (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", "read"),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
             + chunked([b'{"a":', b'1}\n{"b"', b":2}\n"]), "lines"),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nshort", "cut"),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", "cut"),
        ]:
            server = await _serve(path, answer, seen)
            try:
                resp = await unixhttp.get(path, "/v1/x", {"filters": '{"a": [1]}'}, 5)
                if check == "read":
                    assert (resp.status, await resp.read()) == (200, b"hello")
                elif check == "lines":
                    assert [await resp.readline() for _ in range(3)] == \
                        [b'{"a":1}\n', b'{"b":2}\n', b""]
                else:
                    with pytest.raises(HttpClientError):
                        await resp.read()
                resp.close()
            finally:
                server.close()
                await server.wait_closed()
        assert seen[0].startswith(b"GET /v1/x?filters=%7B%22a%22%3A+%5B1%5D%7D HTTP/1.1\r\n")

    asyncio.run(main())


def test_no_answer_and_no_socket(tmp_path):
    path = str(tmp_path / "s.sock")

    async def main():
        server = await _serve(path, b"", [])
        try:
            with pytest.raises(HttpClientError):
                await unixhttp.get(path, "/", None, 5)
        finally:
            server.close()
            await server.wait_closed()
        with pytest.raises(OSError):
            await unixhttp.get(str(tmp_path / "none.sock"), "/", None, 5)

    asyncio.run(main())
