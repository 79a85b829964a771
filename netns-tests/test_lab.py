"""Issue 2 acceptance: the lab, the agent's API through it, cleanup, and user errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess

from conftest import MINE, lab_exec, meshnet, unique

from meshnet import netns
from meshnet.lab.lab import Lab
from meshnet.lab.topology import LabSpec


def iptables_rulesets() -> str:
    return "".join(subprocess.run([c], capture_output=True, text=True).stdout
                   for c in ("iptables-save", "iptables-legacy-save")
                   if subprocess.run(["which", c], capture_output=True).returncode == 0)


def links() -> list[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    return sorted(line.split(":")[1].strip() for line in out.splitlines())


def strip_counters(dump: str) -> list[str]:
    return [ln.split(" [")[0] for ln in dump.splitlines() if not ln.startswith("#")]


def test_lab_up_status_down_leaves_machine_as_before():
    name = unique()
    before = (netns.list_netns(), links(), strip_counters(iptables_rulesets()))
    r = meshnet("lab", "up", "--name", name, "--hosts", "3")
    try:
        assert r.returncode == 0, r.stderr
        st = lab_exec(Lab.load(name), "h2", "meshnet", "status", "--json", check=True)
        data = json.loads(st.stdout)
        assert data["node"] == "h2" and data["state"] == "up"
        assert data["advertise"] == "192.0.2.2"
        ls = json.loads(meshnet("lab", "ls", "--json", check=True).stdout)
        mine = [lab for lab in ls if lab["name"] == name][0]
        assert [h["agent"] for h in mine["hosts"]] == ["up"] * 3
        # the underlay works: h1 reaches h3 over the lab bridge
        ping = lab_exec(Lab.load(name), "h1", "ping", "-c", "1", "-W", "2", "192.0.2.3")
        assert ping.returncode == 0, ping.stdout + ping.stderr
    finally:
        down = meshnet("lab", "down", "--name", name)
    assert down.returncode == 0, down.stderr
    after = (netns.list_netns(), links(), strip_counters(iptables_rulesets()))
    assert after == before


def test_lab_down_after_crashed_agent_and_cleanup(make_lab):
    lab = make_lab(hosts=2)
    pid = lab.agent_pid("h2")
    os.kill(pid, signal.SIGKILL)
    # the crashed agent's socket is still on disk; lab down must not care
    r = lab.run("h1", "c1", ["sleep", "300"])
    assert netns.exists(r["netns"])
    removed = lab.down()
    assert lab.spec.container_ns("c1") in removed
    assert not [n for n in netns.list_netns() if n.startswith(lab.spec.ns_prefix)]
    assert not lab.spec.state_dir.exists()


def test_meshnet_cleanup_removes_owned_objects_only():
    name = unique()
    lab = Lab(LabSpec(name=name, hosts=1))
    lab.up()
    netns.create("keep-" + name)  # not meshnet's: cleanup must not touch it
    try:
        os.kill(lab.agent_pid("h1"), signal.SIGKILL)
        r = meshnet("cleanup", "--json", check=True)
        removed = json.loads(r.stdout)
        assert name in removed["labs"]
        assert not [n for n in netns.list_netns() if n.startswith(f"mn-{name}-")]
        assert netns.exists("keep-" + name)
    finally:
        netns.remove("keep-" + name)
        lab.down()


def test_agent_graceful_sigterm(make_lab):
    lab = make_lab(hosts=1)
    pid = lab.agent_pid("h1")
    os.kill(pid, signal.SIGTERM)
    for _ in range(100):
        if not lab.agent_running("h1"):
            break
        subprocess.run(["sleep", "0.05"])
    assert not lab.agent_running("h1")
    log = (lab.spec.state_dir / "h1.log").read_text()
    assert "stopped" in log and "Traceback" not in log
    assert not os.path.exists(lab.spec.api_socket("h1"))
    lab.restart_agent("h1")
    st = lab_exec(lab, "h1", "meshnet", "status", "--json", check=True)
    assert json.loads(st.stdout)["node"] == "h1"


def test_user_errors_exit_2_and_change_nothing(make_lab, tmp_path):
    lab = make_lab(hosts=1)

    def mine() -> list[str]:  # this lab's namespaces (other runs may share the machine)
        return [n for n in netns.list_netns() if lab.spec.name in n or MINE in n]
    before = mine()
    cases = [
        lab_exec(lab, "h1", "meshnet", "network", "create", "x", "--subnet", "10.0.0.0/33"),
        meshnet("lab", "exec", "--name", lab.spec.name, "h7", "--", "true"),
        meshnet("lab", "up", "--name", lab.spec.name),
        meshnet("lab", "up", "--name", unique(), "--hosts", "0"),
        meshnet("lab", "run", "--name", lab.spec.name, "h1", "c1", "--network", "nope",
                "--", "sleep", "1"),
    ]
    bad_cfg = tmp_path / "bad.toml"
    bad_cfg.write_text("underlay-mtu = \"big\"\n")
    cases.append(meshnet("agent", "--config", str(bad_cfg)))
    for r in cases:
        assert r.returncode == 2, (r.args, r.stdout, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "Traceback" not in r.stderr
    assert mine() == before
    nets = lab_exec(lab, "h1", "meshnet", "network", "ls", "--json", check=True)
    assert json.loads(nets.stdout) == []
