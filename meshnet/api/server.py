"""The agent side of the local API: JSON over HTTP on a unix socket, mode 0600
(served by :mod:`meshnet.api.http`).

Handlers only translate HTTP to calls on :class:`meshnet.agent.Agent` and back. Every
:class:`UserError` becomes ``{"error": message}`` with 404 (NotFound), 409 (Conflict)
or 400; the agent's state is unchanged when an error is returned.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from meshnet.api.http import MAX_BODY, HttpServer, Request, Response, Router
from meshnet.errors import Conflict, NotFound, UserError

if TYPE_CHECKING:
    from meshnet.agent import Agent

log = logging.getLogger("meshnet.api")
Handler = Callable[[Request], Awaitable[Response]]


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


async def read_body(request: Request) -> dict[str, Any]:
    if request.content_length and request.content_length > MAX_BODY:
        raise UserError("request body too large")
    try:
        data = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise UserError("request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise UserError("request body must be a JSON object")
    return data


def build_router(agent: Agent) -> Router:
    router = Router()

    async def status(_: Request) -> Any:
        return agent.status()

    async def members(_: Request) -> Any:
        return agent.members()

    async def networks(_: Request) -> Any:
        return [n.to_dict() for n in agent.list_networks()]

    async def network_create(request: Request) -> Any:
        return agent.create_network(await read_body(request)).to_dict()

    async def network_rm(request: Request) -> Any:
        agent.remove_network(request.match_info["name"])
        return {"removed": request.match_info["name"]}

    async def leave(_: Request) -> Any:
        return await agent.leave()

    routes: list[tuple[tuple[str, str], Callable[[Request], Awaitable[Any]]]] = [
        (("GET", "/v1/status"), status), (("GET", "/v1/members"), members),
        (("GET", "/v1/networks"), networks), (("POST", "/v1/networks"), network_create),
        (("DELETE", "/v1/networks/{name}"), network_rm), (("POST", "/v1/leave"), leave),
        *agent.extra_routes()]
    for (method, path), fn in routes:
        router.add(method, path, _wrap(fn, None if method == "GET" else agent.durable))
    return router


class ApiServer:
    """Serves the API on a unix socket that only root (the socket's owner) may open."""

    def __init__(self, agent: Agent, path: str) -> None:
        self.path = path
        self._http = HttpServer(build_router(agent))

    async def start(self) -> None:
        await self._http.start_unix(self.path)
        log.info("api listening on %s", self.path)

    async def stop(self) -> None:
        await self._http.stop()
