"""Issue 8 acceptance: the Docker runtime against a real dockerd.

dockerd runs in the root namespace (as on a real host), started by scripts/dockerd.sh
with Docker's own networking off. The agent of lab host h1 runs with ``--runtime
docker``: it follows /var/run/docker.sock and attaches containers by their namespace
path /proc/PID/ns/net. Containers run with ``--network none --init`` (tini forwards
``docker stop``'s SIGTERM, so a stop takes milliseconds, not the 10 s kill timeout).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import MINE, agent_log, api, ns_exec, wait_until
from test_overlay import overlay_setup

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "dockerd.sh"
IMAGE = "meshnet-test/busybox"
NET = "appnet"


def docker(*args: str, check: bool = True, timeout: float = 60):
    r = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed: {r.stderr.strip()}")
    return r


def script(cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), cmd], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="session")
def dockerd():
    """A dockerd for the session: started here and stopped at the end, unless one was
    already running (e.g. started by .ci/run); restartable if scripts/dockerd.sh owns it."""
    if not shutil.which("docker") or not shutil.which("dockerd"):
        pytest.fail("docker CLI or dockerd missing (apt-get install docker.io; `make test` "
                    "installs it)")
    was_running = script("status").returncode == 0
    r = script("start")
    if r.returncode != 0:
        pytest.fail(f"cannot start dockerd: {r.stderr.strip().splitlines()[-1:]}")
    yield {"ours": script("owned").returncode == 0}
    if not was_running:
        script("stop")


class Containers:
    """docker run, and docker rm -f of everything started, whatever happens."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def run(self, name: str, labels: dict[str, str], *cmd: str) -> str:
        self.names.append(name)
        args = ["run", "-d", "--init", "--network", "none", "--name", name]
        for k, v in labels.items():
            args += ["--label", f"{k}={v}"]
        docker(*args, IMAGE, *(cmd or ("sleep", "600")))
        return name

    def remove(self) -> None:
        if self.names:
            docker("rm", "-f", *self.names, check=False)


@pytest.fixture
def ctrs(dockerd):
    c = Containers()
    yield c
    c.remove()


def restart_with_docker(lab) -> None:
    os.kill(lab.agent_pid("h1"), signal.SIGTERM)
    wait_until(lambda: not lab.agent_running("h1"), what="h1 agent stopped")
    lab.restart_agent("h1", extra=["--runtime", "docker"])


@pytest.fixture
def dlab(make_lab, dockerd):
    """2 hosts; network appnet; h1's agent follows dockerd; a lab container c2 on h2."""
    lab = make_lab(hosts=2)
    overlay_setup(lab, NET, "10.93.0.0/24")
    restart_with_docker(lab)
    c2 = f"c2{MINE}"
    lab.run("h2", c2, ["sleep", "3600"], {"network": NET, "name": c2})
    return lab, c2


def endpoints(lab, host: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for e in api(lab, host).get("/v1/endpoints"):
        out.setdefault(e["name"], []).append(e)
    return out


def attached_everywhere(lab, name: str) -> dict | None:
    eps = [endpoints(lab, h).get(name) for h in lab.spec.host_names]
    return eps[0][0] if all(eps) else None


def in_ctr(name: str, *cmd: str):
    return docker("exec", name, *cmd, check=False, timeout=20)


def ready(lab, name: str, timeout: float = 10) -> dict:
    """Attached on every host, and the attach finished: the watcher rewrites the
    container's resolv.conf only after the agent's attach returned."""
    ep = wait_until(lambda: attached_everywhere(lab, name), timeout=timeout,
                    what=f"container {name} attached on every host")
    wait_until(lambda: "nameserver 127.0.0.11" in in_ctr(name, "cat", "/etc/resolv.conf").stdout,
               timeout=timeout, what=f"resolv.conf of {name} rewritten")
    return ep


def test_container_reaches_lab_container_by_name_and_back(dlab, ctrs):
    lab, c2 = dlab
    dweb = ctrs.run(f"dweb{MINE}", {"meshnet.network": NET, "meshnet.aliases": "dw"})
    ep = ready(lab, dweb)  # includes: resolv.conf points at the embedded resolver
    assert ep["netns"].startswith("/proc/") and ep["host"] == "h1"
    assert in_ctr(dweb, "cat", "/etc/resolv.conf").stdout == \
        "nameserver 127.0.0.11\noptions ndots:0\n"
    c2_ip = next(e["ip"] for e in api(lab, "h2").get("/v1/endpoints") if e["name"] == c2)
    # the docker container resolves and reaches the lab container by name
    r = in_ctr(dweb, "nslookup", c2)
    assert c2_ip in r.stdout, r.stdout + r.stderr
    r = in_ctr(dweb, "ping", "-c", "1", "-W", "2", c2)
    assert r.returncode == 0, r.stdout + r.stderr
    # ... and the lab container reaches it by name (and by alias)
    ns = lab.spec.container_ns(c2)
    for name in (dweb, "dw"):
        r = ns_exec(ns, "ping", "-c", "1", "-W", "2", name)
        assert r.returncode == 0 and ep["ip"] in r.stdout, r.stdout + r.stderr
    # docker stop: gone from every host within 2 s
    docker("stop", dweb)
    t0 = time.monotonic()
    wait_until(lambda: all(dweb not in endpoints(lab, h) for h in lab.spec.host_names),
               timeout=5, interval=0.05, what="stopped container gone everywhere")
    assert time.monotonic() - t0 < 2.0
    assert "container " + dweb in agent_log(lab, "h1")


def test_dockerd_restart_while_the_agent_runs(dlab, ctrs, dockerd):
    if not dockerd["ours"]:
        pytest.skip("dockerd was not started by scripts/dockerd.sh; not restarting it")
    lab, c2 = dlab
    before = ctrs.run(f"dold{MINE}", {"meshnet.network": NET})
    ready(lab, before)
    r = script("restart")
    assert r.returncode == 0, r.stderr
    # the old container died with the daemon (no live-restore): detached by the resync
    wait_until(lambda: all(before not in endpoints(lab, h) for h in lab.spec.host_names),
               timeout=10, what="dead container detached after the restart")
    after = ctrs.run(f"dnew{MINE}", {"meshnet.network": NET, "meshnet.service": "dsvc"})
    ep = ready(lab, after)
    assert ep["service"] == "dsvc"
    r = in_ctr(after, "ping", "-c", "1", "-W", "2", c2)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "following docker events" in agent_log(lab, "h1")


def test_agent_restart_resyncs_none_twice_none_missed(dlab, ctrs):
    lab, _ = dlab
    kept = ctrs.run(f"dkeep{MINE}", {"meshnet.network": NET})
    gone = ctrs.run(f"dgone{MINE}", {"meshnet.network": NET})
    first = ready(lab, kept)
    ready(lab, gone)
    os.kill(lab.agent_pid("h1"), signal.SIGTERM)
    wait_until(lambda: not lab.agent_running("h1"), what="h1 agent stopped")
    # while the agent is down: one container stops, one starts
    docker("stop", gone)
    born = ctrs.run(f"dborn{MINE}", {"meshnet.network": NET})
    lab.restart_agent("h1", extra=["--runtime", "docker"])
    ready(lab, born)
    wait_until(lambda: gone not in endpoints(lab, "h1"), what="stopped container not restored")
    eps = endpoints(lab, "h1")
    assert len(eps[kept]) == 1 and eps[kept][0]["ip"] == first["ip"]  # kept, not re-attached
    assert len(eps[born]) == 1
    assert f"attached {kept}" not in agent_log(lab, "h1").split("agent h1 stopped")[-1]

