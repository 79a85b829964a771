from __future__ import annotations

import pytest

from meshnet.trace.diagnose import Facts, Probe, Resolution, diagnose, verdict_of

from .helpers import GOOD_FACTS, MARKER, PROBE, RES, WEB3, all_seen, vip_path

DONE = {"h3": "done"}


def run(seen=None, facts=GOOD_FACTS, probe=PROBE, reported=DONE, down=(), res=RES, **kw):
    exp = vip_path(**kw)
    hops = diagnose(exp, res, probe, all_seen() if seen is None else seen, facts, reported,
                    down)
    return hops, verdict_of(hops)


def test_healthy_trace_is_delivered():
    hops, v = run()
    assert [h.name for h in hops] == ["resolution", "load-balancing", "source",
                                      "encapsulation", "decapsulation", "delivery", "reply"]
    assert all(h.ok for h in hops) and v.ok and v.hop == ""
    enc = next(h for h in hops if h.name == "encapsulation")
    assert enc.observed == "192.0.2.1 -> 192.0.2.3 udp/4789 vni 4660"
    reply = hops[-1]
    assert "over 192.0.2.3 -> 192.0.2.1" in reply.observed


def test_chosen_backend_falls_back_to_the_capture():
    hops, v = run(probe=Probe(outcome="connected", marker=MARKER))
    assert v.ok and "capture:" in hops[1].observed


BROKEN_ENCAP = dict(seen=all_seen(h1_underlay=True, h3_underlay=True, h3_sandbox=True,
                                  h3_task=True))


@pytest.mark.parametrize("facts,cause", [
    (Facts(neigh={"10.0.0.9": WEB3.mac}), f"missing FDB entry: {WEB3.mac} dst 192.0.2.3"),
    (Facts(fdb={WEB3.mac: "192.0.2.2"}, neigh={"10.0.0.9": WEB3.mac}), "stale FDB entry"),
    (Facts(fdb={WEB3.mac: "192.0.2.3"}), "missing neighbour entry: 10.0.0.9"),
    (Facts(fdb={WEB3.mac: "192.0.2.3"}, neigh={"10.0.0.9": WEB3.mac}, mtu=1450,
           probe_len=1500), "MTU"),
    (Facts(sandbox_exists=False), "does not exist"),
])
def test_encapsulation_causes(facts, cause):
    hops, v = run(facts=facts, **BROKEN_ENCAP)
    assert v.hop == "encapsulation" and cause in v.cause, v


def test_peer_down_is_named():
    hops, v = run(facts=GOOD_FACTS, down=("h3",), reported={}, **BROKEN_ENCAP)
    assert v.hop == "encapsulation" and "peer host down: h3" in v.cause


def test_wrong_vtep_on_the_wire():
    seen = all_seen()
    from meshnet.trace.model import Seen
    seen[2] = Seen("underlay", "h1", "eth0", probe=1, outer=("192.0.2.1", "192.0.2.2", 4789,
                                                            0x1234))
    _, v = run(seen=seen)
    assert v.hop == "encapsulation" and "sends to 192.0.2.2, expected 192.0.2.3" in v.cause


def test_lost_on_the_underlay_and_not_decapsulated():
    _, v = run(seen=all_seen(h3_underlay=True, h3_sandbox=True, h3_task=True))
    assert v.hop == "decapsulation" and "lost on the underlay" in v.cause
    _, v = run(seen=all_seen(h3_sandbox=True, h3_task=True))
    assert v.hop == "decapsulation" and "no VXLAN device for VNI 4660" in v.cause


def test_silent_remote_host_is_not_a_verdict_unless_down():
    hops, v = run(reported={}, seen=all_seen()[:3] + [all_seen()[0]])
    decap = next(h for h in hops if h.name == "decapsulation")
    assert decap.ok is None and "did not answer" in decap.cause


def test_no_healthy_backend():
    from meshnet.model import TaskHealth
    sick = {WEB3.key: TaskHealth(network="app", ip=WEB3.ip, service="web", healthy=False)}
    hops, v = run(health=sick, probe=Probe(outcome="refused", marker=MARKER))
    assert v.hop == "load-balancing" and "no healthy backend for service web" in v.cause
    assert "web3 10.0.0.9 (not healthy)" in v.cause


def test_refused_reply_and_lost_reply():
    from meshnet.trace.model import Seen
    seen = all_seen()
    seen[0] = Seen("src", "h1", "eth0", probe=1, reply=1, first_reply="... [RA]",
                   reply_flags="RA")
    _, v = run(seen=seen)
    assert v.hop == "reply" and "nothing listens on 80/tcp" in v.cause
    seen = all_seen(h1_src=False)
    seen[0] = Seen("src", "h1", "eth0", probe=1)
    _, v = run(seen=seen, probe=Probe(outcome="timeout", marker=MARKER, chosen="10.0.0.9"))
    assert v.hop == "reply" and "reply lost on the way back" in v.cause


def test_nxdomain_and_wrong_answer():
    _, v = run(res=Resolution(name="nope", rcode="NXDOMAIN"))
    assert v.hop == "resolution" and "NXDOMAIN" in v.cause
    _, v = run(res=Resolution(name="web", rcode="NOERROR", answers=("10.0.0.1",),
                              expected=("10.0.0.100",)))
    assert v.hop == "resolution" and "the tables say 10.0.0.100" in v.cause
    ok = Resolution(name="10.0.0.100", skipped="an address")
    assert ok.ok


def test_probe_never_left_src():
    _, v = run(seen=all_seen(h1_src=True))
    assert v.hop == "source" and "never left SRC" in v.cause


def test_local_backend_is_bridged_without_vxlan():
    from meshnet.trace.model import Seen

    from .helpers import C1, ep
    web1 = ep("10.0.0.7", "h1", "web1", "web")
    seen = [Seen("src", "h1", "eth0", probe=1, reply=1, first_reply="... [SA]",
                 reply_flags="SA"),
            Seen("task", "h1", "eth0 in ns-web1", probe=1, reply=1, inner_dst="10.0.0.7")]
    hops, v = run(seen=seen, endpoints=(C1, web1), reported={},
                  probe=Probe(outcome="connected", marker=MARKER, chosen="10.0.0.7"))
    assert [h.name for h in hops] == ["resolution", "load-balancing", "source", "bridge",
                                      "delivery", "reply"]
    assert v.ok, hops
