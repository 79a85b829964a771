"""What the agent lends the services that run inside it (load balancing, trace).

A narrow port instead of the agent itself: the tables, this node's identity, the kernel
thread, the address claim and two nudges. The agent builds one ``HostPort`` from its own
parts; tests build one from fakes. Nothing here imports the agent.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from meshnet.model import Endpoint, IPAddress, Network
from meshnet.store import Store

#: publish an endpoint on a free (or the given static) address of a network; returns it
#: once the claim holds cluster-wide (see ``Agent._claim``)
Claim = Callable[[Network, Any, Callable[[IPAddress], Endpoint]], Awaitable[Endpoint]]


@dataclass(frozen=True)
class HostPort:
    node: str  #: this node's name
    prefix: str  #: prefix of the namespaces the agent creates
    vtep: str  #: this host's underlay (VTEP) address
    store: Store  #: the replicated tables
    clock: Callable[[], float]
    #: run a synchronous kernel call on the agent's one kernel thread
    in_kernel: Callable[[Callable[[], Any]], Awaitable[Any]]
    #: hosts found gone or left (not those whose agent is merely down)
    gone_hosts: Callable[[], set[str]]
    claim: Claim
    #: wait (at most the given seconds) until the overlay has applied the current tables
    overlay_settled: Callable[[float], Awaitable[None]]
    #: ask the named kernel programmer ("lb", "vxlan", ...) to run again soon
    kick: Callable[[str], None]
    #: this host's parent interface for a macvlan network
    macvlan_parent: Callable[[Network], str] = lambda net: net.parent
