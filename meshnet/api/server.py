"""The agent side of the local API: aiohttp on a unix socket, mode 0600.

Handlers only translate HTTP to calls on :class:`meshnet.agent.Agent` and back. Every
:class:`UserError` becomes ``{"error": message}`` with 404 (NotFound), 409 (Conflict)
or 400; the agent's state is unchanged when an error is returned.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from meshnet.errors import Conflict, NotFound, UserError

if TYPE_CHECKING:
    from meshnet.agent import Agent

log = logging.getLogger("meshnet.api")
Handler = Callable[[web.Request], Awaitable[Any]]
MAX_BODY = 1 << 20


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(data, indent=None, sort_keys=True), status=status,
        content_type="application/json",
    )


def _wrap(fn: Callable[[web.Request], Awaitable[Any]]) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        try:
            return _json(await fn(request))
        except NotFound as exc:
            return _json({"error": str(exc)}, 404)
        except Conflict as exc:
            return _json({"error": str(exc)}, 409)
        except UserError as exc:
            return _json({"error": str(exc)}, 400)

    return handler


async def read_body(request: web.Request) -> dict[str, Any]:
    if request.content_length and request.content_length > MAX_BODY:
        raise UserError("request body too large")
    try:
        data = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise UserError("request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise UserError("request body must be a JSON object")
    return data


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return _json({"error": f"this agent has no API {request.method} {request.path}"}, 404)
    except web.HTTPMethodNotAllowed:
        return _json({"error": f"{request.method} is not allowed on {request.path}"}, 405)


def build_app(agent: Agent) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY, middlewares=[_json_errors])

    async def status(_: web.Request) -> Any:
        return agent.status()

    async def members(_: web.Request) -> Any:
        return agent.members()

    async def networks(_: web.Request) -> Any:
        return [n.to_dict() for n in agent.list_networks()]

    async def network_create(request: web.Request) -> Any:
        return agent.create_network(await read_body(request)).to_dict()

    async def network_rm(request: web.Request) -> Any:
        agent.remove_network(request.match_info["name"])
        return {"removed": request.match_info["name"]}

    app.router.add_get("/v1/status", _wrap(status))
    app.router.add_get("/v1/members", _wrap(members))
    app.router.add_get("/v1/networks", _wrap(networks))
    app.router.add_post("/v1/networks", _wrap(network_create))
    app.router.add_delete("/v1/networks/{name}", _wrap(network_rm))
    for route, fn in agent.extra_routes():
        method, path = route
        app.router.add_route(method, path, _wrap(fn))
    return app


class ApiServer:
    """Serves the app on a unix socket that only root (the socket's owner) may open."""

    def __init__(self, agent: Agent, path: str) -> None:
        self.path = path
        self._runner = web.AppRunner(build_app(agent), access_log=None, handle_signals=False)

    async def start(self) -> None:
        os.makedirs(os.path.dirname(self.path) or ".", mode=0o755, exist_ok=True)
        if os.path.exists(self.path):
            os.unlink(self.path)  # a stale socket from a crashed agent
        await self._runner.setup()
        old = os.umask(0o177)
        try:
            site = web.UnixSite(self._runner, self.path)
            await site.start()
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        log.info("api listening on %s", self.path)

    async def stop(self) -> None:
        await self._runner.cleanup()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
