"""render_sandbox's patch path (few services changed, found by identity, in order) gives
exactly what a fresh render gives, over random sequences of small changes to a sandbox
of 24-40 services: backends added/removed, local flags, equal-value copies, a service
losing its last backend, a new VIP, two services swapped, a service added or removed."""

from __future__ import annotations

import dataclasses
import weakref
from ipaddress import ip_address

from hypothesis import given, settings
from hypothesis import strategies as st

from meshnet.ipvs import rules
from meshnet.ipvs.rules import SandboxMemo, render_sandbox
from meshnet.ipvs.state import Backend, LbConfig, SandboxLb, SbDelta, VirtualService

CFG = LbConfig()


def service(i: int, nb: int = 3, local: int = -1) -> VirtualService:
    return VirtualService("app", f"s{i}", ip_address("10.1.0.0") + i + 1, 80, "tcp",
                          tuple(Backend(ip_address("10.2.0.0") + i * 4 + b + 1, 80,
                                        local=(b == local), port_name=f"ve{b}")
                                for b in range(nb)))


def sandbox(services: tuple[VirtualService, ...]) -> SandboxLb:
    return SandboxLb("app", 0x100, "mn-ov-000100", ip_address("10.0.0.1"),
                     ip_address("10.0.0.2"), services, ingress=True)


OPS = ("backends", "local", "copy", "empty", "vip", "swap", "add", "remove")


@settings(max_examples=150, deadline=None)
@given(st.integers(24, 40), st.lists(st.tuples(st.sampled_from(OPS), st.integers(0, 10**6),
                                               st.integers(0, 10**6)), min_size=1,
                                     max_size=12))
def test_patched_render_equals_fresh_render(n, steps):
    svcs = [service(i) for i in range(n)]
    memo = SandboxMemo()
    render_sandbox(sandbox(tuple(svcs)), CFG, memo)
    patched = 0
    for op, a, b in steps:
        i, j = a % len(svcs), b % len(svcs)
        vs = svcs[i]
        if op == "backends":
            svcs[i] = dataclasses.replace(vs, backends=vs.backends[: b % 4])
        elif op == "local":
            svcs[i] = service(int(vs.service[1:]), local=b % 3)
        elif op == "copy":
            svcs[i] = dataclasses.replace(vs)  # equal value, another object
        elif op == "empty":
            svcs[i] = dataclasses.replace(vs, backends=())
        elif op == "vip":
            svcs[i] = dataclasses.replace(vs, vip=ip_address(f"10.0.3.{b % 250 + 1}"))
        elif op == "swap":
            svcs[i], svcs[j] = svcs[j], svcs[i]
        elif op == "add" and all(v.service != f"s{100 + b % 100}" for v in svcs):
            svcs.insert(i, service(100 + b % 100))  # keys are unique in a sandbox
        elif op == "remove" and len(svcs) > 1:
            svcs.pop(i)
        sb = sandbox(tuple(svcs))
        before = memo.sb
        if before is not None and len(before.services) == len(svcs) and a % 2:
            # the planner's hint: the positions whose service is another object
            changed = tuple(k for k, (x, y) in enumerate(zip(before.services, svcs, strict=True))
                            if x is not y)
            sb = dataclasses.replace(sb, delta=SbDelta(weakref.ref(before), changed))
        got = render_sandbox(sb, CFG, memo)
        assert got == render_sandbox(sb, CFG), (op, i, j)
        if before is not None and len(before.services) == len(svcs):
            patched += 1
    # the memo's per-service state matches the services it was last given
    assert len(memo.entries) == len(svcs)
    assert set(memo.by_id) == {id(e[0]) for e in memo.entries if e is not None}


def test_one_change_in_a_large_sandbox_patches_without_walking_the_rest(monkeypatch):
    svcs = [service(i) for i in range(400)]
    memo = SandboxMemo()
    render_sandbox(sandbox(tuple(svcs)), CFG, memo)
    calls = []
    real = rules._entry
    monkeypatch.setattr(rules, "_entry", lambda *a: calls.append(a[0]) or real(*a))
    svcs[7] = dataclasses.replace(svcs[7], backends=svcs[7].backends[:1])
    got = render_sandbox(sandbox(tuple(svcs)), CFG, memo)
    assert calls == [svcs[7]]  # only the changed service was looked at
    assert got == render_sandbox(sandbox(tuple(svcs)), CFG)
