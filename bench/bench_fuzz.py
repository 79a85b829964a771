"""Hostile input: 100,000 hypothesis cases against each decoder boundary, zero crashes.

Each target takes bytes (or JSON) from the network or the API and must either handle it
or reject it the documented way (a counted drop, FORMERR, a ModelError/UserError), never
raise anything else. Inputs mix random bytes with mutated valid messages. The anchor is
the crash count a correct decoder has: zero.
"""

from __future__ import annotations

import json
import os
import random
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.common import Result

CASES = int(os.environ.get("MESHNET_FUZZ_CASES", "100000"))


def _mutate(data: bytes, ops: list[tuple[int, int]]) -> bytes:
    b = bytearray(data)
    for pos, val in ops:
        if not b:
            break
        b[pos % len(b)] = val
    return bytes(b)


def gossip_target():
    from meshnet.gossip.codec import encode as encode_message
    from meshnet.gossip.config import GossipConfig
    from meshnet.gossip.core import Memberlist
    from meshnet.gossip.messages import Alive, Ping

    core = Memberlist(GossipConfig.lan(), "fuzz", "127.0.0.1", 7946, b"",
                      random.Random(1))
    seeds = [encode_message(Ping(seq_no=7, node="fuzz")),
             encode_message(Alive(incarnation=1, node="x", addr=b"\x7f\0\0\1", port=7946,
                                  meta=b"", vsn=bytes([1, 5, 2, 2, 5, 5])))]
    seeds.append(b"\x07\x02" + b"".join(len(x).to_bytes(2, "big") for x in seeds[:2])
                 + seeds[0] + seeds[1])  # a compound

    def one(data: bytes) -> None:
        core.handle_datagram(data, ("127.0.0.2", 7946), 0.0)
        core.drain_outbox()
        core.drain_events()
    return one, seeds


def tables_target():
    from meshnet.gossip import tablecodec as codec
    from meshnet.gossip.tablecodec import WireEntry
    from meshnet.gossip.tables import TableConfig, Tables

    t = Tables("fuzz", TableConfig.fast(), random.Random(1), 0.0)
    seeds = [codec.pack_gossip([codec.encode_entry(
        WireEntry("endpoints", "app/10.0.0.2", "peer", 3, False, b"{}", 0))])]

    def one(data: bytes) -> None:
        t.handle_message("peer", data, 0.0)
        t.drain_outbox()
        t.drain_events()
    return one, seeds


def dns_target():
    import dnslib

    from meshnet.dns.config import DnsConfig
    from meshnet.dns.responder import Responder

    r = Responder(DnsConfig(), None)
    seeds = [dnslib.DNSRecord.question("web.app").pack(),
             dnslib.DNSRecord.question("_80._tcp.web", "SRV").pack()]

    def one(data: bytes) -> None:
        r.handle(data, frozenset({"app"}), "udp", 0.0)
    return one, seeds


def api_target():
    from meshnet.api.http import HttpError, parse_head
    from meshnet.errors import UserError
    from meshnet.model import Endpoint, Network, Service

    seeds = [json.dumps({"name": "app", "vni": 5, "subnet": "10.0.0.0/24"}).encode(),
             json.dumps({"name": "web", "network": "app", "vip": "10.0.0.5",
                         "ports": [{"port": 80, "protocol": "tcp"}]}).encode(),
             b"POST /v1/endpoints?netns=c1&network=app HTTP/1.1\r\nHost: x\r\n"
             b"Content-Length: 12\r\nConnection: keep-alive"]

    def one(data: bytes) -> None:
        # the request head, as the API server parses it (HttpError -> a 4xx/5xx answer)
        try:
            parse_head(data + b"\r\n\r\n")
        except HttpError:
            pass
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            return  # the API answers 400 "not valid JSON"
        for cls in (Network, Service, Endpoint):
            try:
                cls.from_dict(obj)
            except UserError:
                pass
    return one, seeds


TARGETS = {"gossip packets": gossip_target, "table messages": tables_target,
           "DNS queries": dns_target, "API requests (HTTP head; JSON body -> model)": api_target}


def fuzz(name: str) -> tuple[int, int, float]:
    one, seeds = TARGETS[name]()
    crashes: list[str] = []
    count = 0

    @settings(max_examples=CASES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(st.one_of(
        st.binary(max_size=600),
        st.tuples(st.sampled_from(seeds),
                  st.lists(st.tuples(st.integers(0, 4096), st.integers(0, 255)),
                           max_size=6)).map(lambda t: _mutate(*t)),
        st.tuples(st.sampled_from(seeds), st.integers(0, 600)).map(lambda t: t[0][:t[1]]),
    ))
    def case(data: bytes) -> None:
        nonlocal count
        count += 1
        try:
            one(data)
        except Exception as exc:  # a crash: anything escaping the boundary
            crashes.append(f"{type(exc).__name__}: {exc}")

    t0 = time.perf_counter()
    case()
    return count, len(crashes), time.perf_counter() - t0


def run() -> list[Result]:
    out = []
    for name in TARGETS:
        n, crashes, secs = fuzz(name)
        out.append(Result("fuzz", f"{name}: {n:,} cases in {secs:.0f} s, crashes", "crashes",
                          crashes, "a correct decoder", 0, goal="0 crashes"))
    return out
