"""Issue 8 acceptance (operations): systemd notify protocol and Prometheus metrics."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from conftest import api, ns_exec, wait_until
from prometheus_client.parser import text_string_to_metric_families
from test_overlay import converged, overlay_setup


def test_ready_only_after_join_and_watchdog(make_lab, tmp_path):
    lab = make_lab(hosts=2)
    path = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(path)
    listener.settimeout(10)
    try:
        os.kill(lab.agent_pid("h2"), signal.SIGTERM)
        wait_until(lambda: not lab.agent_running("h2"), what="h2 stopped")
        # h1 silently drops h2 while h2 starts: its join (a TCP push/pull) hangs in SYN
        # retransmits, so READY must wait; the drop goes before the join's deadline
        # (2 s) and the next SYN (1 s after the first) gets through
        block = ["ip", "netns", "exec", lab.spec.host_ns("h1"), "iptables", "-I", "INPUT",
                 "-s", lab.spec.host_addr("h2"), "-j", "DROP"]
        subprocess.run(block, check=True)
        try:
            lab.restart_agent("h2", env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"},
                              wait=False)
            messages = []
            while not any(m.startswith("STATUS=joining") for m in messages):
                messages.append(listener.recv(4096).decode())
            held = time.monotonic() + 0.6
            listener.settimeout(0.1)
            while time.monotonic() < held:
                try:
                    messages.append(listener.recv(4096).decode())
                except TimeoutError:
                    pass
            listener.settimeout(10)
            assert not any("READY=1" in m for m in messages), messages
        finally:
            block[5] = "-D"
            subprocess.run(block, check=True)
        while not any("READY=1" in m for m in messages):
            messages.append(listener.recv(4096).decode())
        # READY came after the join: the status sent with READY already counts its peer
        ready = next(m for m in messages if "READY=1" in m)
        assert "STATUS=running: 2 members alive" in ready, ready
        members = {m["name"]: m["state"] for m in api(lab, "h2").get("/v1/members")}
        assert members == {"h1": "alive", "h2": "alive"}, members
        assert api(lab, "h2").get("/v1/status")["synced"] is True
        status = [m for m in messages if m.startswith("STATUS=")]
        assert status and messages.index(status[0]) < len(messages) - 1
        t0, beats = time.monotonic(), 0
        while time.monotonic() - t0 < 1.5:
            if "WATCHDOG=1" in listener.recv(4096).decode():
                beats += 1
        assert beats >= 4, beats  # every 0.2 s (half of WATCHDOG_USEC)
        os.kill(lab.agent_pid("h2"), signal.SIGTERM)
        got = ""
        while "STOPPING=1" not in got:
            got = listener.recv(4096).decode()
    finally:
        listener.close()


def test_metrics_endpoint_serves_prometheus_text(make_lab):
    lab = make_lab(hosts=2, agent_args=["--metrics", "127.0.0.1:9470"])
    overlay_setup(lab, "app", "10.110.0.0/24")
    api(lab, "h1").post("/v1/services", {"name": "web", "network": "app", "ports": ["80/tcp"]})
    lab.run("h1", "c1", ["sleep", "600"], {"network": "app", "name": "c1", "aliases": [],
                                            "service": "web"})
    lab.run("h2", "c2", ["sleep", "600"], {"network": "app", "name": "c2", "aliases": []})
    converged(lab, 2)
    dig = ns_exec(lab.spec.container_ns("c2"), "dig", "+short", "c1")
    assert dig.stdout.strip(), dig
    r = ns_exec(lab.spec.host_ns("h2"), sys.executable, "-c",
                "import urllib.request; print(urllib.request.urlopen("
                "'http://127.0.0.1:9470/metrics', timeout=5).read().decode())")
    assert r.returncode == 0, r.stderr
    families = {f.name: f for f in text_string_to_metric_families(r.stdout)}
    for name in ("meshnet_members", "meshnet_gossip_messages", "meshnet_gossip_dropped",
                 "meshnet_dns_queries", "meshnet_dns_query_duration_seconds",
                 "meshnet_reconcile_runs", "meshnet_reconcile_errors",
                 "meshnet_reconcile_duration_seconds", "meshnet_lb_backends"):
        assert name in families, sorted(families)
    alive = [s for s in families["meshnet_members"].samples if s.labels["state"] == "alive"]
    assert alive[0].value == 2
    queries = sum(s.value for s in families["meshnet_dns_queries"].samples)
    assert queries >= 1, [s for s in families["meshnet_dns_queries"].samples]
    runs = {s.labels["programmer"] for s in families["meshnet_reconcile_runs"].samples}
    assert {"vxlan", "gwbridge", "dns", "lb"} <= runs
    lb = {(s.labels["service"], s.labels["health"]): s.value
          for s in families["meshnet_lb_backends"].samples}
    assert lb[("web", "healthy")] == 1
