"""The local API's routes: each translates HTTP to one call of the agent's command
interface (``AgentApi``) and back. The API sits above the agent: it knows this
interface, the agent knows nothing of HTTP."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from meshnet.api.http import MAX_BODY, Request
from meshnet.errors import UserError
from meshnet.model import Endpoint, Network
from meshnet.trace.model import TraceRequest

Route = tuple[tuple[str, str], Callable[[Request], Awaitable[Any]]]


class Tracing(Protocol):
    async def trace(self, req: TraceRequest) -> dict[str, Any]: ...

    def in_flight(self) -> list[str]: ...


class AgentApi(Protocol):
    """What the API asks of the agent."""

    tracer: Tracing

    def status(self) -> dict[str, Any]: ...

    def members(self) -> list[dict[str, Any]]: ...

    def metrics(self) -> dict[str, Any]: ...

    async def durable(self) -> None: ...

    async def leave(self) -> dict[str, Any]: ...

    def list_networks(self) -> list[Network]: ...

    async def create_network(self, body: dict[str, Any]) -> Network: ...

    def remove_network(self, name: str) -> None: ...

    async def attach(self, body: dict[str, Any]) -> Endpoint: ...

    async def detach(self, ns: str, network: str | None = None) -> list[Endpoint]: ...

    def list_endpoints(self) -> list[Endpoint]: ...

    def create_service(self, body: dict[str, Any]) -> Any: ...

    def list_services(self) -> list[Any]: ...

    def remove_service(self, name: str) -> None: ...

    async def publish(self, body: dict[str, Any]) -> Any: ...

    async def unpublish(self, key: str) -> Any: ...

    def list_published(self) -> list[Any]: ...

    def keys(self) -> dict[str, Any]: ...

    def change_keys(self, body: dict[str, Any]) -> dict[str, Any]: ...


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


def routes(agent: AgentApi) -> list[Route]:
    async def status(_: Request) -> Any:
        return agent.status()

    async def members(_: Request) -> Any:
        return agent.members()

    async def metrics(_: Request) -> Any:
        return agent.metrics()

    async def leave(_: Request) -> Any:
        return await agent.leave()

    async def networks(_: Request) -> Any:
        return [n.to_dict() for n in agent.list_networks()]

    async def network_create(request: Request) -> Any:
        return (await agent.create_network(await read_body(request))).to_dict()

    async def network_rm(request: Request) -> Any:
        agent.remove_network(request.match_info["name"])
        return {"removed": request.match_info["name"]}

    async def attach(request: Request) -> Any:
        return (await agent.attach(await read_body(request))).to_dict()

    async def detach(request: Request) -> Any:
        q = request.query
        return [e.to_dict() for e in await agent.detach(q.get("netns", ""),
                                                         q.get("network") or None)]

    async def endpoints(_: Request) -> Any:
        return [e.to_dict() for e in agent.list_endpoints()]

    async def service_create(request: Request) -> Any:
        return agent.create_service(await read_body(request)).to_dict()

    async def service_ls(_: Request) -> Any:
        return [s.to_dict() for s in agent.list_services()]

    async def service_rm(request: Request) -> Any:
        agent.remove_service(request.match_info["name"])
        return {"removed": request.match_info["name"]}

    async def publish(request: Request) -> Any:
        return (await agent.publish(await read_body(request))).to_dict()

    async def unpublish(request: Request) -> Any:
        return (await agent.unpublish(request.match_info["key"].replace("-", "/"))).to_dict()

    async def published(_: Request) -> Any:
        return [p.to_dict() for p in agent.list_published()]

    async def keys_get(_: Request) -> Any:
        return agent.keys()

    async def keys_post(request: Request) -> Any:
        return agent.change_keys(await read_body(request))

    async def trace(request: Request) -> Any:
        return await agent.tracer.trace(TraceRequest.from_body(await read_body(request)))

    async def traces(_: Request) -> Any:
        return agent.tracer.in_flight()

    return [
        (("GET", "/v1/status"), status), (("GET", "/v1/members"), members),
        (("GET", "/v1/metrics"), metrics), (("POST", "/v1/leave"), leave),
        (("GET", "/v1/networks"), networks), (("POST", "/v1/networks"), network_create),
        (("DELETE", "/v1/networks/{name}"), network_rm),
        (("POST", "/v1/endpoints"), attach), (("DELETE", "/v1/endpoints"), detach),
        (("GET", "/v1/endpoints"), endpoints),
        (("POST", "/v1/services"), service_create), (("GET", "/v1/services"), service_ls),
        (("DELETE", "/v1/services/{name}"), service_rm),
        (("POST", "/v1/published"), publish), (("GET", "/v1/published"), published),
        (("DELETE", "/v1/published/{key}"), unpublish),
        (("GET", "/v1/keys"), keys_get), (("POST", "/v1/keys"), keys_post),
        (("POST", "/v1/trace"), trace), (("GET", "/v1/trace"), traces),
    ]
