"""Joining through a long address list a few at a time (``meshnet.join``)."""

from __future__ import annotations

import asyncio
import time
from random import Random

from meshnet.gossip.events import JoinCompleted
from meshnet.join import join_some


class FakePeers:
    """``live`` answer after 20 ms, ``holes`` never answer, the rest refuse at once."""

    def __init__(self, live=(), holes=()) -> None:
        self.live, self.holes = set(live), set(holes)
        self.contacted: list[str] = []
        self.in_flight = self.most_in_flight = 0

    async def join(self, addrs: list[str], timeout: float) -> JoinCompleted:
        self.contacted += addrs
        self.in_flight += len(addrs)
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            async def one(a: str) -> str | None:
                if a in self.live:
                    await asyncio.sleep(0.02)
                    return None
                if a in self.holes:
                    await asyncio.sleep(3600)
                return f"{a}: refused"
            got = [await asyncio.wait_for(one(a), timeout) for a in addrs]
            errs = tuple(e for e in got if e)
            return JoinCompleted(0, len(addrs) - len(errs), errs)
        finally:
            self.in_flight -= len(addrs)


ADDRS = [f"h{i}" for i in range(100)]


def run(peers: FakePeers, **kw) -> tuple[int, list[str], float]:
    t0 = time.monotonic()
    ok, errors = asyncio.run(join_some(peers.join, ADDRS, Random(1), **kw))
    return ok, errors, time.monotonic() - t0


def test_stops_at_the_first_batch_that_joins_and_keeps_the_load_small():
    peers = FakePeers(live=ADDRS[1:])  # everyone up but one
    ok, _, _ = run(peers)
    assert ok >= 1
    assert len(peers.contacted) <= 2 and peers.most_in_flight <= 2, peers.contacted


def test_nobody_up_fails_fast_after_asking_everyone():
    peers = FakePeers()
    ok, errors, took = run(peers, timeout=6.0)
    assert ok == 0 and sorted(peers.contacted) == sorted(ADDRS)
    assert len(errors) == 100 and took < 1.0, took


def test_black_holes_do_not_hold_back_the_live_peer():
    live = "h57"
    peers = FakePeers(live=[live], holes=[a for a in ADDRS if a != live])
    ok, _, took = run(peers, stagger=0.005, timeout=5.0)
    assert ok == 1 and live in peers.contacted
    assert took < 1.5, took  # at most 100 starts 5 ms apart, not one timeout after another


def test_gives_up_at_the_deadline_when_nothing_answers():
    peers = FakePeers(holes=ADDRS)
    ok, errors, took = run(peers, stagger=0.01, timeout=0.3)
    assert ok == 0 and "timed out" in errors and 0.25 < took < 1.0, (errors, took)
