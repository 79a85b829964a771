"""The agent's fronts: the local API (JSON over HTTP on a unix socket, mode 0600, served
by :mod:`meshnet.api.http`) and the optional Prometheus endpoint.

Routes (:mod:`meshnet.api.routes`) only translate HTTP to calls on the agent's command
interface and back. Every :class:`UserError` becomes ``{"error": message}`` with 404
(NotFound), 409 (Conflict) or 400; the agent's state is unchanged when an error is
returned. A change is answered only once it is on disk (``AgentApi.durable``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from meshnet.api.http import HttpServer, Request, Response, Router
from meshnet.api.routes import AgentApi, routes
from meshnet.config import AgentConfig, parse_hostport
from meshnet.errors import Conflict, NotFound, UserError
from meshnet.prometheus import render

log = logging.getLogger("meshnet.api")
Handler = Callable[[Request], Awaitable[Response]]


class Front(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def _wrap(fn: Callable[[Request], Awaitable[Any]],
          durable: Callable[[], Awaitable[None]] | None = None) -> Handler:
    """``durable``: awaited after a change succeeded, before the answer (so an accepted
    change is on disk when the caller hears of it)."""
    async def handler(request: Request) -> Response:
        try:
            result = await fn(request)
            if durable is not None:
                await durable()
            return Response.json(result)
        except NotFound as exc:
            return Response.json({"error": str(exc)}, 404)
        except Conflict as exc:
            return Response.json({"error": str(exc)}, 409)
        except UserError as exc:
            return Response.json({"error": str(exc)}, 400)

    return handler


def build_router(agent: AgentApi) -> Router:
    router = Router()
    for (method, path), fn in routes(agent):
        router.add(method, path, _wrap(fn, None if method == "GET" else agent.durable))
    return router


class ApiServer:
    """Serves the API on a unix socket that only root (the socket's owner) may open."""

    def __init__(self, agent: AgentApi, path: str) -> None:
        self.path = path
        self._http = HttpServer(build_router(agent))

    async def start(self) -> None:
        await self._http.start_unix(self.path)
        log.info("api listening on %s", self.path)

    async def stop(self) -> None:
        await self._http.stop()


class MetricsServer:
    """Prometheus text on http://ADDR:PORT/metrics (``--metrics``), from ``metrics()``."""

    def __init__(self, agent: AgentApi, addr: str) -> None:
        self.host, self.port = parse_hostport(addr, 0, "metrics address")

        async def handler(_: Request) -> Response:
            return Response(body=render(agent.metrics()).encode(),
                            content_type="text/plain; version=0.0.4; charset=utf-8",
                            headers=(("X-Content-Type-Options", "nosniff"),))

        router = Router()
        router.add("GET", "/metrics", handler)
        self._http = HttpServer(router, max_body=0)  # GET only: no request body is read

    async def start(self) -> None:
        await self._http.start_tcp(self.host, self.port)
        log.info("metrics on http://%s:%d/metrics", self.host, self.port)

    async def stop(self) -> None:
        await self._http.stop()


def fronts(config: AgentConfig) -> list[Callable[[AgentApi], Front]]:
    """What ``meshnet agent`` serves: the API, and the metrics endpoint if configured."""
    out: list[Callable[[AgentApi], Front]] = [lambda agent: ApiServer(agent, config.api)]
    if config.metrics:
        out.append(lambda agent: MetricsServer(agent, config.metrics))
    if config.runtime == "docker" and config.docker_plugin_socket:
        from meshnet.dockerplugin.server import PluginServer

        out.append(lambda agent: PluginServer(agent, config.docker_plugin_socket,  # type: ignore[arg-type]
                                              config.state_dir, config.docker_socket))
    return out
