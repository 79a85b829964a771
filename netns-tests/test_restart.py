"""Issue 16: nothing lost when agents restart (durable tables; the data plane outlives
the agent; `meshnet leave` is the decommission)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest
from conftest import agent_log, api, lab_exec, ns_exec, py_in, settled, wait_until
from test_overlay import converged, kernel_dump, overlay_setup

from meshnet.durable import parse

PY = [sys.executable, "-m", "meshnet.testing.traffic"]


def tables(lab, host):
    a = api(lab, host)
    return {
        "networks": sorted(json.dumps(n, sort_keys=True) for n in a.get("/v1/networks")),
        "services": sorted(json.dumps(s, sort_keys=True) for s in a.get("/v1/services")),
        "published": sorted(json.dumps(p, sort_keys=True) for p in a.get("/v1/published")),
        "endpoints": sorted(json.dumps(e, sort_keys=True) for e in a.get("/v1/endpoints")),
    }


def rules(lab, host):
    """iptables nat/filter rules of the host and of each of its sandboxes."""
    out = []
    prefix = lab.spec.host_ns(host)
    for ns in [prefix] + sorted(n for n in os.listdir("/run/netns")
                                if n.startswith(prefix + "-ov-")):
        text = ns_exec(ns, "iptables-save").stdout
        out.append(ns)
        out += [ln for ln in text.splitlines() if not ln.startswith("#")]
    return out


def kernel(lab):
    return {h: (kernel_dump(lab, h), rules(lab, h)) for h in lab.spec.host_names}


def stop(lab, host, sig):
    pid = lab.agent_pid(host)
    os.kill(pid, sig)
    wait_until(lambda: not lab.agent_running(host), timeout=10, what=f"{host} agent stopped")


# --- 1. one host: SIGTERM and kill -9 keep everything --------------------------------


def test_one_host_restart_keeps_tables_and_kernel(make_lab):
    lab = make_lab(hosts=1)
    overlay_setup(lab, "app", "10.160.0.0/24")
    a = api(lab, "h1")
    web = a.post("/v1/services", {"name": "web", "network": "app", "ports": ["80/tcp"]})
    lab.run("h1", "w1", [*PY, "http", "80", "w1"],
            {"network": "app", "name": "w1", "service": "web", "aliases": []})
    c2 = lab.run("h1", "c2", ["sleep", "3600"],
                 {"network": "app", "name": "c2", "aliases": []})["endpoint"]
    a.post("/v1/published", {"published": 8080, "target": 80, "protocol": "tcp"})
    outside = lab.add_bare_host("h9")
    settled(lab)
    before_tables, before_kernel = tables(lab, "h1"), kernel(lab)
    w1 = lab.spec.container_ns("w1")
    for sig in (signal.SIGTERM, signal.SIGKILL):
        stop(lab, "h1", sig)
        lab.restart_agent("h1")
        wait_until(lambda: api(lab, "h1").get("/v1/status")["view"]["source"] == "local copy",
                   timeout=10, what="h1 started from its local copy")
        assert tables(lab, "h1") == before_tables
        assert ns_exec(w1, "ping", "-c", "1", "-W", "2", c2["ip"]).returncode == 0
        r = py_in(w1, "get", f"http://{web['vip']}/")
        assert r.stdout.strip() == "w1", r.stdout + r.stderr
        r = py_in(outside, "get", f"http://{lab.spec.host_addr('h1')}:8080/")
        assert r.stdout.strip() == "w1", r.stdout + r.stderr
        wait_until(lambda: api(lab, "h1").get("/v1/status")["dataplane"]["overlay"]["syncs"],
                   what="a full sync after the restart")
        settled(lab)
        assert kernel(lab) == before_kernel
        assert api(lab, "h1").get("/v1/status")["dataplane"]["overlay"]["ops_applied"] == 0
    assert "DeleteSandbox" not in agent_log(lab, "h1")


# --- 2, 3. three hosts under traffic ------------------------------------------------


@pytest.fixture
def busy(make_lab):
    """3 hosts; web tasks on h1 and h2, none on h3; a TCP stream c1@h1 -> c2@h2; a
    request every 20 ms through the VIP (client on h3) and through the published port
    of h3 (from outside)."""
    lab = make_lab(hosts=3)
    overlay_setup(lab, "app", "10.161.0.0/24")
    a = api(lab, "h1")
    web = a.post("/v1/services", {"name": "web", "network": "app", "ports": ["80/tcp"]})
    for h in ("h1", "h2"):
        lab.run(h, f"w{h[1]}", [*PY, "http", "80", f"w{h[1]}"],
                {"network": "app", "name": f"w{h[1]}", "service": "web", "aliases": []})
    for c, h in (("c1", "h1"), ("c2", "h2"), ("cl", "h3")):
        lab.run(h, c, ["sleep", "3600"], {"network": "app", "name": c, "aliases": []})
    converged(lab, 5)
    a.post("/v1/published", {"published": 8080, "target": 80, "protocol": "tcp"})
    outside = lab.add_bare_host("h9")
    settled(lab)
    return lab, web, outside


class Traffic:
    def __init__(self, lab, web, outside, seconds):
        c2 = next(e for e in api(lab, "h1").get("/v1/endpoints") if e["name"] == "c2")
        n = int(seconds / 0.02)
        self.meter = subprocess.Popen(
            ["ip", "netns", "exec", lab.spec.container_ns("c2"), *PY, "meter", "5009"],
            stdout=subprocess.PIPE, text=True)
        assert self.meter.stdout.readline().strip() == "listening"
        self.stream = py_in(lab.spec.container_ns("c1"), "stream", c2["ip"], "5009",
                            str(seconds), background=True)
        self.vip = py_in(lab.spec.container_ns("cl"), "hits", f"http://{web['vip']}/",
                         str(n), "0.02", background=True)
        self.mesh = py_in(outside, "hits", f"http://{lab.spec.host_addr('h3')}:8080/",
                          str(n), "0.02", background=True)

    def results(self):
        out = {}
        for name in ("stream", "vip", "mesh"):
            text, err = getattr(self, name).communicate(timeout=120)
            out[name] = json.loads(text) if text.strip() else {"error": err}
        text, _ = self.meter.communicate(timeout=30)
        out["meter"] = json.loads(text)
        return out

    @staticmethod
    def check(res):
        assert res["stream"]["error"] is None, res["stream"]
        b = res["meter"]["buckets"]
        windows = [sum(b[i:i + 10]) for i in range(0, max(0, len(b) - 10))]
        assert windows and min(windows) > 0, f"a second with no stream data: {b}"
        for path in ("vip", "mesh"):
            r = res[path]
            assert r["errors"] == 0, (path, [x for x in r["log"] if x[1] == "error"][:5])
            assert sum(r["counts"].values()) > 0, (path, r)


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_all_agents_stopped_at_once_and_restarted_in_random_order(busy, how):
    lab, web, outside = busy
    before_tables = {h: tables(lab, h) for h in lab.spec.host_names}
    before_kernel = kernel(lab)
    rng = random.Random()
    traffic = Traffic(lab, web, outside, seconds=16)
    time.sleep(2)
    for h in lab.spec.host_names:
        os.kill(lab.agent_pid(h), getattr(signal, how))
    for h in lab.spec.host_names:
        wait_until(lambda h=h: not lab.agent_running(h), timeout=10, what=f"{h} stopped")
    order = list(lab.spec.host_names)
    rng.shuffle(order)
    for h in order:
        time.sleep(rng.uniform(0, 5) / len(order))
        lab.restart_agent(h, wait=False)
    for h in order:
        lab._wait_agent(h)
    res = traffic.results()
    Traffic.check(res)
    wait_until(lambda: all(tables(lab, h) == before_tables[h] for h in lab.spec.host_names),
               timeout=10, what="tables as before on every host")
    assert kernel(lab) == before_kernel
    for h in lab.spec.host_names:
        assert "starting" not in api(lab, h).get("/v1/status")["view"]["source"]


def test_rolling_restart_loses_nothing(busy):
    lab, web, outside = busy
    before_kernel = kernel(lab)
    traffic = Traffic(lab, web, outside, seconds=14)
    time.sleep(1)
    for h in lab.spec.host_names:
        stop(lab, h, signal.SIGTERM)
        lab.restart_agent(h)
        time.sleep(2)
    Traffic.check(traffic.results())
    assert kernel(lab) == before_kernel


# --- 4. removed while away stays removed ----------------------------------------------


@pytest.mark.parametrize("away", [2.0, 12.0])  # 12 s: longer than the tombstones live here
def test_removed_while_away_stays_removed(make_lab, away):
    lab = make_lab(hosts=3, agent_args=["--tombstone-lifetime", "10"])
    overlay_setup(lab, "app", "10.162.0.0/24")
    overlay_setup(lab, "old", "10.163.0.0/24")
    a = api(lab, "h1")
    a.post("/v1/services", {"name": "gone", "network": "app", "ports": ["80/tcp"]})
    lab.run("h3", "c3", ["sleep", "3600"], {"network": "app", "name": "c3", "aliases": []})
    converged(lab, 1)
    stop(lab, "h3", signal.SIGTERM)
    a.delete("/v1/services/gone")
    a.delete("/v1/networks/old")
    new = lab.run("h2", "c2", ["sleep", "3600"],
                  {"network": "app", "name": "c2", "aliases": []})["endpoint"]
    time.sleep(away)
    lab.restart_agent("h3")
    converged(lab, 2)
    time.sleep(3)  # several gossip rounds and push/pulls: nothing comes back
    for h in lab.spec.host_names:
        t = api(lab, h)
        assert [n["name"] for n in t.get("/v1/networks")] == ["app"], h
        assert t.get("/v1/services") == [], h
    wait_until(lambda: any(new["mac"] in ln for ln in kernel_dump(lab, "h3")), timeout=5,
               what="c2 programmed on h3")
    r = ns_exec(lab.spec.container_ns("c3"), "ping", "-c", "1", "-W", "2", new["ip"])
    assert r.returncode == 0, r.stdout


# --- 5. a host really gone; leave ---------------------------------------------------


def test_agent_down_keeps_entries_host_gone_removes_them(make_lab):
    lab = make_lab(hosts=3)
    overlay_setup(lab, "app", "10.164.0.0/24")
    web = api(lab, "h1").post("/v1/services", {
        "name": "web", "network": "app", "ports": ["80/tcp"],
        "health": {"kind": "tcp", "interval": 0.2, "timeout": 0.2, "retries": 1}})
    eps = {c: lab.run(h, c, ["sleep", "3600"], {"network": "app", "name": c,
                                                 "aliases": []})["endpoint"]
           for c, h in (("c1", "h1"), ("c3", "h3"))}
    lab.run("h3", "w3", [*PY, "http", "80", "w3"],
            {"network": "app", "name": "w3", "service": "web", "aliases": []})
    converged(lab, 3)
    healthy = lambda: api(lab, "h1").get("/v1/status")["lb"]["backends"]  # noqa: E731
    wait_until(lambda: healthy().get("healthy") == 1, timeout=10, what="w3 healthy on h1")
    os.kill(lab.agent_pid("h3"), signal.SIGKILL)  # agent down, host up

    def state(h="h1"):
        return {m["name"]: m for m in api(lab, h).get("/v1/members")}.get("h3", {})
    wait_until(lambda: state().get("host") == "answering", timeout=15,
               what="h1 sees h3's agent down and its host answering")
    time.sleep(2)
    for h in ("h1", "h2"):
        assert "c3" in [e["name"] for e in api(lab, h).get("/v1/endpoints")], h
    assert any(eps["c3"]["mac"] in ln for ln in kernel_dump(lab, "h1"))
    r = ns_exec(lab.spec.container_ns("c1"), "ping", "-c", "1", "-W", "2", eps["c3"]["ip"])
    assert r.returncode == 0, r.stdout
    # its task keeps its last health (nobody checks it now) and is still served
    assert healthy() == {"healthy": 1, "unhealthy": 0}
    r = py_in(lab.spec.container_ns("c1"), "hits", f"http://{web['vip']}/", "10")
    assert json.loads(r.stdout)["counts"] == {"w3": 10}, r.stdout + r.stderr
    # now the host goes too: removed by the next re-probe (swift and fast: re-probes back off
    # from 1 s to at most 8 s, each waits 0.5 s for an answer)
    subprocess.run(["ip", "netns", "exec", lab.spec.host_ns("h3"), "ip", "link", "set",
                    "eth0", "down"], check=True)
    t0 = time.monotonic()
    wait_until(lambda: not any(eps["c3"]["mac"] in ln for ln in kernel_dump(lab, "h1")),
               timeout=10, interval=0.05, what="c3 gone from h1's FDB")
    for h in ("h1", "h2"):
        wait_until(lambda h=h: "c3" not in [e["name"] for e in api(lab, h).get("/v1/endpoints")],
                   timeout=10, interval=0.05, what=f"c3 gone from {h}'s tables")
    assert time.monotonic() - t0 < 8.0 + 0.5 + 0.5


def test_leave_removes_entries_everywhere_within_1s(make_lab):
    lab = make_lab(hosts=3)
    overlay_setup(lab, "app", "10.165.0.0/24")
    c3 = lab.run("h3", "c3", ["sleep", "3600"],
                 {"network": "app", "name": "c3", "aliases": []})["endpoint"]
    converged(lab, 1)
    t0 = time.monotonic()
    r = lab_exec(lab, "h3", "meshnet", "leave")
    assert r.returncode == 0 and "left the cluster" in r.stdout, r.stdout + r.stderr
    for h in ("h1", "h2"):
        wait_until(lambda h=h: not any(c3["mac"] in ln for ln in kernel_dump(lab, h))
                   and api(lab, h).get("/v1/endpoints") == [], timeout=2, interval=0.02,
                   what=f"h3's entries gone on {h}")
    assert time.monotonic() - t0 < 1.0
    wait_until(lambda: not lab.agent_running("h3"), timeout=10, what="h3's agent exited")
    states = {m["name"]: m["state"] for m in api(lab, "h1").get("/v1/members")}
    assert states["h3"] == "left", states


# --- 6. crash safety -------------------------------------------------------------------


def _burst(client, prefix, n, answered, stop_ev):
    for i in range(n):
        if stop_ev.is_set():
            return
        name = f"{prefix}-{i}"
        try:
            client.post("/v1/networks", {"name": name, "subnet": f"10.{200 + i // 250}."
                                                                 f"{i % 250}.0/24"})
        except Exception:  # the agent died under us: this one was not answered
            return
        answered.append(name)


def test_kill9_during_writes_loses_no_accepted_change(make_lab):
    from meshnet.api.client import ApiClient

    lab = make_lab(hosts=2)
    journal = lab.spec.state_dir / "h1" / "tables.journal"
    rng = random.Random()
    every: set[str] = set()
    for rnd in range(20):
        answered: list[str] = []
        ev = threading.Event()
        client = ApiClient(lab.spec.api_socket("h1"), timeout=5)
        t = threading.Thread(target=_burst, args=(client, f"r{rnd}", 1000, answered, ev))
        t.start()
        time.sleep(rng.uniform(0.05, 1.0))
        os.kill(lab.agent_pid("h1"), signal.SIGKILL)
        t.join(timeout=30)
        ev.set()
        wait_until(lambda: not lab.agent_running("h1"), timeout=5, what="h1 dead")
        p = parse(journal.read_bytes())
        assert not p.error, p.error
        held = {k for (table, k), row in p.rows.items() if table == "networks" and not row[2]}
        missing = set(answered) - held
        assert not missing, f"round {rnd}: {len(missing)} answered creates not on disk"
        every |= set(answered)
        lab.restart_agent("h1")
    names = lambda h: {n["name"] for n in api(lab, h).get("/v1/networks")}  # noqa: E731
    wait_until(lambda: every <= names("h1") and names("h1") == names("h2"), timeout=20,
               what="h1 and h2 agree and hold every answered create")
    # a truncated and a garbage copy: one log line each, start from the peer
    for damage in ("truncate", "garbage"):
        stop(lab, "h1", signal.SIGKILL)
        if damage == "truncate":
            with open(journal, "r+b") as f:
                f.truncate(journal.stat().st_size // 2 + 3)
        else:
            journal.write_bytes(os.urandom(4096))
        lab.restart_agent("h1")
        want = "discarded a torn tail" if damage == "truncate" else "is unusable"
        assert agent_log(lab, "h1").count(want) == 1
        wait_until(lambda: names("h1") == names("h2") and every <= names("h1"), timeout=20,
                   what=f"h1 whole again from h2 after {damage}")
    assert list(journal.parent.glob("tables.journal.corrupt-*"))


# --- `meshnet lab stop / restart` (issue 19) ------------------------------------------


def test_lab_stop_and_restart_commands_keep_the_data_plane(busy):
    lab, web, outside = busy
    labcmd = [sys.executable, "-m", "meshnet", "lab"]

    def run(*args):
        r = subprocess.run([*labcmd, *args, "--name", lab.spec.name], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return r.stdout

    before_kernel = kernel(lab)
    traffic = Traffic(lab, web, outside, seconds=10)
    time.sleep(1)
    old = lab.agent_pid("h2")
    assert "up again" in run("restart", "h2")
    assert lab.agent_running("h2") and lab.agent_pid("h2") != old
    assert "stopped" in run("stop", "h1")
    assert not lab.agent_running("h1")
    assert "was not running" in run("stop", "h1")
    time.sleep(2)
    # as if the lab had been brought up with --agent-arg=--gossip-preset --agent-arg=lan
    (lab.spec.state_dir / "agent-args.json").write_text('["--gossip-preset", "lan"]')
    run("restart", "h1")
    assert lab.agent_running("h1")
    assert api(lab, "h1").get("/v1/status")["gossip"]["preset"] == "lan"
    Traffic.check(traffic.results())
    assert kernel(lab) == before_kernel
