"""Issue 3 acceptance: meshnet agents and real `serf agent` processes in one cluster."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import api, lab_exec, ns_exec, wait_until

from meshnet.gossip.security import generate_key


@pytest.fixture(autouse=True)
def _serf_installed():
    if shutil.which("serf") is None:  # `make test` installs it: a missing serf is a failure
        pytest.fail("serf is not installed (apt-get install serf)")


class Serf:
    """A serf agent in a bare lab host (hK at 192.0.2.K)."""

    def __init__(self, lab, host: str, name: str, join: str | None = None, key: str = "",
                 logdir=None) -> None:
        self.lab, self.host, self.name = lab, host, name
        self.ns = lab.add_bare_host(host)
        self.addr = lab.spec.host_addr(host)
        self.log = open(lab.spec.state_dir / f"serf-{name}.log", "wb")
        cmd = ["serf", "agent", f"-node={name}", f"-bind={self.addr}:7946",
               "-rpc-addr=127.0.0.1:7373", "-log-level=debug", "-tag", "role=serf"]
        if join:
            cmd.append(f"-join={join}")
        if key:
            cmd.append(f"-encrypt={key}")
        self.proc = subprocess.Popen(["ip", "netns", "exec", self.ns, *cmd], stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def members(self) -> dict[str, str]:
        r = ns_exec(self.ns, "serf", "members", "-rpc-addr=127.0.0.1:7373", "-format=json")
        if r.returncode != 0:
            return {}
        return {m["name"]: m["status"] for m in json.loads(r.stdout)["members"]}

    def tags(self) -> dict[str, dict[str, str]]:
        r = ns_exec(self.ns, "serf", "members", "-rpc-addr=127.0.0.1:7373", "-format=json")
        return {m["name"]: m["tags"] for m in json.loads(r.stdout)["members"]}

    def kill(self, sig=signal.SIGKILL) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)

    def logtext(self) -> str:
        return (self.lab.spec.state_dir / f"serf-{self.name}.log").read_text(errors="replace")


def refused(serf: Serf) -> bool:
    """The serf agent tried to join and was refused for its key."""
    return "No installed keys could decrypt the message" in serf.logtext()


def rejected_by(lab, host: str, addr: str, reason: str) -> bool:
    """HOST's agent dropped gossip input from ADDR for REASON (logged once per reason)."""
    log = (lab.spec.state_dir / f"{host}.log").read_text()
    return any(f"from ('{addr}'" in line and reason in line for line in log.splitlines())


def meshnet_members(lab, host) -> dict[str, str]:
    return {m["name"]: m["state"] for m in api(lab, host).get("/v1/members")}


MESH = ("h1", "h2", "h3")
ALL = {"h1", "h2", "h3", "s1", "s2"}


def assert_no_serf_decode_errors(*serfs: Serf) -> None:
    for s in serfs:
        text = s.logtext()
        for bad in ("Failed to decode", "unknown type", "not supported", "invalid checksum",
                    "Failed push/pull merge", "[ERR]"):
            assert bad not in text, f"{s.name} log has {bad!r}"


@pytest.fixture
def serfs():
    started: list[Serf] = []
    yield started
    for s in started:
        s.kill()


@pytest.mark.parametrize("seed", ["serf", "meshnet"])
def test_five_node_cluster_and_failure_detection(make_lab, serfs, seed):
    lab = make_lab(hosts=3)
    if seed == "serf":  # serf seeds: s1 alone, then meshnet h1 is told to join it via s2
        serfs.append(Serf(lab, "h4", "s1"))
        wait_until(lambda: serfs[0].members(), timeout=10, what="s1 answering")
        serfs.append(Serf(lab, "h5", "s2", join="192.0.2.4"))
        wait_until(lambda: set(serfs[0].members()) == {"s1", "s2"}, what="serf pair")
        r = ns_exec(serfs[0].ns, "serf", "join", "-rpc-addr=127.0.0.1:7373", "192.0.2.1")
        assert r.returncode == 0, r.stdout + r.stderr
    else:  # meshnet seeds: serf agents join meshnet h2
        serfs.append(Serf(lab, "h4", "s1", join="192.0.2.2"))
        serfs.append(Serf(lab, "h5", "s2", join="192.0.2.3"))
    s1, s2 = serfs

    def all_alive():
        views = [s1.members(), s2.members()] + [meshnet_members(lab, h) for h in MESH]
        if all(set(v) == ALL and all(st == "alive" for st in v.values()) for v in views):
            return True
        # not yet: say who sees what (wait_until reports the last one on a timeout)
        raise AssertionError(dict(zip(["s1", "s2", *MESH], views, strict=True)))
    # (a serf agent that missed the gossip of a join learns it by its next push/pull: 30 s)
    wait_until(all_alive, timeout=40, what="5 members alive everywhere")
    assert s1.tags()["h1"].get("role") == "meshnet"
    # serf never suspected a live meshnet agent (memberlist logs each suspicion it starts
    # and each it hears); serf probes every second: give it 20 probes
    time.sleep(10)
    for s in (s1, s2):
        text = (lab.spec.state_dir / f"serf-{s.name}.log").read_text(errors="replace")
        assert "memberlist" in text  # the log is live (it says who it talks to)
        hits = [ln for ln in text.splitlines() if re.search(r"[Ss]uspect (h1|h2|h3)\b", ln)]
        assert not hits, hits

    # kill -9 of a serf agent: every meshnet agent marks it failed
    s2.kill()
    for h in MESH:
        wait_until(lambda h=h: meshnet_members(lab, h).get("s2") == "failed", timeout=20,
                   what=f"s2 failed on {h}")
    # kill -9 of a meshnet agent: serf marks it failed
    os.kill(lab.agent_pid("h3"), signal.SIGKILL)
    wait_until(lambda: s1.members().get("h3") == "failed", timeout=20, what="h3 failed in serf")
    # SIGTERM of a meshnet agent is a restart: serf sees it failed, then alive again
    os.kill(lab.agent_pid("h2"), signal.SIGTERM)
    wait_until(lambda: s1.members().get("h2") == "failed", timeout=20, what="h2 failed in serf")
    lab.restart_agent("h2")
    wait_until(lambda: s1.members().get("h2") == "alive", timeout=20,
               what="h2 alive again in serf")
    # `meshnet leave`: serf shows it left
    r = lab_exec(lab, "h2", "meshnet", "leave")
    assert r.returncode == 0, r.stderr
    try:
        wait_until(lambda: s1.members().get("h2") == "left", timeout=20, what="h2 left in serf")
    except AssertionError as exc:
        log = (lab.spec.state_dir / "h2.log").read_text().splitlines()[-8:]
        raise AssertionError(f"{exc}; serf sees {s1.members()}; h2 log: {log}") from None
    assert_no_serf_decode_errors(s1)


#: three plaintext memberlist pings to h1 from 192.0.2.6; prints whether any answer came
PLAIN_PING = """
import socket
from meshnet.gossip import codec
from meshnet.gossip.messages import Ping, addr_to_wire
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("192.0.2.6", 7950))
s.settimeout(1.0)
got = False
for seq in (1, 2, 3):
    s.sendto(codec.encode(Ping(seq, "h1", addr_to_wire("192.0.2.6"), 7950, "h6")),
             ("192.0.2.1", 7946))
    try:
        s.recvfrom(65536)
        got = True
    except TimeoutError:
        pass
print("answered" if got else "no answer")
"""


def test_encrypted_cluster_and_wrong_key_is_kept_out(make_lab, serfs):
    key = generate_key()
    lab = make_lab(hosts=3, agent_args=["--encrypt-key", key])
    serfs.append(Serf(lab, "h4", "s1", join="192.0.2.1", key=key))
    wait_until(lambda: set(serfs[0].members()) == {"h1", "h2", "h3", "s1"} and all(
        st == "alive" for st in serfs[0].members().values()), timeout=20, what="encrypted join")
    # a serf with another key cannot join
    serfs.append(Serf(lab, "h5", "bad1", join="192.0.2.1", key=generate_key()))
    # a meshnet agent with no key cannot join nor inject a table entry
    ns = lab.add_bare_host("h6")
    logf = open(lab.spec.state_dir / "h6.log", "wb")
    sock = str(lab.spec.state_dir / "h6.sock")
    cmd = [sys.executable, "-m", "meshnet", "agent", "--node", "h6", "--bind", "192.0.2.6",
           "--api", sock, "--gossip-preset", "fast", "--join", "192.0.2.1",
           "--state-dir", str(lab.spec.state_dir / "h6"), "--netns-prefix", ns + "-"]
    intruder = subprocess.Popen(["ip", "netns", "exec", ns, *cmd], stdout=logf,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        from meshnet.api.client import ApiClient

        client = ApiClient(sock)
        wait_until(lambda: client.get("/v1/status"), timeout=20, what="intruder agent up")
        client.post("/v1/networks", {"name": "evil", "subnet": "10.66.0.0/24"})
        # both intruders ran and were refused (not merely absent): their own logs and h1's
        wait_until(lambda: refused(serfs[1]) and rejected_by(lab, "h1", "192.0.2.5",
                                                             "decrypt_failed"),
                   timeout=20, what="the wrong-key serf tried and h1 dropped its packets")
        wait_until(lambda: rejected_by(lab, "h1", "192.0.2.6", "plaintext_when_encrypted") and
                   "encrypted_without_key" in (lab.spec.state_dir / "h6.log").read_text(),
                   timeout=20, what="the keyless agent tried and h1 dropped its packets")
        # a plaintext UDP ping to h1 (the datagram path, not the join's TCP): no ack, and
        # h1 counts it dropped
        drops0 = api(lab, "h1").get("/v1/metrics")["gossip"].get("drop.plaintext_when_encrypted", 0)
        r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", PLAIN_PING],
                           capture_output=True, text=True, timeout=30)
        assert r.stdout.strip() == "no answer", r.stdout + r.stderr
        wait_until(lambda: api(lab, "h1").get("/v1/metrics")["gossip"].get(
            "drop.plaintext_when_encrypted", 0) >= drops0 + 3, what="h1 dropped the pings")
        time.sleep(3)
        for h in MESH:
            assert "h6" not in meshnet_members(lab, h) and "bad1" not in meshnet_members(lab, h)
            assert "evil" not in [n["name"] for n in api(lab, h).get("/v1/networks")]
        assert "h6" not in serfs[0].members() and "bad1" not in serfs[0].members()
        assert [m["name"] for m in client.get("/v1/members")] == ["h6"]
    finally:
        intruder.kill()
        intruder.wait()
    assert_no_serf_decode_errors(serfs[0])


def partition(lab, a: str, b: str, on: bool) -> None:
    op = "-A" if on else "-D"
    ns = lab.spec.host_ns(a)
    for rule in (["INPUT", "-s", lab.spec.host_addr(b)], ["OUTPUT", "-d", lab.spec.host_addr(b)]):
        subprocess.run(["ip", "netns", "exec", ns, "iptables", op, rule[0], rule[1], rule[2],
                        "-j", "DROP"], check=True)


def tables_view(lab, host):
    nets = sorted((n["name"], n["vni"]) for n in api(lab, host).get("/v1/networks"))
    eps = sorted((e["network"], e["ip"], e["host"]) for e in api(lab, host).get("/v1/endpoints"))
    return nets, eps


def test_table_entry_everywhere_and_partition_heal(make_lab):
    lab = make_lab(hosts=3)
    api(lab, "h2").post("/v1/networks", {"name": "n0", "subnet": "10.70.0.0/24"})
    wait_until(lambda: all(tables_view(lab, h)[0] == [("n0", tables_view(lab, "h2")[0][0][1])]
                           for h in MESH), what="entry on every agent")
    # 10 s partition: h3 alone, {h1, h2} on the other side (nobody bridges); writes on
    # both sides
    partition(lab, "h1", "h3", True)
    partition(lab, "h2", "h3", True)
    try:
        api(lab, "h1").post("/v1/networks", {"name": "left", "subnet": "10.71.0.0/24"})
        api(lab, "h3").post("/v1/networks", {"name": "right", "subnet": "10.72.0.0/24"})
        api(lab, "h3").delete("/v1/networks/n0")
        time.sleep(10)  # the fault's duration
        # really apart: neither side has the other's writes
        for h in ("h1", "h2"):
            assert [n for n, _ in tables_view(lab, h)[0]] == ["left", "n0"], tables_view(lab, h)
        assert [n for n, _ in tables_view(lab, "h3")[0]] == ["right"], tables_view(lab, "h3")
    finally:
        partition(lab, "h1", "h3", False)
        partition(lab, "h2", "h3", False)
    want = tables_view(lab, "h2")
    wait_until(lambda: all(tables_view(lab, h) == tables_view(lab, "h2") for h in MESH),
               timeout=15, what="identical tables after heal")
    names = [n for n, _ in tables_view(lab, "h1")[0]]
    assert names == ["left", "right"], (names, want)


def test_key_rotation_keeps_members_and_locks_out_the_old_key(make_lab):
    k1, k2 = generate_key(), generate_key()
    lab = make_lab(hosts=3, agent_args=["--encrypt-key", k1])
    wait_until(lambda: all(set(meshnet_members(lab, h).values()) == {"alive"} and
                           len(meshnet_members(lab, h)) == 3 for h in MESH), what="cluster")
    a = api(lab, "h2")
    a.post("/v1/keys", {"op": "install", "key": k2})
    wait_until(lambda: all(k2 in api(lab, h).get("/v1/keys")["keys"] for h in MESH),
               what="k2 installed everywhere")
    a.post("/v1/keys", {"op": "use", "key": k2})
    wait_until(lambda: all(api(lab, h).get("/v1/keys")["primary"] == k2 for h in MESH),
               what="k2 primary everywhere")
    from meshnet.errors import UserError
    with pytest.raises(UserError, match="primary"):
        a.post("/v1/keys", {"op": "remove", "key": k2})
    a.post("/v1/keys", {"op": "remove", "key": k1})
    wait_until(lambda: all(api(lab, h).get("/v1/keys")["keys"] == [k2] for h in MESH),
               what="k1 removed everywhere")
    time.sleep(2)
    for h in MESH:  # nobody was lost on the way
        assert set(meshnet_members(lab, h).values()) == {"alive"}, meshnet_members(lab, h)
    # a serf agent that only knows the old key cannot join any more
    s = Serf(lab, "h4", "old", join="192.0.2.1", key=k1)
    try:
        wait_until(lambda: refused(s) and rejected_by(lab, "h1", "192.0.2.4", "decrypt_failed"),
                   timeout=20, what="the old-key serf tried and h1 dropped its packets")
        time.sleep(1)
        assert "old" not in meshnet_members(lab, "h1")
    finally:
        s.kill()
