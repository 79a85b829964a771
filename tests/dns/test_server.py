"""The asyncio adapter over real loopback sockets (127.0.0.1, kernel-chosen ports), with
a fake upstream resolver on another loopback port."""

from __future__ import annotations

import asyncio
import socket
import time

import dnslib
import pytest

from meshnet.dns import udpio
from meshnet.dns.config import DnsConfig
from meshnet.dns.forwarder import Upstream
from meshnet.dns.sandbox import open_sockets
from meshnet.dns.server import DnsServer
from tests.dns.helpers import FRONT, cluster, parse, query, rcode, rdatas


def _answer(data: bytes, tcp: bool) -> bytes:
    q = dnslib.DNSRecord.parse(data)
    a = q.reply()
    name = str(q.q.qname).lower()
    if name.startswith("big."):
        if not tcp:
            a.header.tc = 1
            return bytes(a.pack())
        for i in range(200):
            a.add_answer(dnslib.RR(q.q.qname, rdata=dnslib.A(f"198.51.100.{i}"), ttl=60))
    else:
        a.add_answer(dnslib.RR(q.q.qname, rdata=dnslib.A("192.0.2.77"), ttl=60))
    return bytes(a.pack())


class _FakeUdp(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport
        self.seen = 0

    def datagram_received(self, data, addr):
        self.seen += 1
        self.transport.sendto(_answer(data, tcp=False), addr)


async def _fake_tcp(reader, writer):
    try:
        while True:
            n = int.from_bytes(await reader.readexactly(2), "big")
            msg = _answer(await reader.readexactly(n), tcp=True)
            writer.write(len(msg).to_bytes(2, "big") + msg)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


def _closed_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


async def _udp_query(port: int, data: bytes, timeout: float = 2.0) -> bytes:
    loop = asyncio.get_running_loop()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setblocking(False)
    try:
        await loop.sock_connect(s, ("127.0.0.1", port))
        await loop.sock_sendall(s, data)
        return await asyncio.wait_for(loop.sock_recv(s, 65535), timeout)
    finally:
        s.close()


async def _tcp_query(port: int, data: bytes) -> bytes:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(len(data).to_bytes(2, "big") + data)
    n = int.from_bytes(await r.readexactly(2), "big")
    out = await r.readexactly(n)
    w.close()
    return out


async def _scenario(udp_batch: int):
    loop = asyncio.get_running_loop()
    udp_t, fake = await loop.create_datagram_endpoint(_FakeUdp, local_addr=("127.0.0.1", 0))
    up_port = udp_t.get_extra_info("sockname")[1]
    tcp_srv = await asyncio.start_server(_fake_tcp, "127.0.0.1", up_port)
    dead = Upstream("127.0.0.1", _closed_port())
    server = DnsServer(DnsConfig.local().replace(udp_batch=udp_batch),
                       [dead, Upstream("127.0.0.1", up_port)], cluster())
    assert (server._batch is not None) == (udp_batch > 0 and udpio.Batch.available())
    await server.start()
    socks = open_sockets(None, "127.0.0.1")
    await server.serve(socks.udp, socks.tcp, FRONT)
    try:
        # local answers over UDP and TCP
        rec = parse(await _udp_query(socks.udp_port, query("database")))
        assert rdatas(rec) == ["10.0.1.30"]
        for qid in (5, 6):  # memo hits on the hot path: the client's ID spliced in
            rec = parse(await _udp_query(socks.udp_port, query("database", qid=qid)))
            assert rec.header.id == qid and rdatas(rec) == ["10.0.1.30"]
        assert server.snapshot()["memo_hits"] == 2
        orders = {tuple(rdatas(parse(await _udp_query(socks.udp_port, query("tasks.web")))))
                  for _ in range(6)}
        assert len(orders) == 6  # 3 tasks: every order once per 6 queries
        rec = parse(await _tcp_query(socks.tcp_port, query("tasks.web")))
        assert sorted(rdatas(rec)) == ["10.0.1.11", "10.0.1.12", "10.0.1.13"]
        # external name: the first upstream is dead (ICMP), the answer is still fast
        t0 = time.perf_counter()
        rec = parse(await _udp_query(socks.udp_port, query("www.example.org", qid=77)))
        assert time.perf_counter() - t0 < 0.5
        assert rec.header.id == 77 and rdatas(rec) == ["192.0.2.77"]
        t0 = time.perf_counter()
        rec = parse(await _udp_query(socks.udp_port, query("www2.example.org")))
        assert time.perf_counter() - t0 < 0.1 and rdatas(rec) == ["192.0.2.77"]
        # cached
        seen = fake.seen
        rec = parse(await _udp_query(socks.udp_port, query("www.example.org")))
        assert rdatas(rec) == ["192.0.2.77"] and fake.seen == seen
        # TC from the upstream: retried over TCP; the UDP client gets TC, a TCP one all
        rec = parse(await _udp_query(socks.udp_port, query("big.example.org", edns=1232)))
        assert rec.header.tc
        rec = parse(await _tcp_query(socks.tcp_port, query("big.example.org")))
        assert not rec.header.tc and len(rec.rr) == 200
        # malformed: FORMERR, server keeps going
        bad = await _udp_query(socks.udp_port, b"\x00\x07\x01\x00\x00\x01" + b"\x00" * 6 + b"\x3f")
        assert bad[:2] == b"\x00\x07" and bad[3] & 0xF == 1
        rec = parse(await _udp_query(socks.udp_port, query("nosuch")))
        assert rcode(rec) == "NXDOMAIN"
        snap = server.snapshot()
        assert snap["queries"] >= 9 and snap["forwarded"] >= 4
        assert snap["cache_hits"] >= 1 and snap["malformed"] >= 1
        assert snap["upstreams"][0]["dead"] is True
        assert sum(n for _, n in snap["latency_buckets"]) >= 1
    finally:
        await server.close()
        udp_t.close()
        tcp_srv.close()


@pytest.mark.parametrize("udp_batch", [0, 64])
def test_server_over_loopback(udp_batch):
    asyncio.run(asyncio.wait_for(_scenario(udp_batch), 20))
