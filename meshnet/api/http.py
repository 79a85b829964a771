"""A small HTTP/1.1 server for the agent's local API and its metrics page.

Why not aiohttp: the agent serves a handful of JSON routes on a unix socket (and one
text page on TCP for Prometheus), and aiohttp brought a large import tree and its
resident memory into every agent for that (``tests/test_footprint.py`` keeps it out).
This module is the part of HTTP the API needs: request line and headers,
``Content-Length`` bodies (no chunked uploads), keep-alive, path parameters
(``/v1/services/{name}``), query strings, and clear JSON errors.

The request parser (:func:`parse_head`) is sans-IO; :class:`HttpServer` is the asyncio
adapter (one task per connection, bounded head and body sizes, idle timeout).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote

log = logging.getLogger("meshnet.api")

MAX_HEAD = 64 * 1024
MAX_BODY = 1 << 20
IDLE_TIMEOUT = 60.0  #: also bounds a slow body or a client that does not read answers
MAX_CONNECTIONS = 64  #: beyond this, new connections are closed at once
STOP_GRACE = 10.0  #: stop() lets handlers in flight finish for this long
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           409: "Conflict", 411: "Length Required", 413: "Payload Too Large",
           431: "Request Header Fields Too Large", 500: "Internal Server Error",
           505: "HTTP Version Not Supported"}


class HttpError(Exception):
    """A request this server will not serve: answered with ``status`` and the message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  #: lower-case names
    version: str = "HTTP/1.1"
    body: bytes = b""
    match_info: dict[str, str] = field(default_factory=dict)

    @property
    def content_length(self) -> int | None:
        raw = self.headers.get("content-length")
        return int(raw) if raw is not None else None

    async def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    @property
    def keep_alive(self) -> bool:
        conn = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return conn == "keep-alive"
        return conn != "close"


@dataclass(frozen=True)
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def json(cls, data: Any, status: int = 200) -> Response:
        return cls(status, json.dumps(data, sort_keys=True).encode())

    def encode(self, keep_alive: bool) -> bytes:
        lines = [f"HTTP/1.1 {self.status} {REASONS.get(self.status, 'Unknown')}",
                 f"Content-Type: {self.content_type}",
                 f"Content-Length: {len(self.body)}",
                 f"Connection: {'keep-alive' if keep_alive else 'close'}",
                 *(f"{k}: {v}" for k, v in self.headers)]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


def parse_head(data: bytes) -> Request:
    """The request line and headers (``data`` ends with the blank line). Raises
    :class:`HttpError` for anything malformed."""
    try:
        text = data.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        raise HttpError(400, "request head is not text") from None
    lines = text.rstrip("\r\n").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[0].isalpha() or not parts[1].startswith("/"):
        raise HttpError(400, "malformed request line")
    method, target, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise HttpError(505, f"unsupported protocol {version[:20]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or " " in name:
            raise HttpError(400, "malformed header line")
        headers[name.lower()] = value.strip()
    path, _, qs = target.partition("?")
    try:
        query = dict(parse_qsl(qs, keep_blank_values=True, strict_parsing=False))
    except ValueError:
        raise HttpError(400, "malformed query string") from None
    req = Request(method.upper(), unquote(path), query, headers, version)
    if "transfer-encoding" in headers:
        raise HttpError(411, "chunked request bodies are not supported; send Content-Length")
    raw = headers.get("content-length")
    if raw is not None and (not (raw.isascii() and raw.isdigit()) or len(raw) > 12):
        raise HttpError(400, "malformed Content-Length")
    return req


Handler = Callable[[Request], Awaitable[Response]]


class Router:
    """Exact paths and ``{name}`` segments; 404 for an unknown path, 405 for a known
    path with another method."""

    def __init__(self) -> None:
        self._routes: list[tuple[str, tuple[str, ...], Handler]] = []

    def add(self, method: str, path: str, handler: Handler) -> None:
        self._routes.append((method.upper(), tuple(path.strip("/").split("/")), handler))

    @staticmethod
    def _match(pattern: tuple[str, ...], segs: list[str]) -> dict[str, str] | None:
        if len(pattern) != len(segs):
            return None
        params = {}
        for p, s in zip(pattern, segs, strict=True):
            if p.startswith("{") and p.endswith("}"):
                if not s:
                    return None
                params[p[1:-1]] = s
            elif p != s:
                return None
        return params

    def resolve(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        segs = path.lstrip("/").split("/")
        path_known = False
        for m, pattern, handler in self._routes:
            params = self._match(pattern, segs)
            if params is None:
                continue
            if m == method:
                return handler, params
            path_known = True
        if path_known:
            raise HttpError(405, f"{method} is not allowed on {path}")
        raise HttpError(404, f"this agent has no API {method} {path}")


class HttpServer:
    """Serves a :class:`Router` on a unix socket (mode 0600) or a TCP address."""

    def __init__(self, router: Router, max_body: int = MAX_BODY,
                 max_connections: int = MAX_CONNECTIONS,
                 idle_timeout: float | None = IDLE_TIMEOUT, error_key: str = "error") -> None:
        """``idle_timeout`` None: a keep-alive connection waits for its next request for
        ever (Docker's plugin client reuses connections without limit). ``error_key``:
        the JSON field of error answers (Docker's plugin protocol reads ``Err``)."""
        self.router = router
        self.idle_timeout = idle_timeout
        self.error_key = error_key
        self.max_body = max_body
        self.max_connections = max_connections
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[asyncio.Task] = set()
        self._busy: set[asyncio.Task] = set()  #: connections inside a handler
        self.refused = 0  #: connections closed because of max_connections
        self._stopping = False
        self.path: str | None = None

    async def start_unix(self, path: str) -> None:
        os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
        if os.path.exists(path):
            os.unlink(path)  # a stale socket from a crashed agent
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve, path, limit=MAX_HEAD)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        self.path = path

    async def start_sock(self, sock) -> None:
        """Serve an already listening socket (systemd socket activation)."""
        self._server = await asyncio.start_unix_server(self._serve, sock=sock, limit=MAX_HEAD)

    async def start_tcp(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._serve, host, port, limit=MAX_HEAD)

    async def stop(self) -> None:
        """Stop accepting; close idle connections; let handlers in flight finish (an
        attach half done would leave local state behind) for up to STOP_GRACE."""
        if self._server is not None:
            self._stopping = True  # a busy connection closes after its answer
            self._server.close()
            for t in self._conns - self._busy:
                t.cancel()
            if self._busy:
                await asyncio.wait(set(self._busy), timeout=STOP_GRACE)
            for t in self._conns:
                t.cancel()
            await asyncio.gather(*self._conns, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None
        if self.path is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is None or len(self._conns) >= self.max_connections:
            self.refused += 1
            writer.close()
            return
        self._conns.add(task)
        try:
            while await self._one(reader, writer, task):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except asyncio.CancelledError:
            return  # stop(): a normal end for a connection (no error logged for it)
        except Exception:  # never leave a connection task dying with a traceback
            log.debug("API connection failed", exc_info=True)
        finally:
            self._conns.discard(task)
            self._busy.discard(task)
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   task: asyncio.Task) -> bool:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.idle_timeout)
        except asyncio.IncompleteReadError as exc:
            if exc.partial.strip():
                await self._error(writer, HttpError(400, "incomplete request head"))
            return False
        except asyncio.LimitOverrunError:
            await self._error(writer, HttpError(431, "request head too large"))
            return False
        self._busy.add(task)
        try:
            req = parse_head(head)
            length = req.content_length or 0
            if length > self.max_body:
                raise HttpError(413, "request body too large")
            # route first: no body is read for a request that will be refused
            handler, req.match_info = self.router.resolve(req.method, req.path)
        except HttpError as exc:
            await self._error(writer, exc)
            return False
        if length:
            req.body = await asyncio.wait_for(reader.readexactly(length), IDLE_TIMEOUT)
        try:
            resp = await handler(req)
        except HttpError as exc:
            resp = Response.json({self.error_key: str(exc)}, exc.status)
        except Exception as exc:  # a bug: answer, log, keep serving
            log.exception("API %s %s failed", req.method, req.path)
            resp = Response.json({self.error_key: f"internal error: {exc}"}, 500)
        keep = req.keep_alive and not self._stopping
        writer.write(resp.encode(keep))
        await asyncio.wait_for(writer.drain(), IDLE_TIMEOUT)
        self._busy.discard(task)
        return keep

    async def _error(self, writer: asyncio.StreamWriter, exc: HttpError) -> None:
        writer.write(Response.json({self.error_key: str(exc)}, exc.status).encode(False))
        try:
            await asyncio.wait_for(writer.drain(), IDLE_TIMEOUT)
        except (ConnectionError, TimeoutError):
            pass
