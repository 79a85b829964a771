"""The watcher against an in-memory dockerd and agent: resync, events, reconnect.

No real time: the backoff sleep is replaced, and the helpers only yield to the loop.
"""

from __future__ import annotations

import asyncio
import logging

from meshnet.runtime.watcher import DockerWatcher
from tests.runtime.fakes import Ep, FakeAgent, FakeDocker

APP = {"meshnet.network": "appnet"}


async def _yield(_: float = 0) -> None:
    await asyncio.sleep(0)


def make(docker: FakeDocker, agent: FakeAgent | None = None):
    agent = agent or FakeAgent(docker)
    written: list[str] = []
    backoffs: list[float] = []

    async def sleep(delay: float) -> None:
        backoffs.append(delay)
        await asyncio.sleep(0)

    w = DockerWatcher(agent, docker, full_interval=1e9, min_interval=0, sleep=sleep,
                      ns_exists=docker.alive, resolv_writer=written.append)
    w.written, w.backoffs = written, backoffs  # type: ignore[attr-defined]
    return w, agent


async def until(pred, what: str, w: DockerWatcher | None = None, rounds: int = 500) -> None:
    for _ in range(rounds):
        if pred():
            if w is not None:
                await w.runner.settled(timeout=1)
                if pred():
                    return
            else:
                return
        await asyncio.sleep(0)
    raise AssertionError(f"never happened: {what}")


def test_start_resync_attaches_running_labelled_containers_once():
    async def main():
        d = FakeDocker()
        web = d.run("web1", {**APP, "meshnet.service": "web", "meshnet.aliases": "www,api"})
        d.run("plain")  # no label
        gone = d.run("gone", APP)
        d.die(gone)
        d.run("multi", {"meshnet.network": "appnet,other", "meshnet.aliases": "m"})
        d.run("static", {**APP, "meshnet.ip": "10.9.0.9"})
        w, agent = make(d)
        await w.start()
        await until(lambda: len(agent.endpoints) == 4, "4 attached", w)
        assert agent.names() == {("web1", "appnet"), ("multi", "appnet"),
                                 ("multi", "other"), ("static", "appnet")}
        ep = next(e for e in agent.endpoints.values() if e.name == "web1")
        pid = d.records[web]["State"]["Pid"]
        assert ep == Ep(f"/proc/{pid}/ns/net", "appnet", "web1", "web", ("www", "api"))
        assert next(e for e in agent.endpoints.values() if e.name == "static").ip == "10.9.0.9"
        assert sorted(w.written) == sorted(d.records[c]["ResolvConfPath"] for c in d.records
                                           if c not in (gone,) and d.records[c]["Config"]
                                           ["Labels"])
        # more full syncs change nothing: none attached twice, resolv.conf written once
        for _ in range(3):
            w.runner.kick(full=True)
            await w.runner.settled(timeout=1)
        assert len(agent.attaches) == 4 and agent.detaches == []
        assert len(w.written) == 3
        await w.stop()

    asyncio.run(main())


def test_agent_restart_resyncs_without_double_attach_or_miss():
    async def main():
        d = FakeDocker()
        keep = d.run("keep", APP)
        stale = d.run("stale", APP)
        w, agent = make(d)
        await w.start()
        await until(lambda: len(agent.endpoints) == 2, "attached", w)
        await w.stop()
        # while the agent is down: one container dies, one starts, pids get reused
        old_ns = next(e.netns for e in agent.endpoints.values() if e.name == "stale")
        d.die(stale, emit=False)
        new = d.run("new", APP, emit=False)
        # the restarted agent restores its saved endpoints (a reused pid looks alive)
        restored = FakeAgent(d, endpoints=dict(agent.endpoints))
        w2, _ = make(d, restored)
        await w2.start()
        await until(lambda: restored.names() == {("keep", "appnet"), ("new", "appnet")},
                    "resynced", w2)
        assert restored.attaches == [("new", "appnet")]
        assert restored.detaches == [("stale", "appnet")]
        assert (old_ns, "appnet") not in restored.endpoints
        assert d.records[keep]["State"]["Running"] and new in d.records
        await w2.stop()

    asyncio.run(main())


def test_start_then_die_events():
    async def main():
        d = FakeDocker()
        w, agent = make(d)
        await w.start()
        await until(lambda: d.streams, "events connected", w)
        cid = d.run("dweb", APP)
        await until(lambda: agent.names() == {("dweb", "appnet")}, "attached", w)
        assert w.written == [d.records[cid]["ResolvConfPath"]]
        d.die(cid)  # die + stop
        await until(lambda: not agent.endpoints, "detached", w)
        d.remove(cid)  # destroy of an already detached container: nothing to do
        await until(lambda: w.events_seen == 4, "4 events", w)
        assert agent.detaches == [("dweb", "appnet")]
        # restarted under the same id: a new pid, a new namespace, attached again
        cid2 = d.run("again", APP)
        await until(lambda: agent.names() == {("again", "appnet")}, "attached", w)
        d.die(cid2)
        d.start(cid2)
        await until(lambda: len(agent.attaches) == 3 and len(agent.endpoints) == 1,
                    "re-attached after restart", w)
        assert len(w.written) == 3  # once per start
        await w.stop()

    asyncio.run(main())


def test_container_dead_before_its_start_event_is_handled_is_not_attached():
    async def main():
        d = FakeDocker()
        w, agent = make(d)
        await w.start()
        await until(lambda: d.streams, "events connected", w)
        cid = d.run("flash", APP)
        d.die(cid)
        await until(lambda: w.events_seen == 3, "3 events", w)
        assert agent.attaches == [] and agent.endpoints == {}
        await w.stop()

    asyncio.run(main())


def test_dockerd_restart_reconnects_with_backoff_and_resyncs():
    async def main():
        d = FakeDocker()
        dies = d.run("dies", APP)
        w, agent = make(d)
        await w.start()
        await until(lambda: len(agent.endpoints) == 1 and d.streams, "attached", w)
        lists = d.lists
        d.stop_daemon()
        await until(lambda: len(w.backoffs) >= 4, "retrying")
        assert w.backoffs[:4] == [0.1, 0.2, 0.4, 0.8] and not w.connected
        # events lost while it was down: one container died, another started
        d.die(dies, emit=False)
        d.run("born", APP, emit=False)
        d.start_daemon()
        await until(lambda: agent.names() == {("born", "appnet")}, "resynced", w)
        assert d.lists > lists and d.connects == 2 and w.connected
        assert agent.detaches == [("dies", "appnet")]
        # the new stream works
        d.run("after", APP)
        await until(lambda: ("after", "appnet") in agent.names(), "attached", w)
        await w.stop()

    asyncio.run(main())


def test_dockerd_down_at_start_keeps_retrying_then_syncs():
    async def main():
        d = FakeDocker()
        d.run("early", APP)
        d.stop_daemon()
        w, agent = make(d)
        await w.start()
        await until(lambda: len(w.backoffs) >= 8, "retrying")
        assert max(w.backoffs) == 5.0  # capped
        assert agent.endpoints == {}
        d.start_daemon()
        await until(lambda: agent.names() == {("early", "appnet")}, "attached", w)
        await w.stop()

    asyncio.run(main())


def test_unusable_labels_are_logged_once_and_not_attached(caplog):
    async def main():
        d = FakeDocker()
        d.run("bad", {"meshnet.network": "no such/net"})
        d.run("hostnet", APP, mode="host")
        w, agent = make(d)
        await w.start()
        await until(lambda: w.relists == 1, "relisted", w)
        for _ in range(3):
            w.runner.kick(full=True)
            await w.runner.settled(timeout=1)
        assert agent.attaches == []
        await w.stop()

    with caplog.at_level(logging.WARNING, logger="meshnet.docker"):
        asyncio.run(main())
    lines = [r.getMessage() for r in caplog.records]
    assert sum("container bad is not attached" in m for m in lines) == 1, lines
    assert sum("container hostnet is not attached" in m and "--network none" in m
               for m in lines) == 1, lines


def test_missing_network_is_retried_when_it_is_created(caplog):
    async def main():
        d = FakeDocker()
        d.run("early", {"meshnet.network": "later"})
        w, agent = make(d)
        await w.start()
        await until(lambda: w.relists == 1, "relisted", w)
        w.runner.kick(full=True)
        await w.runner.settled(timeout=1)
        assert agent.endpoints == {}
        agent.create_network("later")
        await until(lambda: agent.names() == {("early", "later")}, "attached", w)
        await w.stop()

    with caplog.at_level(logging.WARNING, logger="meshnet.docker"):
        asyncio.run(main())
    assert sum("no network named later" in r.getMessage() for r in caplog.records) == 1


def test_api_attached_endpoints_are_left_alone():
    async def main():
        d = FakeDocker()
        w, agent = make(d)
        agent.endpoints[("mn-t-c1", "appnet")] = Ep("mn-t-c1", "appnet", "c1")
        agent.endpoints[("/proc/1/ns/net", "appnet")] = Ep("/proc/1/ns/net", "appnet", "pid1")
        await w.start()
        await until(lambda: w.relists == 1, "relisted", w)
        assert len(agent.endpoints) == 2 and agent.detaches == []
        await w.stop()

    asyncio.run(main())


def test_a_half_done_attach_is_cleaned_up_and_retried():
    async def main():
        d = FakeDocker()
        w, agent = make(d)
        await w.start()
        await until(lambda: d.streams, "events connected", w)
        # the namespace vanished in the middle of the attach (the kernel call failed)
        agent.fail_after_publish = FileNotFoundError(2, "No such file or directory")
        d.run("racer", APP)
        await until(lambda: w.events_seen == 1 and agent.detaches, "cleaned up", w)
        assert agent.endpoints == {} and w.runner.stats.errors == 0
        # the container is still running: the next sync attaches it for good
        w.runner.kick(full=True)
        await until(lambda: agent.names() == {("racer", "appnet")}, "attached", w)
        await w.stop()

    asyncio.run(main())


def test_slow_settle_keeps_the_endpoint():
    async def main():
        d = FakeDocker()
        d.run("slow", APP)
        w, agent = make(d)
        agent.fail_after_publish = TimeoutError()
        await w.start()
        await until(lambda: w.relists == 1 and agent.endpoints, "published", w)
        for _ in range(2):
            w.runner.kick(full=True)
            await w.runner.settled(timeout=1)
        assert agent.names() == {("slow", "appnet")} and agent.detaches == []
        await w.stop()

    asyncio.run(main())
