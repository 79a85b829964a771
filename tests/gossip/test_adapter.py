"""The asyncio adapter over real loopback sockets (short: two nodes, ephemeral ports)."""

from __future__ import annotations

import asyncio
import socket
import time
from random import Random

from meshnet.gossip import codec
from meshnet.gossip.adapter import GossipAdapter
from meshnet.gossip.config import GossipConfig
from meshnet.gossip.core import Memberlist
from meshnet.gossip.events import MemberJoin, MemberLeave, UserMessage
from meshnet.gossip.member import meshnet_meta
from meshnet.gossip.messages import Ack, Alive, Ping, addr_to_wire
from meshnet.gossip.security import Keyring


def free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                    u.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


async def wait_event(q: asyncio.Queue, pred, timeout: float = 5.0):
    async with asyncio.timeout(timeout):
        while True:
            ev = await q.get()
            if pred(ev):
                return ev


def test_two_adapters_join_message_and_leave():
    async def main() -> None:
        ring = Keyring([bytes(range(32))])
        cfg = GossipConfig.fast()
        cores = [Memberlist(cfg, f"a{i}", "127.0.0.1", free_port(), meshnet_meta(), Random(i),
                            ring) for i in range(2)]
        ads = [GossipAdapter(c) for c in cores]
        for ad in ads:
            await ad.start()
        try:
            res = await ads[1].join([("127.0.0.1", cores[0].port)], timeout=5)
            assert res.ok == 1 and res.errors == ()
            await wait_event(ads[0].events,
                             lambda e: isinstance(e, MemberJoin) and e.member.name == "a1")
            assert ads[1].send_user("a0", b"m\x01udp")
            assert ads[1].send_user("a0", b"m\x01tcp", reliable=True)
            got = set()
            while len(got) < 2:
                ev = await wait_event(ads[0].events, lambda e: isinstance(e, UserMessage))
                got.add((ev.payload, ev.reliable))
            assert got == {(b"m\x01udp", False), (b"m\x01tcp", True)}
            assert await ads[1].leave(timeout=3)
            await wait_event(ads[0].events,
                             lambda e: isinstance(e, MemberLeave) and e.member.name == "a1")
            assert cores[0].member("a1").state == "left"
            assert not any(k.startswith("drop.") for c in cores for k in c.metrics)
        finally:
            for ad in ads:
                await ad.stop()

    asyncio.run(main())


def test_ack_already_in_the_socket_beats_an_overdue_probe_deadline():
    """After a stall, asyncio reads one datagram per loop iteration and runs due timers in
    the same iteration; the adapter must take in what has arrived before the probe ends,
    or a live peer whose ack sits behind another packet is suspected."""
    async def main() -> None:
        cfg = GossipConfig.fast().replace(disable_tcp_pings=True, enable_compression=False)
        core = Memberlist(cfg, "a", "127.0.0.1", free_port(), meshnet_meta(), Random(1))
        ad = GossipAdapter(core)
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind(("127.0.0.1", 0))
        peer.setblocking(False)
        await ad.start()
        try:
            loop = asyncio.get_running_loop()
            core._ms.alive(Alive(1, "b", addr_to_wire("127.0.0.1"), peer.getsockname()[1],
                                 meshnet_meta(), cfg.vsn), loop.time())
            ping = None
            async with asyncio.timeout(5):
                while ping is None:
                    try:
                        data, _ = peer.recvfrom(65536)
                    except BlockingIOError:
                        await asyncio.sleep(0.005)
                        continue
                    ping = next((m for m in codec.decode_packet(data).messages
                                 if isinstance(m, Ping)), None)
            a_addr = ("127.0.0.1", core.port)
            peer.sendto(b"\xffnot a memberlist packet", a_addr)  # read first, dropped
            peer.sendto(codec.encode(Ack(ping.seq_no)), a_addr)
            time.sleep(cfg.probe_interval * 2)  # the loop stalls past the probe's end
            await asyncio.sleep(0.05)
            assert core.metrics["probe.failed"] == 0, core.metrics
            assert core.metrics["recv.drained_before_timer"] >= 1
            assert core.member("b").state == "alive"
        finally:
            await ad.stop()
            peer.close()

    asyncio.run(main())
