from __future__ import annotations

import json

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN

from meshnet.errors import ModelError, UserError
from meshnet.store import TABLES, LocalTables, Store
from meshnet.trace.capture import Point, summarize
from meshnet.trace.diagnose import diagnose, verdict_of
from meshnet.trace.model import (
    CaptureOrder,
    Seen,
    TraceEntry,
    TraceRequest,
    parse_destination,
)
from meshnet.trace.probe import parse_conntrack
from meshnet.trace.render import render
from meshnet.trace.service import fit

from .helpers import GOOD_FACTS, PROBE, RES, all_seen, vip_path


@pytest.mark.parametrize("text,want", [
    ("web", ("web", None, "tcp")), ("web:80", ("web", 80, "tcp")),
    ("web:53/udp", ("web", 53, "udp")), ("10.0.0.5:22", ("10.0.0.5", 22, "tcp")),
    (":8080", ("", 8080, "tcp")), ("8080/udp", ("", 8080, "udp")),
    ("[fd00::1]:80", ("fd00::1", 80, "tcp")), ("fd00::1", ("fd00::1", None, "tcp")),
])
def test_parse_destination(text, want):
    assert parse_destination(text) == want


@pytest.mark.parametrize("text", ["web:x", "web:0", "web:80/sctp", "[fd00::1]x"])
def test_bad_destinations(text):
    with pytest.raises(UserError):
        parse_destination(text)


def test_request_validation():
    assert TraceRequest.from_body({"src": "c1", "dst": "web"}).proto == "tcp"
    with pytest.raises(UserError, match="either"):
        TraceRequest.from_body({"dst": "web"})
    with pytest.raises(UserError, match="published port"):
        TraceRequest.from_body({"from": "h2", "dst": ""})
    with pytest.raises(UserError, match="unknown"):
        TraceRequest.from_body({"src": "c1", "dst": "web", "bogus": 1})
    r = TraceRequest(dst="", from_host="h2", port=8080)
    assert TraceRequest.from_body(r.to_body()) == r


def test_trace_entry_is_a_table_model_and_small():
    assert TABLES["traces"] is TraceEntry
    store = Store(LocalTables("h1"))
    e = TraceEntry(trace="0123456789abcdef", kind="capture", node="h3", until=10.0,
                   data='{"a":1}')
    store.put("traces", e.key, e, 0)
    assert store.get("traces", "0123456789abcdef/capture/h3") == e
    with pytest.raises(ModelError):
        TraceEntry(trace="x", kind="capture", node="h3", until=1)
    with pytest.raises(ModelError):
        TraceEntry(trace="0123456789abcdef", kind="result", node="h3", until=1,
                   data="x" * 2000)


def test_capture_order_round_trip_and_bad_input():
    o = CaptureOrder(proto="tcp", marker=45000, client="10.0.0.5", network="app", vni=7,
                     tasks=("10.0.0.9",), target=80)
    assert CaptureOrder.from_payload(json.loads(o.to_json())) == o
    with pytest.raises(ModelError):
        CaptureOrder.from_payload({"proto": "tcp"})
    with pytest.raises(ModelError):
        CaptureOrder.from_payload({**json.loads(o.to_json()), "client": "nope"})


def test_seen_round_trip_and_fit():
    seen = all_seen()
    for s in seen:
        assert Seen.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    big = {"state": "done", "seen": [dict(s.to_dict(), fp="x" * 120, fr="y" * 120,
                                         i="z" * 100) for s in seen]}
    text = fit(big)
    assert len(text.encode()) <= 1024 and json.loads(text)["state"] == "done"


def eth():
    return Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:03")


def test_summarize_counts_probe_and_reply_and_reads_the_vni():
    probe = (eth() / IP(src="192.0.2.1", dst="192.0.2.3") / UDP(sport=5, dport=4789) /
             VXLAN(vni=77, flags=0x08) / eth() / IP(src="10.0.0.5", dst="10.0.0.9") /
             TCP(sport=45000, dport=80, flags="S"))
    reply = (eth() / IP(src="192.0.2.3", dst="192.0.2.1") / UDP(sport=5, dport=4789) /
             VXLAN(vni=77, flags=0x08) / eth() / IP(src="10.0.0.9", dst="10.0.0.5") /
             TCP(sport=80, dport=45000, flags="SA"))
    other = eth() / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1, dport=2)
    s = summarize("h1", Point("underlay", None, "eth0", ""),
                  [(0, bytes(probe)), (0, bytes(reply)), (0, bytes(other)), (0, b"junk")],
                  45000, "tcp")
    assert (s.probe, s.reply, s.outer, s.reply_outer) == (
        1, 1, ("192.0.2.1", "192.0.2.3", 4789, 77), ("192.0.2.3", "192.0.2.1", 4789, 77))
    assert s.inner_dst == "10.0.0.9" and s.reply_flags == "SA"


def test_parse_conntrack():
    line = ("tcp      6 118 SYN_SENT src=10.0.0.5 dst=10.0.0.100 sport=45000 dport=80 "
            "[UNREPLIED] src=10.0.0.9 dst=10.0.0.5 sport=80 dport=45000 mark=0 use=1")
    assert parse_conntrack(line) == ("10.0.0.100", "10.0.0.9")
    assert parse_conntrack("garbage") is None


def test_render_shows_hops_and_verdict():
    exp = vip_path()
    hops = diagnose(exp, RES, PROBE, all_seen(), GOOD_FACTS, {"h3": "done"})
    report = {"trace": "abc", "from": "c1 on h1", "dst": "web:80/tcp",
              "expected": exp.to_dict(), "hops": [h.to_dict() for h in hops],
              "verdict": verdict_of(hops).to_dict(), "pcap": ["/tmp/x.pcap"]}
    text = render(report)
    lines = text.splitlines()
    assert lines[0].startswith("trace abc: c1 on h1 -> web:80/tcp  [vip on network app")
    assert any(ln.split()[:3] == ["4", "encapsulation", "ok"] for ln in lines), text
    assert "expected: 192.0.2.1 -> 192.0.2.3 udp/4789 vni 4660" in text
    assert lines[-2] == "verdict: delivered, and the reply came back"
    assert lines[-1] == "captures: /tmp/x.pcap"
    report["hops"][3] = dict(report["hops"][3], ok=False, cause="missing FDB entry")
    report["verdict"] = {"ok": False, "hop": "encapsulation", "cause": "missing FDB entry"}
    text = render(report)
    assert "BROKEN" in text and "cause:    missing FDB entry" in text
    assert "verdict: BROKEN at encapsulation: missing FDB entry" in text


@pytest.mark.parametrize("mod", ["model", "frames", "path", "diagnose", "render"])
def test_sans_io_modules(mod):
    from tests.sansio import violations

    # scapy too: only capture/probe may load it (it is heavy and opens sockets)
    assert violations(f"meshnet.trace.{mod}", forbid=frozenset({"scapy"})) == []
