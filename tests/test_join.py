"""Joining through a long address list a few at a time (``meshnet.join``)."""

from __future__ import annotations

import asyncio
import time
from random import Random

from meshnet.gossip.events import JoinCompleted
from meshnet.join import join_some


class FakePeers:
    """``live`` answer after 20 ms, ``holes`` answer nothing until their stream times out
    after ``stream_timeout`` (as memberlist's TCP timeout ends a push/pull), the rest
    refuse at once. A call push/pulls with its addresses side by side and returns when
    all are done, as the gossip core's join does."""

    def __init__(self, live=(), holes=(), stream_timeout: float = 3600.0) -> None:
        self.live, self.holes = set(live), set(holes)
        self.stream_timeout = stream_timeout
        self.calls: list[list[str]] = []
        self.contacted: list[str] = []
        self.in_flight = self.most_in_flight = 0

    async def join(self, addrs: list[str], timeout: float) -> JoinCompleted:
        self.contacted += addrs
        self.calls.append(list(addrs))
        self.in_flight += len(addrs)
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            async def one(a: str) -> str | None:
                if a in self.live:
                    await asyncio.sleep(0.02)
                    return None
                if a in self.holes:
                    await asyncio.sleep(self.stream_timeout)
                    return f"{a}: i/o timeout"
                return f"{a}: refused"
            got = await asyncio.wait_for(asyncio.gather(*map(one, addrs)), timeout)
            errs = tuple(e for e in got if e)
            return JoinCompleted(0, len(addrs) - len(errs), errs)
        finally:
            self.in_flight -= len(addrs)


ADDRS = [f"h{i}" for i in range(100)]


def run(peers: FakePeers, **kw) -> tuple[int, list[str], float]:
    t0 = time.monotonic()
    ok, errors = asyncio.run(join_some(peers.join, ADDRS, Random(1), **kw))
    return ok, errors, time.monotonic() - t0


def test_a_short_list_is_one_push_pull_with_every_address_like_memberlist():
    peers = FakePeers(live=ADDRS[:8])
    ok, errors = asyncio.run(join_some(peers.join, ADDRS[:8], Random(1)))
    assert ok == 8 and not errors
    assert len(peers.calls) == 1 and sorted(peers.calls[0]) == sorted(ADDRS[:8])


def test_stops_at_the_first_batch_that_joins_and_keeps_the_load_small():
    peers = FakePeers(live=ADDRS[1:])  # everyone up but one
    ok, _, _ = run(peers)
    assert ok >= 7  # the first batch of 8 joined (one of them may be the host that is down)
    assert len(peers.calls) == 1 and peers.most_in_flight <= 8, peers.calls
    assert len(set(peers.contacted)) == 8


def test_nobody_up_fails_fast_after_asking_everyone():
    peers = FakePeers()
    ok, errors, took = run(peers, timeout=6.0)
    assert ok == 0 and sorted(peers.contacted) == sorted(ADDRS)
    assert len(errors) == 100 and took < 1.0, took


def test_black_holes_do_not_hold_back_the_live_peer():
    live = "h57"
    peers = FakePeers(live=[live], holes=[a for a in ADDRS if a != live], stream_timeout=0.2)
    ok, _, took = run(peers, stagger=0.005, timeout=5.0)
    assert ok == 1 and live in peers.contacted
    # 13 batches start 5 ms apart; the live one ends with its holes' streams (0.2 s),
    # not after one stream timeout per batch (2.6 s)
    assert took < 1.0, took


def test_gives_up_at_the_deadline_when_nothing_answers():
    peers = FakePeers(holes=ADDRS)
    ok, errors, took = run(peers, stagger=0.01, timeout=0.3)
    assert ok == 0 and "timed out" in errors and 0.25 < took < 1.0, (errors, took)
