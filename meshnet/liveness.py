"""Agent down or host down? A probe the host's kernel answers without the agent.

Membership (SWIM) only says that a member's *agent* stopped answering. Its host may still
forward: the containers, sandboxes, FDB entries and rules stay in the kernel while the
agent restarts, upgrades or crashes. Removing its endpoints everywhere then would cut
traffic that still flows, so before that the agent asks the host's kernel directly: a TCP
connection to the member's gossip port. With the agent running it is accepted; with the
agent gone the kernel refuses it with a RST at once. Either answer means the host is up.
Silence (a timeout, "no route to host", "host unreachable") means the host is gone or cut
off, and its entries are removed as before.

Two connection attempts go out together, so one lost SYN does not make a live host look
dead. A firewall that drops (rather than rejects) closed ports makes every stopped agent
look like a gone host: the behaviour of older meshnet, documented in docs/operations.md.
"""

from __future__ import annotations

import asyncio
import errno

#: errors that mean "the host's kernel answered": refused (RST), or reset after accept
_ANSWERED = {errno.ECONNREFUSED, errno.ECONNRESET}


async def _attempt(addr: str, port: int, timeout: float) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(addr, port), timeout)
    except ConnectionRefusedError:
        return True
    except (TimeoutError, OSError) as exc:
        return getattr(exc, "errno", None) in _ANSWERED
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
    return True


async def host_answers(addr: str, port: int, timeout: float, attempts: int = 2) -> bool:
    """True if the host at ``addr`` answers a TCP connection to ``port`` (accepted or
    refused) within ``timeout`` seconds."""
    tasks = [asyncio.ensure_future(_attempt(addr, port, timeout)) for _ in range(attempts)]
    try:
        for fut in asyncio.as_completed(tasks):
            if await fut:
                return True
        return False
    finally:
        for t in tasks:
            t.cancel()
