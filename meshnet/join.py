"""Joining a cluster through a long list of addresses, a few at a time.

serf's retry-join hands memberlist every address, and memberlist push/pulls with each of
them. With a list of every host (what the lab and a config management tool write), a
late joiner in a 100-host cluster would open 99 push/pulls at once, and each of those
peers, seeing it join, opens a table sync back: on a busy box the replies miss the
join's deadline and the join fails with every peer up (seen at 100 hosts on 2 cores).

So the join takes the addresses in a random order in batches of ``batch`` (8): a list
that short is one batch, so a small cluster joins exactly as memberlist does (push/pull
with every address at once, and everybody knows the joiner at once). A longer list goes
batch after batch, happy-eyeballs style: the next starts as soon as one failed, or
``stagger`` seconds after the last while those are still pending (a black-holed batch
does not hold the rest back), and joining stops at the first batch in which a push/pull
succeeded. A few live peers are enough: their state has every member they know, and
gossip and the catch-up push/pulls after a join (``GossipConfig.join_catch_up``) do the
rest.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from random import Random
from typing import TypeVar

from meshnet.gossip.events import JoinCompleted

A = TypeVar("A")
JoinFn = Callable[[list[A], float], Awaitable[JoinCompleted]]


#: addresses per push/pull batch: a list this short joins all at once, like memberlist
BATCH = 8


async def join_some(join: JoinFn, addrs: Sequence[A], rng: Random, *, batch: int = BATCH,
                    stagger: float = 0.5, timeout: float = 6.0) -> tuple[int, list[str]]:
    """Call ``join(batch_of_addrs, timeout)`` for batches of ``addrs`` (shuffled) until
    one succeeds, all failed, or ``timeout`` passed: (successful push/pulls, errors)."""
    order = list(addrs)
    rng.shuffle(order)
    batches = [order[i:i + batch] for i in range(0, len(order), batch)]
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    pending: set[asyncio.Task[JoinCompleted]] = set()
    ok, errors = 0, []
    last_start = -float("inf")
    failed_one = False
    try:
        while ok == 0:
            now = loop.time()
            if now >= end:
                errors.append("timed out")
                break
            if batches and (failed_one or not pending or now - last_start >= stagger):
                pending.add(asyncio.ensure_future(join(batches.pop(0), end - now)))
                last_start, failed_one = now, False
            if not pending:
                break  # every batch answered, none joined
            wait = end - now
            if batches:
                wait = min(wait, max(0.0, last_start + stagger - now))
            done, pending = await asyncio.wait(pending, timeout=wait,
                                               return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                try:
                    res = task.result()
                except TimeoutError:
                    errors.append("timed out")
                    failed_one = True
                    continue
                ok += res.ok
                errors.extend(res.errors)
                failed_one = failed_one or not res.ok
    finally:
        for task in pending:  # the push/pulls themselves still finish and merge
            task.cancel()
    return ok, errors
