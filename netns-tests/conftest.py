"""Real-kernel tests: root, network namespaces, real processes.

Every test gets uniquely named labs/namespaces and removes them even when it fails; an
autouse fixture fails the test if it left any namespace, meshnet link or MESHNET-* chain
behind.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest

from meshnet.lab.lab import Lab
from meshnet.lab.topology import LabSpec
from meshnet.testing.leftovers import new_objects, snapshot

if os.geteuid() != 0:
    pytest.skip("real-kernel tests need root", allow_module_level=True)

_counter = itertools.count(1)
MESHNET = [sys.executable, "-m", "meshnet"]


def unique() -> str:
    return f"{MINE}{next(_counter)}"


MINE = f"t{os.getpid() % 10000}"  #: every lab/namespace name this run creates contains it
#: namespace prefixes of labs shared by a module's tests (checked when the module ends)
SHARED_LABS: set[str] = set()


@pytest.fixture(autouse=True)
def no_leftovers():
    """Fail a test that leaves its namespaces, or any meshnet link or chain in the root
    namespace, behind. (Namespaces of other runs on the machine are not this test's;
    `make test` also compares the whole machine before and after the suite.)"""
    before = snapshot()
    yield
    left = new_objects(before, snapshot())
    if "netns" in left:
        left["netns"] = [n for n in left["netns"]
                         if MINE in n and not any(n.startswith(p) for p in SHARED_LABS)]
        if not left["netns"]:
            del left["netns"]
    assert not left, f"test left meshnet objects behind: {left}"


@pytest.fixture
def make_lab():
    """make_lab(hosts=3, underlay_mtu=1500, agent_args=()) -> a running Lab, torn down after."""
    labs: list[Lab] = []

    def make(hosts: int = 3, underlay_mtu: int = 1500, agent_args=(), docker=False) -> Lab:
        lab = Lab(LabSpec(name=unique(), hosts=hosts, underlay_mtu=underlay_mtu,
                          docker=docker))
        labs.append(lab)
        lab.up(agent_args=agent_args)
        return lab

    yield make
    for lab in labs:
        lab.down()


def meshnet(*args: str, check: bool = False, **kw) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([*MESHNET, *args], capture_output=True, text=True, timeout=60, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"meshnet {' '.join(args)} failed: {r.stderr}")
    return r


def lab_exec(lab: Lab, host: str, *cmd: str, check: bool = False):
    return meshnet("lab", "exec", "--name", lab.spec.name, host, "--", *cmd, check=check)


def agent_log(lab: Lab, host: str) -> str:
    return Path(lab.spec.state_dir / f"{host}.log").read_text()


def api(lab: Lab, host: str):
    from meshnet.api.client import ApiClient

    return ApiClient(lab.spec.api_socket(host), timeout=10)


def wait_until(fn, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"):
    import time

    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = fn()
            if last:
                return last
        except Exception as exc:  # keep polling; report the last failure
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def ns_exec(ns: str, *cmd: str, timeout: float = 20, check: bool = False):
    r = subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True,
                       timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{cmd} in {ns} failed: {r.stdout} {r.stderr}")
    return r


def py_in(ns: str, *args: str, background: bool = False, timeout: float = 60):
    """Run `python -m meshnet.testing.traffic ARGS` inside a namespace."""
    cmd = ["ip", "netns", "exec", ns, sys.executable, "-m", "meshnet.testing.traffic", *args]
    if background:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def host_down(lab, host: str) -> None:
    """The host is gone (not just its agent): agent killed, underlay link down. Peers
    remove its entries only then; an agent that is merely down keeps them (issue 16)."""
    import signal

    os.kill(lab.agent_pid(host), signal.SIGKILL)
    subprocess.run(["ip", "netns", "exec", lab.spec.host_ns(host), "ip", "link", "set",
                    "eth0", "down"], check=True)
