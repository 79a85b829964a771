"""A small async Docker Engine API client over the unix socket (``unixhttp``).

Only what the watcher needs: ``ping`` (API version negotiation), ``containers`` (list,
label filter), ``inspect`` and ``events`` (a streamed, newline-delimited JSON body).

* Version: ``GET /_ping`` answers with the daemon's ``Api-Version`` header; requests use
  ``/v{min(daemon, MAX_API)}``. The calls used here exist unchanged since API 1.24.
  Negotiated again on every ``events`` connect, so a dockerd upgraded across a restart
  is fine.
* Errors: :class:`DockerUnavailable` when the daemon cannot be reached or a stream
  breaks (the caller reconnects); :class:`DockerError` for an error answer (non-2xx).
  A stream line that is not a JSON object is counted in ``bad_lines`` and skipped.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Protocol

from meshnet.runtime import unixhttp
from meshnet.runtime.unixhttp import HttpClientError

DEFAULT_SOCKET = "/var/run/docker.sock"
MAX_API = (1, 45)
MIN_API = (1, 24)

log = logging.getLogger("meshnet.docker")


class DockerUnavailable(Exception):
    """dockerd is not reachable, or the connection broke (retry later)."""


class DockerError(Exception):
    """dockerd answered a request with an error."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"docker API {status}: {message}")
        self.status = status


class EventStream(Protocol):
    def __aiter__(self) -> AsyncIterator[dict[str, Any]]: ...

    async def close(self) -> None: ...


class DockerPort(Protocol):
    """What the watcher needs from Docker (the real client, or a fake in the tests)."""

    async def containers(self, labels: Sequence[str] = (), all: bool = False
                         ) -> list[dict[str, Any]]: ...

    async def inspect(self, cid: str) -> dict[str, Any] | None: ...

    async def events(self, filters: Mapping[str, Sequence[str]]) -> EventStream:
        """Connected (the daemon answered) when this returns; iteration ends by raising
        DockerUnavailable when the daemon goes away."""
        ...

    async def close(self) -> None: ...


def parse_version(text: str) -> tuple[int, int] | None:
    major, _, minor = text.strip().partition(".")
    if not major.isdigit() or not minor.isdigit():
        return None
    return int(major), int(minor)


def negotiate(server: str | None) -> str:
    """The API version to speak: the daemon's, capped at MAX_API (MAX_API if unknown)."""
    v = parse_version(server or "") or MAX_API
    v = min(v, MAX_API)
    if v < MIN_API:
        raise DockerError(0, f"dockerd speaks API {server}; meshnet needs >= "
                             f"{MIN_API[0]}.{MIN_API[1]}")
    return f"{v[0]}.{v[1]}"


class _Stream:
    def __init__(self, resp: unixhttp.Response, client: DockerClient) -> None:
        self._resp = resp
        self._client = client

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[dict[str, Any]]:
        try:
            while True:
                try:
                    line = await self._resp.readline()
                except (HttpClientError, OSError) as exc:
                    raise DockerUnavailable(f"event stream broke: {exc}") from None
                if not line:
                    raise DockerUnavailable("event stream closed by dockerd")
                if not line.strip():
                    continue
                try:
                    event = json.loads(line)
                except ValueError:
                    event = None
                if not isinstance(event, dict):
                    self._client.bad_lines += 1
                    if self._client.bad_lines == 1:
                        log.warning("docker sent an event that is not a JSON object; "
                                    "skipping such lines")
                    continue
                yield event
        finally:
            self._resp.close()

    async def close(self) -> None:
        self._resp.close()


class DockerClient:
    """The Docker Engine API on a unix socket (one connection per request)."""

    def __init__(self, socket: str = DEFAULT_SOCKET, timeout: float = 10.0) -> None:
        self.socket = socket
        self.timeout = timeout
        self.api: str | None = None
        self.bad_lines = 0

    async def close(self) -> None:
        """Nothing is kept open between requests (streams are closed by their owner)."""

    async def _request(self, path: str, params: Mapping[str, str] | None = None,
                       method: str = "GET", body: bytes | None = None) -> unixhttp.Response:
        try:
            resp = await unixhttp.request(self.socket, method, path, dict(params or {}), body,
                                          self.timeout)
        except (HttpClientError, OSError, TimeoutError) as exc:
            raise DockerUnavailable(f"cannot reach dockerd at {self.socket}: {exc}") from None
        if resp.status >= 400:
            try:
                body = await asyncio.wait_for(resp.read(1 << 20), self.timeout)
                message = json.loads(body).get("message", "")
            except (ValueError, AttributeError, HttpClientError, OSError, TimeoutError):
                message = resp.reason or ""
            finally:
                resp.close()
            raise DockerError(resp.status, str(message))
        return resp

    async def ping(self) -> str:
        """Negotiate the API version (``GET /_ping``); returns it."""
        resp = await self._request("/_ping")
        try:
            self.api = negotiate(resp.headers.get("api-version"))
        finally:
            resp.close()
        return self.api

    async def _get_json(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        if self.api is None:
            await self.ping()
        resp = await self._request(f"/v{self.api}{path}", params)
        try:
            return json.loads(await asyncio.wait_for(resp.read(), self.timeout))
        except (ValueError, HttpClientError, OSError, TimeoutError) as exc:
            raise DockerUnavailable(f"reading {path}: {exc}") from None
        finally:
            resp.close()

    async def post_json(self, path: str, data: Any) -> Any:
        """POST ``data`` as JSON; the decoded answer (None for an empty one)."""
        if self.api is None:
            await self.ping()
        resp = await self._request(f"/v{self.api}{path}", None, "POST",
                                   json.dumps(data).encode())
        try:
            raw = await asyncio.wait_for(resp.read(), self.timeout)
            return json.loads(raw) if raw.strip() else None
        except (ValueError, HttpClientError, OSError, TimeoutError) as exc:
            raise DockerUnavailable(f"reading {path}: {exc}") from None
        finally:
            resp.close()

    async def networks(self) -> list[dict[str, Any]]:
        out = await self._get_json("/networks")
        return [n for n in out if isinstance(n, dict)] if isinstance(out, list) else []

    async def network(self, nid: str) -> dict[str, Any] | None:
        try:
            out = await self._get_json(f"/networks/{nid}")
        except DockerError as exc:
            if exc.status == 404:
                return None
            raise
        return out if isinstance(out, dict) else None

    async def containers(self, labels: Sequence[str] = (), all: bool = False
                         ) -> list[dict[str, Any]]:
        params = {"all": "1" if all else "0"}
        if labels:
            params["filters"] = json.dumps({"label": list(labels)})
        out = await self._get_json("/containers/json", params)
        return [c for c in out if isinstance(c, dict)] if isinstance(out, list) else []

    async def inspect(self, cid: str) -> dict[str, Any] | None:
        try:
            out = await self._get_json(f"/containers/{cid}/json")
        except DockerError as exc:
            if exc.status == 404:
                return None
            raise
        return out if isinstance(out, dict) else None

    async def events(self, filters: Mapping[str, Sequence[str]]) -> EventStream:
        await self.ping()
        resp = await self._request(f"/v{self.api}/events",
                                   {"filters": json.dumps({k: list(v) for k, v in
                                                           filters.items()})})
        return _Stream(resp, self)
