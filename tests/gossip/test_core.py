"""Behaviour of the sans-IO core, driven by hand (no fabric) with a virtual clock."""

from __future__ import annotations

from random import Random

import msgpack
import pytest

from meshnet.gossip import codec
from meshnet.gossip.config import GossipConfig
from meshnet.gossip.core import Memberlist
from meshnet.gossip.events import (
    JoinCompleted,
    MemberFailed,
    MemberJoin,
    MemberLeave,
    MemberUpdate,
    UserMessage,
)
from meshnet.gossip.member import encode_tags, meshnet_meta
from meshnet.gossip.messages import (
    Ack,
    Alive,
    Dead,
    ErrResp,
    IndirectPing,
    Nack,
    Ping,
    PushNodeState,
    PushPullHeader,
    Suspect,
    User,
    addr_to_wire,
)
from meshnet.gossip.security import Keyring
from meshnet.gossip.stream import StreamParser, encode_push_pull, frame_stream

VSN = bytes([1, 5, 2, 2, 5, 5])
CFG = GossipConfig.fast().replace(push_pull_interval=0, reconnect_interval=0)


def mk(name: str, i: int, cfg: GossipConfig = CFG, meta: bytes | None = None,
       keyring: Keyring | None = None) -> Memberlist:
    m = Memberlist(cfg, name, f"10.0.0.{i}", 7946, meshnet_meta() if meta is None else meta,
                   Random(i), keyring)
    m.start(0.0)
    return m


def alive_of(m: Memberlist, inc: int = 1) -> Alive:
    return Alive(inc, m.name, addr_to_wire(m.addr), m.port, m._meta, VSN)


def sent(m: Memberlist, keyring: Keyring | None = None):
    """Decode everything in the outbox: [(messages, addr, had_crc)]."""
    out = []
    for data, addr in m.drain_outbox():
        pkt = codec.decode_packet(data, keyring)
        out.append((pkt.messages, addr, pkt.had_crc))
    return out


def stream_exchange(a: Memberlist, b: Memberlist, now: float) -> None:
    """Run a's stream requests against b, synchronously."""
    for req in a.drain_streams():
        assert req.addr == (b.addr, b.port)
        inbound = b.open_stream((a.addr, 50000), now)
        reply = inbound.feed(req.data, now)
        if req.expect_reply:
            assert a.stream_reply(req.id, reply, now) is True


def test_ping_is_acked_to_source_address():
    a = mk("a", 1)
    ping = Ping(42, "a", addr_to_wire("10.0.0.9"), 1234, "z")
    a.handle_datagram(codec.encode(ping), ("10.0.0.2", 5555), 1.0)
    [(msgs, addr, crc)] = sent(a)
    assert addr == ("10.0.0.9", 1234) and msgs[0] == Ack(42) and not crc
    a.handle_datagram(codec.encode(Ping(43, "")), ("10.0.0.2", 5555), 1.0)
    [(msgs, addr, _)] = sent(a)
    assert addr == ("10.0.0.2", 5555) and msgs[0] == Ack(43)


def test_ping_for_another_node_is_dropped():
    a = mk("a", 1)
    a.handle_datagram(codec.encode(Ping(1, "someone-else")), ("10.0.0.2", 7946), 1.0)
    assert sent(a) == [] and a.metrics["drop.ping_wrong_node"] == 1


def test_indirect_ping_relays_ack_and_nacks():
    a = mk("a", 1)
    ind = IndirectPing(77, addr_to_wire("10.0.0.3"), 7946, "t", True,
                       addr_to_wire("10.0.0.2"), 7946, "req")
    a.handle_datagram(codec.encode(ind), ("10.0.0.2", 7946), 1.0)
    [(msgs, addr, _)] = sent(a)
    ping = msgs[0]
    assert addr == ("10.0.0.3", 7946) and isinstance(ping, Ping) and ping.node == "t"
    assert ping.seq_no != 77 and ping.source_node == "a"
    a.handle_datagram(codec.encode(Ack(ping.seq_no)), ("10.0.0.3", 7946), 1.05)
    [(msgs, addr, _)] = sent(a)
    assert addr == ("10.0.0.2", 7946) and msgs[0] == Ack(77)
    # No answer this time: a nack after ProbeTimeout.
    a.handle_datagram(codec.encode(ind), ("10.0.0.2", 7946), 2.0)
    sent(a)
    assert a.next_deadline() <= 2.0 + CFG.probe_timeout
    a.tick(2.0 + CFG.probe_timeout)
    assert any(Nack(77) in msgs and addr == ("10.0.0.2", 7946) for msgs, addr, _ in sent(a))


def test_join_by_push_pull_both_ways():
    a, b = mk("a", 1), mk("b", 2)
    jid = a.join([(b.addr, b.port)], 0.1)
    stream_exchange(a, b, 0.1)
    assert JoinCompleted(jid, 1, ()) in a.drain_events()
    assert [m.name for m in a.members()] == ["a", "b"]
    assert [m.name for m in b.members()] == ["a", "b"]
    assert any(isinstance(e, MemberJoin) and e.member.name == "a" for e in b.drain_events())
    assert b.member("a").tags == {"mn": "1"} and b.member("a").vsn == VSN


def test_join_failure_reported():
    a = mk("a", 1)
    jid = a.join([("10.0.0.5", 7946)], 0.0)
    [req] = a.drain_streams()
    assert a.stream_reply(req.id, None, 0.2)
    [ev] = [e for e in a.drain_events() if isinstance(e, JoinCompleted)]
    assert ev.join_id == jid and ev.ok == 0 and len(ev.errors) == 1


def test_refutes_suspicion_and_dead_claims_about_itself():
    a = mk("a", 1)
    a.handle_datagram(codec.encode(Suspect(1, "a", "b")), ("10.0.0.2", 7946), 1.0)
    assert a.incarnation == 2 and a.health_score == 1
    a.handle_datagram(codec.encode(Dead(7, "a", "b")), ("10.0.0.2", 7946), 1.0)
    assert a.incarnation == 8 and a.member("a").state == "alive"
    assert a.metrics["refute.suspect"] == 1 and a.metrics["refute.dead"] == 1


def test_refutes_dead_learned_by_push_pull():
    a, b = mk("a", 1), mk("b", 2)
    stale = PushNodeState("a", addr_to_wire(a.addr), 7946, b"", 5, 2, VSN)
    me_b = PushNodeState("b", addr_to_wire(b.addr), 7946, b"", 1, 0, VSN)
    data = frame_stream(encode_push_pull(PushPullHeader(2, 0, True), [stale, me_b]),
                        compress=True, keyring=None)
    reply = a.open_stream(("10.0.0.2", 40000), 1.0).feed(data, 1.0)
    assert reply is not None and StreamParser().feed(reply).message.header.join is True
    assert a.incarnation == 6  # accused 5 -> 6


def test_dead_from_self_is_left_else_failed():
    a, b, c = mk("a", 1), mk("b", 2), mk("c", 3)
    for x in (b, c):
        a.handle_datagram(codec.encode(alive_of(x)), (x.addr, 7946), 0.5)
    a.drain_events()
    a.handle_datagram(codec.encode(Dead(1, "b", "b")), ("10.0.0.2", 7946), 1.0)
    a.handle_datagram(codec.encode(Dead(1, "c", "a")), ("10.0.0.2", 7946), 1.0)
    ev = a.drain_events()
    assert [type(e) for e in ev] == [MemberLeave, MemberFailed]
    assert a.member("b").state == "left" and a.member("c").state == "dead"
    # stale alive is ignored, newer alive revives with a join event
    a.handle_datagram(codec.encode(alive_of(c, 1)), (c.addr, 7946), 1.1)
    assert a.member("c").state == "dead"
    a.handle_datagram(codec.encode(alive_of(c, 2)), (c.addr, 7946), 1.2)
    assert a.member("c").state == "alive" and isinstance(a.drain_events()[0], MemberJoin)


def test_conflicting_address_ignored_unless_left():
    a, b = mk("a", 1), mk("b", 2)
    a.handle_datagram(codec.encode(alive_of(b)), (b.addr, 7946), 0.5)
    imp = Alive(9, "b", addr_to_wire("10.9.9.9"), 7946, b"", VSN)
    a.handle_datagram(codec.encode(imp), ("10.9.9.9", 7946), 0.6)
    assert a.member("b").addr == "10.0.0.2" and a.metrics["conflict.address"] == 1


def test_set_meta_raises_incarnation_and_updates_peers():
    a, b = mk("a", 1), mk("b", 2)
    b.handle_datagram(codec.encode(alive_of(a)), (a.addr, 7946), 0.1)
    b.drain_events()
    a.set_meta(meshnet_meta({"zone": "z1"}), 1.0)
    assert a.incarnation == 2
    upd = alive_of(a, 2)
    b.handle_datagram(codec.encode(upd), (a.addr, 7946), 1.1)
    [ev] = b.drain_events()
    assert isinstance(ev, MemberUpdate) and ev.member.tags == {"mn": "1", "zone": "z1"}


def test_probe_failure_suspect_then_dead_with_tcp_fallback_attempt():
    a, b = mk("a", 1), mk("b", 2)
    a.handle_datagram(codec.encode(alive_of(b)), (b.addr, 7946), 0.0)
    sent(a)
    t = a.next_deadline()
    while not any(isinstance(m, Ping) for msgs, _, _ in sent(a) for m in msgs):
        a.tick(t)
        t = a.next_deadline()
    start = t
    reqs: list = []
    while not reqs:  # at ProbeTimeout: no peers for indirect pings, so TCP fallback
        a.tick(a.next_deadline())
        reqs = a.drain_streams()
    [req] = reqs
    assert req.purpose == "ping" and req.addr == (b.addr, 7946)
    assert StreamParser().feed(req.data).message.node == "b"
    a.stream_reply(req.id, None, req.deadline)
    while a.member("b").state == "alive":
        a.tick(a.next_deadline())
    assert a.member("b").state == "suspect" and a.health_score == 1
    # n = 2 -> k = 0: the minimum timeout applies (3 x 1 x 0.2 s)
    while a.member("b").state == "suspect":
        a.tick(a.next_deadline())
    assert a.member("b").state == "dead"
    assert a.metrics["probe.failed"] >= 1
    assert a.next_deadline() > start


def test_tcp_fallback_success_prevents_suspicion():
    a, b = mk("a", 1), mk("b", 2)
    a.handle_datagram(codec.encode(alive_of(b)), (b.addr, 7946), 0.0)
    for _ in range(200):
        a.tick(a.next_deadline())
        for req in a.drain_streams():
            stream_exchange_one(a, b, req)
        sent(a)
    assert a.member("b").state == "alive"
    assert a.metrics["probe.tcp_only"] >= 3 and a.metrics["probe.failed"] == 0


def stream_exchange_one(a, b, req):
    reply = b.open_stream((a.addr, 40000), 0.0).feed(req.data, 0.0)
    a.stream_reply(req.id, reply, 0.0)


def test_suspect_target_gets_ping_plus_suspect_compound_with_crc():
    a, b, c = mk("a", 1), mk("b", 2), mk("c", 3)
    for x in (b, c):
        a.handle_datagram(codec.encode(alive_of(x)), (x.addr, 7946), 0.0)
    a.handle_datagram(codec.encode(Suspect(1, "b", "c")), (c.addr, 7946), 0.0)
    sent(a)
    for _ in range(20):
        a.tick(a.next_deadline())
        for msgs, addr, crc in sent(a):
            if addr == (b.addr, 7946) and any(isinstance(m, Ping) for m in msgs):
                assert crc and Suspect(1, "b", "a") in msgs
                return
    pytest.fail("no probe of the suspect node")


def test_gossip_packets_fit_udp_budget_and_carry_crc():
    a = mk("a", 1)
    peers = [mk(f"p{i}", 10 + i) for i in range(60)]
    for p in peers:
        a.handle_datagram(codec.encode(alive_of(p)), (p.addr, 7946), 0.0)
    old = Memberlist(CFG.replace(vsn=bytes([1, 4, 2, 2, 5, 5])), "old", "10.0.1.1", 7946,
                     b"", Random(0))
    a.handle_datagram(codec.encode(Alive(1, "old", addr_to_wire("10.0.1.1"), 7946, b"",
                                         bytes([1, 4, 2, 2, 5, 5]))), ("10.0.1.1", 7946), 0.0)
    del old
    sizes, crcs = [], []
    for _ in range(100):
        a.tick(a.next_deadline())
        for data, addr in a.drain_outbox():
            sizes.append(len(data))
            crcs.append((addr, data[0] == 12))
    assert max(sizes) <= 1400
    assert all(crc for addr, crc in crcs if addr != ("10.0.1.1", 7946))
    assert not any(crc for addr, crc in crcs if addr == ("10.0.1.1", 7946))


def test_encrypted_cluster_and_plaintext_refused():
    ring = Keyring([bytes(range(32))])
    a, b = mk("a", 1, keyring=ring), mk("b", 2, keyring=ring)
    a.join([(b.addr, 7946)], 0.1)
    for req in a.drain_streams():
        assert req.data[0] == 10
        stream_exchange_one(a, b, req)
    assert [m.name for m in a.members()] == ["a", "b"]
    a.handle_datagram(codec.encode(Ping(1, "a")), ("10.0.0.2", 7946), 1.0)
    assert sent(a, ring) == [] and a.metrics["drop.plaintext_when_encrypted"] == 1
    a.handle_datagram(ring.encrypt_packet(codec.encode(Ping(1, "a"))), ("10.0.0.2", 7946), 1.0)
    [(msgs, _, _)] = sent(a, ring)
    assert msgs[0] == Ack(1)
    plain = encode_push_pull(PushPullHeader(0, 0, False), [])
    reply = a.open_stream(("10.0.0.2", 40000), 1.0).feed(plain, 1.0)
    r = StreamParser(ring).feed(reply)
    assert r.encrypted and isinstance(r.message, ErrResp)


def test_send_user_routes_only_to_meshnet_members():
    a, b = mk("a", 1), mk("b", 2)
    serf = Alive(1, "s1", addr_to_wire("10.0.0.5"), 7946, encode_tags({"role": "x"}), VSN)
    for al in (alive_of(b), serf):
        a.handle_datagram(codec.encode(al), ("10.0.0.9", 7946), 0.0)
    sent(a)
    assert a.send_user("b", b"m\x01small", 1.0)
    [(msgs, addr, crc)] = sent(a)
    assert addr == (b.addr, 7946) and msgs[0] == User(b"m\x01small") and crc
    assert not a.send_user("s1", b"m\x01x", 1.0) and a.metrics["user.not_meshnet"] == 1
    assert not a.send_user("nobody", b"m\x01x", 1.0)
    with pytest.raises(ValueError):
        a.send_user("b", b"\x03serf-looking", 1.0)
    assert a.send_user("b", b"m" + b"x" * 3000, 1.0)  # too big for UDP -> TCP
    assert a.send_user("b", b"m\x01r", 1.0, reliable=True)
    reqs = a.drain_streams()
    assert [r.purpose for r in reqs] == ["user", "user"] and not reqs[0].expect_reply
    for req in reqs:
        assert b.open_stream((a.addr, 40000), 1.0).feed(req.data, 1.0) is None
    b.handle_datagram(codec.encode(User(b"m\x01udp")), (a.addr, 7946), 1.0)
    got = [e for e in b.drain_events() if isinstance(e, UserMessage)]
    assert [(e.payload[:3], e.reliable) for e in got] == [
        (b"mxx", True), (b"m\x01r", True), (b"m\x01u", False)]
    b.handle_datagram(codec.encode(alive_of(a)), (a.addr, 7946), 1.0)
    b.handle_datagram(codec.encode(User(b"m\x01udp")), (a.addr, 7946), 1.0)
    assert [e.from_node for e in b.drain_events() if isinstance(e, UserMessage)] == ["a"]


def test_serf_user_messages_are_counted_not_delivered():
    a = mk("a", 1)
    intent = b"\x01" + msgpack.packb({"LTime": 41, "Node": "s1"}, use_bin_type=False)
    a.handle_datagram(codec.encode(User(intent)), ("10.0.0.5", 7946), 0.0)
    a.handle_datagram(codec.encode(User(b"\x03junk")), ("10.0.0.5", 7946), 0.0)
    assert not [e for e in a.drain_events() if isinstance(e, UserMessage)]
    assert a.metrics["recv.serf.1"] == 1 and a.metrics["recv.serf.3"] == 1
    a.leave(1.0)  # our leave intent must be newer than anything serf said
    body = [m for msgs, _, _ in sent(a) for m in msgs]
    del body


def test_leave_sends_serf_intent_then_self_dead():
    a, b = mk("a", 1), mk("b", 2)
    a.handle_datagram(codec.encode(alive_of(b)), (b.addr, 7946), 0.0)
    a.handle_datagram(codec.encode(User(b"\x01" + codec.pack({"LTime": 41, "Node": "b"}))),
                      (b.addr, 7946), 0.0)
    a.leave(1.0)
    assert not a.leave_done
    seen: list = []
    t = 1.0
    while not a.leave_done and t < 10:
        t = a.next_deadline()
        a.tick(t)
        for msgs, _addr, _ in sent(a):
            seen.extend(msgs)
    assert a.leave_done
    users = [m for m in seen if isinstance(m, User)]
    deads = [m for m in seen if isinstance(m, Dead)]
    intent = msgpack.unpackb(users[0].payload[1:], raw=False)
    assert users[0].payload[0] == 0 and intent == {"LTime": 42, "Node": "a", "Prune": False}
    assert deads and deads[0] == Dead(a.incarnation, "a", "a")
    assert seen.index(users[0]) < seen.index(deads[0])
    assert a.member("a").state == "left"
    # Still answers pings after leaving; ignores alive about itself.
    a.handle_datagram(codec.encode(Ping(5, "a")), (b.addr, 7946), t)
    assert any(Ack(5) in msgs for msgs, _, _ in sent(a))


def test_incompatible_vsn_rejects_merge():
    a = mk("a", 1)
    bad = PushNodeState("py3", addr_to_wire("10.0.0.3"), 7946, b"", 1, 0, bytes([1, 5, 2, 0, 0, 0]))
    data = encode_push_pull(PushPullHeader(1, 0, True), [bad])
    a.open_stream(("10.0.0.3", 40000), 0.0).feed(data, 0.0)
    assert a.member("py3") is None and a.metrics["drop.incompatible"] == 1


def test_push_pull_always_sends_six_byte_vsn_and_skips_user_state():
    a, b = mk("a", 1), mk("b", 2)
    state = b"\x02" + msgpack.packb({"LTime": 3}, use_bin_type=False)
    data = encode_push_pull(PushPullHeader(1, len(state), False),
                            [PushNodeState("b", addr_to_wire(b.addr), 7946, b"", 1, 0, VSN)],
                            state)
    reply = a.open_stream((b.addr, 40000), 0.0).feed(data, 0.0)
    pp = StreamParser().feed(reply).message
    assert pp.header.user_state_len == 0 and pp.user_state == b""
    assert [(n.name, n.vsn) for n in pp.nodes] == [("a", VSN)]  # replied before merging
    assert a.member("b").state == "alive"
    assert a.open_stream((b.addr, 40001), 0.1).feed(data, 0.1) is not None
    again = StreamParser().feed(a.open_stream((b.addr, 40002), 0.2).feed(data, 0.2)).message
    assert [(n.name, n.vsn) for n in again.nodes] == [("a", VSN), ("b", VSN)]


def test_garbage_stream_gets_err_reply():
    a = mk("a", 1)
    reply = a.open_stream(("10.0.0.9", 1), 0.0).feed(b"\x63garbage", 0.0)
    assert isinstance(StreamParser().feed(reply).message, ErrResp)
    assert a.metrics["drop.unknown_type"] == 1


def test_tcp_ping_answered_immediately():
    a = mk("a", 1)
    data = frame_stream(codec.encode(Ping(9, "a")), compress=True, keyring=None)
    s = a.open_stream(("10.0.0.2", 40000), 0.0)
    assert s.feed(data[:4], 0.0) is None
    reply = s.feed(data[4:], 0.0)
    assert StreamParser().feed(reply).message == Ack(9) and s.done


def test_core_requires_injected_rng():
    with pytest.raises(ValueError):
        Memberlist(CFG, "a", "10.0.0.1", 7946, b"", None)


def test_late_timers_raise_the_health_score_once_per_probe_interval():
    from meshnet.gossip.config import GossipConfig
    from meshnet.gossip.core import Memberlist

    cfg = GossipConfig.fast()
    core = Memberlist(cfg, "a", "10.0.0.1", 7946, b"", __import__("random").Random(1))
    core.tick(0.0)
    before = core._aw.score
    core.timer_late(cfg.late_threshold / 2, 1.0)  # on time enough: nothing
    assert core._aw.score == before
    core.timer_late(cfg.late_threshold * 4, 1.0)
    core.timer_late(cfg.late_threshold * 4, 1.0 + cfg.probe_interval / 2)  # same interval
    assert core._aw.score == before + 1
    core.timer_late(cfg.late_threshold * 4, 1.0 + cfg.probe_interval * 1.01)
    assert core._aw.score == before + 2
    assert core.metrics["awareness.late_timer"] == 2
    assert GossipConfig.lan().late_threshold > 0 and GossipConfig().late_threshold == 0


def test_pings_under_made_up_names_buy_a_bounded_number_of_push_pulls():
    """sync_unknown_pinger push/pulls with a member that pings us unknown; a flood of
    pings under fresh names each time gets PINGER_SYNC_BURST at once and then
    PINGER_SYNC_RATE a second, not one push/pull per name."""
    from meshnet.gossip.core import PINGER_SYNC_BURST, PINGER_SYNC_RATE

    a = mk("a", 1, GossipConfig.swift().replace(push_pull_interval=3600.0))
    a.drain_streams()

    def flood(t: float, count: int) -> int:
        for i in range(count):
            ping = Ping(i, "a", addr_to_wire("10.9.0.1"), 7946, f"fake-{t}-{i}")
            a.handle_datagram(codec.encode(ping), ("10.9.0.1", 7946), t)
        return len(a.drain_streams())

    assert flood(1.0, 200) == PINGER_SYNC_BURST
    assert flood(1.0, 200) == 0
    assert flood(3.0, 200) == int(2.0 * PINGER_SYNC_RATE)
    assert a.metrics["sync.unknown_pinger_limited"] >= 392
    # each ping was still answered (an Ack to where it asked)
    assert sum(1 for msgs, _, _ in sent(a) for m in msgs if isinstance(m, Ack)) == 600
