"""A minimal HTTP/1.1 client over a unix socket, for the Docker Engine API.

Why not aiohttp: it was the agent's only user of aiohttp, whose resident memory every
agent paid (issue 10's budget is 60 MB; ``tests/test_footprint.py`` keeps aiohttp out).
The Engine API needs little: GET, a ``Content-Length`` or ``chunked`` body, and one long
streamed body (``/events``, newline-delimited JSON in chunks). One connection per request
(``Connection: close``).

:class:`ChunkDecoder` is sans-IO (bytes in, body bytes out); :class:`Response` is the
asyncio side.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlencode

MAX_HEAD = 64 * 1024
MAX_BODY = 64 << 20  #: a larger answer is refused (a container list is far smaller)


class HttpClientError(Exception):
    """The server's answer could not be read as HTTP (or it went away mid-answer)."""


class ChunkDecoder:
    """Decodes a ``Transfer-Encoding: chunked`` body fed in pieces of any size."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._left = 0  #: bytes of the current chunk still to come
        self._state = "size"  # size | data | crlf | trailer | done
        self.done = False

    def feed(self, data: bytes) -> bytes:
        """Body bytes decoded from ``data``; raises HttpClientError on a malformed body."""
        self._buf += data
        out = bytearray()
        while True:
            if self._state == "size":
                end = self._buf.find(b"\r\n")
                if end < 0:
                    if len(self._buf) > 1024:
                        raise HttpClientError("chunk size line too long")
                    break
                line = bytes(self._buf[:end]).split(b";", 1)[0].strip()
                del self._buf[:end + 2]
                try:
                    self._left = int(line, 16)
                except ValueError:
                    raise HttpClientError(f"bad chunk size {line[:20]!r}") from None
                if self._left < 0:
                    raise HttpClientError("negative chunk size")
                self._state = "data" if self._left else "trailer"
            elif self._state == "data":
                take = bytes(self._buf[:self._left])
                del self._buf[:len(take)]
                out += take
                self._left -= len(take)
                if self._left:
                    break
                self._state = "crlf"
            elif self._state == "crlf":
                if len(self._buf) < 2:
                    break
                if self._buf[:2] != b"\r\n":
                    raise HttpClientError("chunk not followed by CRLF")
                del self._buf[:2]
                self._state = "size"
            elif self._state == "trailer":
                end = self._buf.find(b"\r\n")
                if end < 0:
                    break
                line = self._buf[:end]
                del self._buf[:end + 2]
                if not line:
                    self._state, self.done = "done", True
            else:
                break
        return bytes(out)


def parse_status_head(head: bytes) -> tuple[int, str, dict[str, str]]:
    """(status, reason, lower-case headers) of a response head ending in CRLF CRLF."""
    lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise HttpClientError(f"not an HTTP response: {lines[0][:60]!r}")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(parts[1]), parts[2] if len(parts) > 2 else "", headers


class Response:
    def __init__(self, status: int, reason: str, headers: dict[str, str],
                 reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self._reader = reader
        self._writer = writer
        self._chunks = ChunkDecoder() if "chunked" in headers.get(
            "transfer-encoding", "").lower() else None
        raw = headers.get("content-length")
        self._left = int(raw) if raw is not None and raw.isdigit() else None
        self._pending = bytearray()
        self._eof = False

    async def _more(self) -> bool:
        """Read more body into ``_pending``; False at the end of the body."""
        if self._eof:
            return False
        if self._chunks is None and self._left is not None:
            if self._left == 0:
                self._eof = True
                return False
            data = await self._reader.read(min(self._left, 1 << 16))
            if not data:
                raise HttpClientError("connection closed inside the body")
            self._left -= len(data)
            self._pending += data
            return True
        data = await self._reader.read(1 << 16)
        if not data:
            if self._chunks is not None and not self._chunks.done:
                raise HttpClientError("connection closed inside a chunked body")
            self._eof = True
            return False
        if self._chunks is not None:
            self._pending += self._chunks.feed(data)
            if self._chunks.done:
                self._eof = True
        else:
            self._pending += data
        return True

    async def read(self, limit: int = MAX_BODY) -> bytes:
        while await self._more():
            if len(self._pending) > limit:
                raise HttpClientError(f"answer larger than {limit} bytes")
        out, self._pending = bytes(self._pending), bytearray()
        return out

    async def readline(self, limit: int = 1 << 20) -> bytes:
        """The next body line (with its newline); b"" at the end of the body."""
        while True:
            nl = self._pending.find(b"\n")
            if nl >= 0:
                out = bytes(self._pending[:nl + 1])
                del self._pending[:nl + 1]
                return out
            if len(self._pending) > limit:
                raise HttpClientError(f"line longer than {limit} bytes")
            if not await self._more():
                out, self._pending = bytes(self._pending), bytearray()
                return out

    def close(self) -> None:
        self._writer.close()


async def get(socket_path: str, path: str, params: dict[str, str] | None = None,
              timeout: float = 10.0, host: str = "docker") -> Response:
    """Send ``GET path?params`` and read the response head (within ``timeout``); the body
    is read from the returned Response (the caller closes it)."""
    return await request(socket_path, "GET", path, params, None, timeout, host)


async def request(socket_path: str, method: str, path: str,
                  params: dict[str, str] | None = None, body: bytes | None = None,
                  timeout: float = 10.0, host: str = "docker") -> Response:
    """Send ``METHOD path?params`` (with a JSON ``body`` if given) and read the response
    head; the body is read from the returned Response (the caller closes it)."""
    target = path + ("?" + urlencode(params) if params else "")
    reader, writer = await asyncio.wait_for(
        asyncio.open_unix_connection(socket_path, limit=MAX_HEAD), timeout)
    try:
        extra = ("" if body is None else
                 f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n")
        writer.write(f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: meshnet\r\n"
                     f"{extra}Connection: close\r\n\r\n".encode("latin-1") + (body or b""))
        await writer.drain()
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        except asyncio.IncompleteReadError:
            raise HttpClientError("connection closed before an answer") from None
        except asyncio.LimitOverrunError:
            raise HttpClientError("answer head too large") from None
        status, reason, headers = parse_status_head(head)
    except BaseException:
        writer.close()
        raise
    return Response(status, reason, headers, reader, writer)
