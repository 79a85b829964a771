"""commitack on the real kernel: an iptables-restore (nft variant) is acknowledged by
its commit event, and its rules are in place when the call returns; a failing one raises
with iptables' message and changes nothing; a restore whose events overflow the socket,
or whose events never name it, falls back to its exit status and is still right."""

from __future__ import annotations

import shutil

import pytest
from conftest import unique

from meshnet import netns
from meshnet.errors import KernelError
from meshnet.ipvs import commitack
from meshnet.ipvs.commitack import REAPER, run_acked

RESTORE = shutil.which("iptables-restore")
pytestmark = pytest.mark.skipif(RESTORE is None, reason="iptables-restore not installed")


def _save(ns: str) -> str:
    return netns.run_cmd(ns, ["iptables-save"], capture_output=True, text=True,
                         check=True).stdout


@pytest.fixture
def ns():
    name = f"mn-{unique()}-ack"
    netns.create(name)
    try:
        yield name
    finally:
        REAPER.settle()
        netns.remove(name, kill=True)


def test_acknowledged_at_commit_and_in_place(ns):
    text = ("*filter\n:MN-ACK-F - [0:0]\n-A MN-ACK-F -p tcp --dport 81 -j ACCEPT\nCOMMIT\n"
            "*nat\n:MN-ACK - [0:0]\n-A MN-ACK -p tcp -j DNAT --to-destination 10.1.1.1:80\n"
            "COMMIT\n")
    assert run_acked(ns, [RESTORE, "--noflush"], text) == "ack"
    dump = _save(ns)  # right away: the commit is done when the call returns
    assert "-A MN-ACK -p tcp -j DNAT --to-destination 10.1.1.1:80" in dump
    assert "-A MN-ACK-F -p tcp -m tcp --dport 81 -j ACCEPT" in dump
    # a rewrite (flush + add: the case that made waiting for the exit slow)
    text2 = "*nat\n:MN-ACK - [0:0]\n-A MN-ACK -p tcp -j DNAT --to-destination 10.1.1.2:80\nCOMMIT\n"
    assert run_acked(ns, [RESTORE, "--noflush"], text2) == "ack"
    dump = _save(ns)
    assert "10.1.1.2:80" in dump and "10.1.1.1:80" not in dump


def test_failure_raises_and_changes_nothing(ns):
    run_acked(ns, [RESTORE, "--noflush"], "*nat\n:MN-ACK - [0:0]\n-A MN-ACK -j ACCEPT\nCOMMIT\n")
    before = _save(ns)
    bad = "*nat\n:MN-ACK - [0:0]\n-A MN-ACK -j ACCEPT\n-A MN-ACK -j NO-SUCH-CHAIN\nCOMMIT\n"
    with pytest.raises(KernelError, match="NO-SUCH-CHAIN"):
        run_acked(ns, [RESTORE, "--noflush"], bad)
    assert _save(ns).split("\n", 1)[1].rsplit("# Completed", 1)[0] == \
        before.split("\n", 1)[1].rsplit("# Completed", 1)[0]


def test_overflowed_events_fall_back_to_the_exit_status(ns, monkeypatch):
    rules = "\n".join(f"-A MN-BIG -d 10.2.{i // 250}.{i % 250} -j ACCEPT" for i in range(600))
    text = f"*nat\n:MN-BIG - [0:0]\n{rules}\nCOMMIT\n"
    drain = commitack._drain  # noqa: SLF001

    def late(sock, proc, seen, need):  # read only once the child is done: no race
        proc.wait()
        return drain(sock, proc, seen, need)
    monkeypatch.setattr(commitack, "_drain", late)
    # the smallest receive buffer: 600 NEWRULE events overflow it before the NEWGEN
    assert run_acked(ns, [RESTORE, "--noflush"], text, rcvbuf=1) == "exit"
    assert _save(ns).count("-A MN-BIG ") == 600


def test_events_that_never_name_the_child_fall_back(ns, monkeypatch):
    monkeypatch.setattr(commitack, "commits_by", lambda buf, pid: 0)
    text = "*nat\n:MN-ACK - [0:0]\n-A MN-ACK -j ACCEPT\nCOMMIT\n"
    assert run_acked(ns, [RESTORE, "--noflush"], text) == "exit"
    assert "-A MN-ACK -j ACCEPT" in _save(ns)
    with pytest.raises(KernelError):
        run_acked(ns, [RESTORE, "--noflush"], "*nat\n-A MN-NONE -j ACCEPT\nCOMMIT\n")


def test_no_event_socket_runs_plainly(ns, monkeypatch):
    def refuse(rcvbuf):
        raise PermissionError(1, "Operation not permitted")
    monkeypatch.setattr(commitack, "event_socket", refuse)
    text = "*nat\n:MN-ACK - [0:0]\n-A MN-ACK -j ACCEPT\nCOMMIT\n"
    assert run_acked(ns, [RESTORE, "--noflush"], text) == "exit"
    assert "-A MN-ACK -j ACCEPT" in _save(ns)
    with pytest.raises(FileNotFoundError):  # a missing namespace is still that
        run_acked(ns + "-gone", [RESTORE, "--noflush"], text)


def test_large_inputs_run_plainly(ns):
    rules = "\n".join(f"-A MN-HUGE -d 10.3.{i // 250}.{i % 250} -j ACCEPT" for i in range(1500))
    text = f"*nat\n:MN-HUGE - [0:0]\n{rules}\nCOMMIT\n"
    assert len(text) > commitack.ACK_MAX_TEXT
    assert run_acked(ns, [RESTORE, "--noflush"], text) == "exit"
    assert _save(ns).count("-A MN-HUGE ") == 1500
