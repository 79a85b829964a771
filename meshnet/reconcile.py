"""The reconciler shape every kernel programmer shares (style rule 3).

``want()`` (pure, from the tables) -> ``kernel.observe()`` -> ``plan(want, have)`` (pure,
ordered ops) -> ``kernel.apply(ops)``, which returns the container namespaces it found
gone (their endpoints are then detached). Applying a plan and planning again gives an
empty plan. Kernel calls run on the agent's kernel thread through ``run``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

RunInKernel = Callable[[Callable[[], Any]], Awaitable[Any]]


class Reconciler:
    what = "kernel"  #: for the log line ("applying 3 overlay change(s): ...")
    log = logging.getLogger("meshnet")

    def __init__(self, kernel: Any, run: RunInKernel,
                 on_netns_gone: Callable[[list[str]], None] = lambda gone: None) -> None:
        self.kernel = kernel
        self.run = run
        self.on_netns_gone = on_netns_gone
        self.last_plan: list[Any] = []
        self.ops_applied = 0

    def want(self) -> Any:
        raise NotImplementedError

    def plan(self, want: Any, have: Any) -> list[Any]:
        raise NotImplementedError

    @staticmethod
    def kind(op: Any) -> str:
        return type(op).__name__

    async def sync(self, full: bool) -> None:
        want = self.want()
        have = await self.run(self.kernel.observe)
        ops = self.plan(want, have)
        self.last_plan = ops
        if not ops:
            return
        self.log.info("applying %d %s change(s): %s", len(ops), self.what,
                      ", ".join(sorted({self.kind(o) for o in ops})))
        gone = await self.run(lambda: self.kernel.apply(ops))
        self.ops_applied += len(ops)
        if gone:
            self.on_netns_gone(gone)
