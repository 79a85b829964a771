"""Labels -> containers -> desired attachments -> plan (pure; table-driven)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshnet.runtime.containers import (
    Attach,
    Attachment,
    Container,
    Detach,
    LabelError,
    Observed,
    container_from_inspect,
    desired,
    parse_labels,
    plan,
)


@pytest.mark.parametrize("labels, want", [
    ({"meshnet.network": "appnet"}, (("appnet",), "", (), "")),
    ({"meshnet.network": " a, b ,a,"}, (("a", "b"), "", (), "")),
    ({"meshnet.network": "appnet", "meshnet.service": "web", "meshnet.aliases": "www, api"},
     (("appnet",), "web", ("www", "api"), "")),
    ({"meshnet.network": "appnet", "meshnet.ip": "10.9.0.7"}, (("appnet",), "", (), "10.9.0.7")),
])
def test_labels(labels, want):
    assert parse_labels(labels) == want


@pytest.mark.parametrize("labels, message", [
    ({"meshnet.network": ""}, "names no network"),
    ({"meshnet.network": " , "}, "names no network"),
    ({"meshnet.network": "bad name"}, "invalid network name"),
    ({"meshnet.network": "a", "meshnet.service": "-web"}, "invalid service name"),
    ({"meshnet.network": "a", "meshnet.aliases": "ok,no/slash"}, "invalid alias"),
    ({"meshnet.network": "a", "meshnet.ip": "10.0.0.300"}, "meshnet.ip"),
    ({"meshnet.network": "a,b", "meshnet.ip": "10.0.0.3"}, "exactly one network"),
])
def test_bad_labels(labels, message):
    with pytest.raises(LabelError, match=message):
        parse_labels(labels)


def inspect(running=True, pid=42, labels=None, mode="none", name="/web1"):
    return {"Id": "abc" * 21 + "d", "Name": name,
            "Config": {"Labels": {"meshnet.network": "appnet"} if labels is None else labels},
            "HostConfig": {"NetworkMode": mode}, "ResolvConfPath": "/x/resolv.conf",
            "State": {"Running": running, "Pid": pid if running else 0}}


def test_container_from_inspect():
    c = container_from_inspect(inspect())
    assert c == Container(id="abc" * 21 + "d", name="web1", pid=42, networks=("appnet",),
                          resolv_conf="/x/resolv.conf")
    assert c.netns == "/proc/42/ns/net" and c.short == "abcabcabcabc"
    assert container_from_inspect(inspect(running=False)) is None
    assert container_from_inspect(inspect(labels={"other": "x"})) is None
    assert container_from_inspect(inspect(mode="default")) is not None  # Docker's bridge
    for mode in ("host", "container:0123"):
        with pytest.raises(LabelError, match="use --network none"):
            container_from_inspect(inspect(mode=mode))


def att(pid, net, name="c"):
    return Attachment(container=f"id{pid}", netns=f"/proc/{pid}/ns/net", network=net, name=name)


def obs(ns, net, name="c"):
    return Observed(ns, net, name)


def test_desired_one_row_per_network():
    c = Container(id="i", name="w", pid=7, networks=("a", "b"), service="s", aliases=("x",),
                  ip="")
    rows = desired([c])
    assert sorted(rows) == [("/proc/7/ns/net", "a"), ("/proc/7/ns/net", "b")]
    assert rows[("/proc/7/ns/net", "a")].body() == {
        "netns": "/proc/7/ns/net", "network": "a", "name": "w", "service": "s",
        "aliases": ["x"]}


P1, P2 = "/proc/1/ns/net", "/proc/2/ns/net"


@pytest.mark.parametrize("want, seen, owned, names, ops", [
    # nothing attached yet: attach everything, in key order
    ([att(2, "a"), att(1, "b")], [], set(), set(), [Attach(att(1, "b")), Attach(att(2, "a"))]),
    # attached already: nothing to do (an agent restart re-sync)
    ([att(1, "a")], [obs(P1, "a")], set(), set(), []),
    # our endpoint whose container is gone: detach, before attaching the new one
    ([att(2, "a")], [obs(P1, "a", "old")], {(P1, "a")}, set(),
     [Detach(P1, "a", "old"), Attach(att(2, "a"))]),
    # restored after an agent restart, container gone (the pid was reused): by name
    ([], [obs(P1, "a", "web1")], set(), {"web1"}, [Detach(P1, "a", "web1")]),
    # attached through the API (named namespace, or a /proc path we do not know): kept
    ([], [obs("mn-lab-c1", "a", "web1"), obs(P2, "a", "pid2")], set(), {"web1"}, []),
    # one network dropped from a container we own, the other kept
    ([att(1, "a")], [obs(P1, "a"), obs(P1, "b")], {(P1, "a"), (P1, "b")}, set(),
     [Detach(P1, "b", "c")]),
])
def test_plan(want, seen, owned, names, ops):
    assert plan({a.key: a for a in want}, seen, owned, names) == ops


def apply(ops, seen, owned):
    seen = set(seen)
    for op in ops:
        if isinstance(op, Detach):
            seen.discard(Observed(op.netns, op.network, op.name))
            owned.discard((op.netns, op.network))
        else:
            a = op.attachment
            seen.add(Observed(a.netns, a.network, a.name))
            owned.add(a.key)
    return seen


keys = st.tuples(st.integers(1, 4), st.sampled_from(["a", "b", "c"]))


@given(st.sets(keys), st.sets(keys), st.sets(keys))
def test_plan_applied_then_planned_again_is_empty(want_keys, seen_keys, owned_keys):
    want = {a.key: a for a in (att(p, n) for p, n in want_keys)}
    seen = {obs(f"/proc/{p}/ns/net", n) for p, n in seen_keys}
    owned = {(f"/proc/{p}/ns/net", n) for p, n in owned_keys}
    ops = plan(want, seen, owned, set())
    detached = [op for op in ops if isinstance(op, Detach)]
    assert ops[:len(detached)] == detached  # every detach before any attach
    after = apply(ops, seen, owned)
    assert plan(want, after, owned, set()) == []
    assert set(want) <= {e.key for e in after}


def test_the_planner_is_sans_io():
    from tests.sansio import violations

    assert violations("meshnet.runtime.containers") == []  # aiohttp is forbidden too
