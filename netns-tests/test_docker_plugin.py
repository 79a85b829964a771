"""Issue 18 acceptance: meshnet as Docker's network and IPAM plugin, with real dockerds.

One lab of two hosts with ``--docker``: a dockerd per host (its own data root, its own
mount namespace whose /run/docker/plugins/meshnet.sock is that host's agent), wired to
its agent. Everything is driven through the docker CLI, as a user would.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time

import pytest
from conftest import MESHNET, SHARED_LABS, agent_log, unique, wait_until

from meshnet.lab import dockerd
from meshnet.lab.lab import Lab
from meshnet.lab.topology import LabSpec

IMAGE = dockerd.IMAGE
NET = {"h1": "appnet", "h2": "appnet-h2"}  #: appnet's Docker network on each host
HTTPD = 'echo "hello from $(hostname)" > /tmp/index.html; exec httpd -f -p 80 -h /tmp'


@pytest.fixture(scope="module")
def lab():
    if not shutil.which("dockerd") or not shutil.which("busybox"):  # `make test` installs both
        pytest.fail("needs docker.io and busybox-static (apt-get install docker.io "
                    "busybox-static)")
    lab = Lab(LabSpec(name=unique(), hosts=2, docker=True))
    SHARED_LABS.add(lab.spec.ns_prefix)
    try:
        lab.up()
        yield lab
    finally:
        keep = bool(os.environ.get("MESHNET_TEST_KEEP_LAB"))  # debugging: leave it up
        if not keep:
            lab.down()
        SHARED_LABS.discard(lab.spec.ns_prefix)
    if keep:
        return
    from meshnet import netns

    left = [n for n in netns.list_netns() if n.startswith(lab.spec.ns_prefix)]
    assert not left, f"lab down left {left}"
    assert not dockerd._in_mount_ns_of(lab.spec, "h1"), "containerd or shims left"


def docker(lab: Lab, host: str, *args: str, check: bool = True, timeout: float = 90) -> str:
    r = dockerd.docker(lab.spec, host, *args, timeout=timeout)
    out, err = r.stdout.decode(), r.stderr.decode()
    if check and r.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} on {host}: {err.strip()}")
    return out if r.returncode == 0 else err


def sh(lab: Lab, host: str, ctr: str, script: str, timeout: float = 30) -> str:
    r = dockerd.docker(lab.spec, host, "exec", ctr, "sh", "-c", script, timeout=timeout)
    return r.stdout.decode() + r.stderr.decode()


def http_get(lab: Lab, host: str, ctr: str, target: str, port: int = 80) -> str:
    out = sh(lab, host, ctr, f'printf "GET /index.html HTTP/1.0\\r\\n\\r\\n" | '
                             f"nc -w 3 {target} {port} | tail -1")
    return out.strip()


def host_http_get(lab: Lab, host: str, addr: str, port: int) -> str:
    r = subprocess.run(["ip", "netns", "exec", lab.spec.host_ns(host), "sh", "-c",
                        f'printf "GET /index.html HTTP/1.0\\r\\n\\r\\n" | busybox nc -w 3 '
                        f"{addr} {port} | tail -1"], capture_output=True, text=True, timeout=20)
    return r.stdout.strip()


def api(lab: Lab, host: str):
    from meshnet.api.client import ApiClient

    return ApiClient(lab.spec.api_socket(host), timeout=10)


def endpoints(lab: Lab, host: str) -> dict[str, dict]:
    return {e["name"]: e for e in api(lab, host).get("/v1/endpoints")}


def host_links(lab: Lab, host: str) -> list[str]:
    r = subprocess.run(["ip", "-n", lab.spec.host_ns(host), "-o", "link"], capture_output=True,
                       text=True)
    return re.findall(r"^\d+: (mn-dk[0-9a-f]+)", r.stdout, re.M)


def plugin_state(lab: Lab, host: str) -> dict:
    return json.loads((lab.spec.state_dir / host / "docker.json").read_text())


def eth(lab: Lab, host: str, ctr: str, dev: str = "eth0") -> tuple[str, int, str]:
    out = sh(lab, host, ctr, f"ip addr show {dev}")
    ip = re.search(r"inet (\S+)", out).group(1)
    mtu = int(re.search(r"mtu (\d+)", out).group(1))
    mac = re.search(r"link/ether (\S+)", out).group(1)
    return ip, mtu, mac


def plugin_call(path: str, method: str, body: bytes) -> tuple[int, dict]:
    """One request exactly as dockerd 20.10 sends it (headers from the facts file)."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(path)
    s.sendall(f"POST /{method} HTTP/1.1\r\nHost: \r\nUser-Agent: Go-http-client/1.1\r\n"
              f"Content-Length: {len(body)}\r\nAccept: application/vnd.docker.plugins.v1.2+json"
              "\r\nAccept-Encoding: gzip\r\n\r\n".encode() + body)
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
    while len(rest) < length:
        rest += s.recv(65536)
    s.close()
    return int(head.split()[1]), json.loads(rest)


def test_handshake_on_the_agents_socket(lab):
    path = dockerd.plugin_socket(lab.spec, "h1")
    assert plugin_call(path, "Plugin.Activate", b"") == (
        200, {"Implements": ["NetworkDriver", "IpamDriver"]})
    assert plugin_call(path, "NetworkDriver.GetCapabilities", b"") == (
        200, {"Scope": "local", "ConnectivityScope": "global"})
    assert plugin_call(path, "IpamDriver.GetCapabilities", b"") == (
        200, {"RequiresMACAddress": False, "RequiresRequestReplay": False})
    assert plugin_call(path, "IpamDriver.GetDefaultAddressSpaces", b"") == (
        200, {"LocalDefaultAddressSpace": "meshnet", "GlobalDefaultAddressSpace": "meshnet"})
    status, answer = plugin_call(path, "NetworkDriver.Teleport", b"{}\n")
    assert status == 404 and "Err" in answer
    status, answer = plugin_call(path, "IpamDriver.RequestAddress", b"")
    assert status == 400 and "Err" in answer


def test_networks_containers_addresses_names_mtu(lab):
    # bare -d meshnet: refused, with what to add
    err = docker(lab, "h1", "network", "create", "-d", "meshnet", "bare", check=False)
    assert "--ipam-driver meshnet" in err
    docker(lab, "h1", "network", "create", "-d", "meshnet", "--ipam-driver", "meshnet",
           "--subnet", "10.61.0.0/24", "-o", "meshnet.network=appnet", "appnet")
    # the same meshnet network created on h2 under another Docker name: one network
    docker(lab, "h2", "network", "create", "-d", "meshnet", "--ipam-driver", "meshnet",
           "--subnet", "10.61.0.0/24", "-o", "meshnet.network=appnet", "appnet-h2")
    nets = api(lab, "h1").get("/v1/networks")
    assert [n["name"] for n in nets] == ["appnet"]
    # h2's agent does not add a Docker network "appnet": appnet-h2 is appnet's there
    time.sleep(1.5)
    assert "appnet\n" not in docker(lab, "h2", "network", "ls", "--format", "{{.Name}}")
    # a network made with meshnet appears in Docker on every host (as Weave's did)
    api(lab, "h1").post("/v1/networks", {"name": "second", "subnet": "10.62.0.0/24"})
    for h in ("h1", "h2"):
        wait_until(lambda h=h: "second\n" in docker(lab, h, "network", "ls", "--format",
                                                      "{{.Name}}"), 10, what=f"second on {h}")

    docker(lab, "h1", "run", "-d", "--name", "c1", "--network", "appnet",
           "--network-alias", "front", IMAGE, "sleep", "3600")
    docker(lab, "h2", "run", "-d", "--name", "c2", "--network", "appnet-h2", "--ip",
           "10.61.0.77", IMAGE, "sleep", "3600")
    ip1, mtu1, mac1 = eth(lab, "h1", "c1")
    ip2, mtu2, _ = eth(lab, "h2", "c2")
    assert ip1 != ip2 and ip2 == "10.61.0.77/24" and ip1.startswith("10.61.0.")
    assert mtu1 == mtu2 == 1450  # underlay 1500 - VXLAN 50
    octets = [int(x) for x in ip1.split("/")[0].split(".")]
    assert mac1 == "02:42:" + ":".join(f"{o:02x}" for o in octets)  # meshnet's MAC
    for h, c, other in (("h1", "c1", "c2"), ("h2", "c2", "c1"), ("h2", "c2", "front")):
        wait_until(lambda h=h, c=c, o=other: "1 packets received" in
                   sh(lab, h, c, f"ping -c1 -W1 {o}"), 10, what=f"{c} pings {other}")

    # network connect / disconnect on a running container; two meshnet networks on one
    docker(lab, "h1", "network", "connect", "second", "c1")
    docker(lab, "h2", "network", "connect", "second", "c2")
    ip1b, _, _ = eth(lab, "h1", "c1", "eth2")  # eth1: docker_gwbridge
    wait_until(lambda: "1 packets received" in
               sh(lab, "h2", "c2", f"ping -c1 -W1 {ip1b.split('/')[0]}"), 10,
               what="ping over the second network")
    assert {e["network"] for e in api(lab, "h1").get("/v1/endpoints")
            if e["name"] == "c1"} == {"appnet", "second"}
    docker(lab, "h1", "network", "disconnect", "second", "c1")
    assert "eth2" not in sh(lab, "h1", "c1", "ip link")
    wait_until(lambda: [e for e in api(lab, "h2").get("/v1/endpoints")
                        if e["name"] == "c1"] == [
                            e for e in api(lab, "h2").get("/v1/endpoints")
                            if e["name"] == "c1" and e["network"] == "appnet"], 5,
               what="c1's second endpoint gone everywhere")
    docker(lab, "h2", "network", "disconnect", "second", "c2")


def test_names_vips_srv_ports_and_services(lab):
    c = api(lab, "h1")
    c.post("/v1/services", {"name": "web", "network": "appnet", "ports": ["80/tcp"]})
    for h in ("h1", "h2"):
        docker(lab, h, "run", "-d", "--name", f"web{h}", "--hostname", f"web{h}", "--network",
               NET[h], "--label", "meshnet.service=web", IMAGE, "sh", "-c", HTTPD)
    wait_until(lambda: len([e for e in c.get("/v1/endpoints") if e["service"] == "web"]) == 2,
               10, what="two Docker tasks of web")
    # name, alias, VIP, tasks and SRV across hosts, through Docker's 127.0.0.11
    assert "10.61.0.77" in sh(lab, "h1", "c1", "nslookup c2")
    vip = next(s for s in c.get("/v1/services") if s["name"] == "web")["vip"]
    assert vip in sh(lab, "h2", "c2", "nslookup web")
    assert "service = 0 0 80 web" in sh(lab, "h2", "c2", "nslookup -type=SRV _80._tcp.web")
    assert sh(lab, "h2", "c2", "nslookup tasks.web").count("Address: 10.61.0.") == 2
    assert "c1.appnet" in sh(lab, "h2", "c2", "nslookup " + eth(lab, "h1", "c1")[0][:-3])
    assert "Address: 192.0.2.253" in sh(lab, "h1", "c1", "nslookup example.com")  # upstream
    # the VIP balances over the tasks on both hosts
    seen = {http_get(lab, "h1", "c1", "web") for _ in range(16)}
    assert seen == {"hello from webh1", "hello from webh2"}, seen
    # a meshnet published port (routing mesh) reaches Docker tasks from every host
    c.post("/v1/published", {"published": 8080, "target": 80, "service": "web",
                             "protocol": "tcp", "mode": "ingress"})
    got = set()
    for _ in range(12):
        got.add(wait_until(lambda: host_http_get(lab, "h2", "192.0.2.1", 8080), 10,
                           what="published port"))
    assert got == {"hello from webh1", "hello from webh2"}, got
    # docker run -p on a meshnet network (Docker's docker_gwbridge publishes it)
    docker(lab, "h2", "run", "-d", "--name", "pweb", "--hostname", "pweb", "-p", "8081:80",
           "--network", NET["h2"], IMAGE, "sh", "-c", HTTPD)
    assert wait_until(lambda: host_http_get(lab, "h1", "192.0.2.2", 8081), 10,
                      what="-p 8081") == "hello from pweb"
    c.delete("/v1/published/8080-tcp")
    docker(lab, "h2", "rm", "-f", "pweb")


def test_lifecycle_leaves_nothing_behind(lab):
    c = api(lab, "h1")
    # rm -f: endpoint, veth and the peers' FDB entries go
    docker(lab, "h1", "run", "-d", "--name", "tmp1", "--network", "appnet", IMAGE,
           "sleep", "3600")
    mac = eth(lab, "h1", "tmp1")[2]
    vni = next(n["vni"] for n in c.get("/v1/networks") if n["name"] == "appnet")
    sandbox = f"{lab.spec.host_ns('h2')}-ov-{vni:06x}"

    def fdb_on_h2() -> str:  # the overlay's entries (MAC -> VTEP), not the bridge's learning
        out = subprocess.run(["bridge", "-n", sandbox, "fdb", "show"], capture_output=True,
                             text=True).stdout
        return "\n".join(line for line in out.splitlines() if " dst " in line)
    wait_until(lambda: mac in fdb_on_h2(), 5, what="FDB entry on h2")
    links_before = len(host_links(lab, "h1"))
    docker(lab, "h1", "rm", "-f", "tmp1")
    wait_until(lambda: "tmp1" not in endpoints(lab, "h2"), 5, what="tmp1 gone from h2")
    wait_until(lambda: mac not in fdb_on_h2(), 5, what=f"{mac} gone from h2's FDB")
    assert len(host_links(lab, "h1")) <= links_before
    assert not any(k for k, v in plugin_state(lab, "h1")["endpoints"].items()
                   if v.endswith(eth(lab, "h1", "c1")[0][:-3]) is False and "tmp1" in k)

    # docker network rm: the pool goes from the plugin's state; the cluster network stays
    docker(lab, "h2", "network", "rm", "appnet-h2", check=False)  # c2 still on it: refused
    docker(lab, "h1", "network", "create", "-d", "meshnet", "--ipam-driver", "meshnet",
           "scratch")  # no --subnet, no -o: name learned from Docker after the call
    wait_until(lambda: "scratch" in [n["name"] for n in c.get("/v1/networks")], 10,
               what="scratch named from Docker")
    docker(lab, "h1", "run", "--rm", "--network", "scratch", IMAGE, "true")
    pools = len(plugin_state(lab, "h1")["pools"])
    docker(lab, "h1", "network", "rm", "scratch")
    state = plugin_state(lab, "h1")
    assert len(state["pools"]) == pools - 1
    assert "scratch" not in [b["name"] for b in state["networks"].values()]

    # dockerd killed (-9) and started again: the restart-always container comes back with
    # its address, and the old endpoint is cleaned up (dockerd's own replay)
    docker(lab, "h2", "run", "-d", "--restart", "always", "--name", "keeper", "--ip",
           "10.61.0.99", "--network", NET["h2"], IMAGE, "sleep", "3600")
    old_eid = next(k for k, v in plugin_state(lab, "h2")["endpoints"].items()
                   if v == "appnet/10.61.0.99")
    assert dockerd.kill(lab.spec, "h2")
    dockerd.start(lab.spec, "h2")
    dockerd.wait(lab.spec, "h2")
    wait_until(lambda: "10.61.0.99/24" in sh(lab, "h2", "keeper", "ip addr show eth0"), 30,
               what="keeper back with its address")
    wait_until(lambda: "1 packets received" in sh(lab, "h1", "c1", "ping -c1 -W1 keeper"), 10,
               what="c1 pings keeper after dockerd's restart")
    wait_until(lambda: old_eid not in plugin_state(lab, "h2")["endpoints"], 10,
               what="the old endpoint released")
    assert list(plugin_state(lab, "h2")["endpoints"].values()).count("appnet/10.61.0.99") == 1
    docker(lab, "h2", "rm", "-f", "keeper")
    wait_until(lambda: "keeper" not in endpoints(lab, "h1"), 5, what="keeper gone")


def test_agent_restart_with_containers_up(lab):
    """Both agents restarted (SIGTERM, then kill -9) under a ping every 20 ms: the data
    plane does not depend on the agent; no Docker call is needed to carry on."""
    docker(lab, "h1", "run", "-d", "--name", "r1", "--network", NET["h1"], IMAGE,
           "sleep", "3600")
    docker(lab, "h2", "run", "-d", "--name", "r2", "--ip", "10.61.0.88", "--network",
           NET["h2"], IMAGE, "sleep", "3600")
    wait_until(lambda: "1 packets received" in sh(lab, "h1", "r1", "ping -c1 -W1 r2"), 10,
               what="r1 pings r2")
    for how in (signal.SIGTERM, signal.SIGKILL):
        ping = subprocess.Popen(
            ["docker", "-H", f"unix://{dockerd.docker_socket(lab.spec, 'h1')}", "exec", "r1",
             "ping", "-c", "150", "-i", "0.02", "-W", "1", "10.61.0.88"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(0.5)
        for h in ("h1", "h2"):
            import os

            os.kill(lab.agent_pid(h), how)
            wait_until(lambda h=h: not lab.agent_running(h), 15, what="agent stopped")
            lab.restart_agent(h)
        out, _ = ping.communicate(timeout=60)
        assert "packets transmitted" in out, out
        sent, received = map(int, re.search(r"(\d+) packets transmitted, (\d+) packets "
                                            r"received", out).groups())
        assert sent == 150 and received == 150, out
    # and the plugin carries on after the restart (state from docker.json)
    docker(lab, "h1", "run", "--rm", "--network", "appnet", IMAGE, "ping", "-c1", "-W2", "r2")
    docker(lab, "h1", "rm", "-f", "r1")
    docker(lab, "h2", "rm", "-f", "r2")


def test_boot_order_dockerd_up_fast_with_the_plugin_and_slow_without(lab):
    """dockerd restarted cleanly (SIGTERM) with restart-always containers on a meshnet
    network: with the agent's socket present its API answers within 2 s (median of three
    restarts: one restart on a shared 2-core box is noise) and the container runs again;
    with the plugin absent (the agent stopped, no socket) the same dockerd waits for it
    (the baseline: Docker's 1+2+4+8 s plugin lookup per network)."""
    docker(lab, "h1", "network", "rm", "second")  # fewer lookups for the slow baseline
    docker(lab, "h1", "run", "-d", "--restart", "always", "--name", "boot", "--network",
           "appnet", IMAGE, "sleep", "3600")
    docker(lab, "h2", "run", "-d", "--name", "peer", "--network", NET["h2"], IMAGE,
           "sleep", "3600")

    def restart_dockerd() -> float:
        dockerd.stop(lab.spec, "h1", everything=False)
        t0 = time.monotonic()
        dockerd.start(lab.spec, "h1")
        dockerd.wait(lab.spec, "h1", timeout=120)
        return time.monotonic() - t0

    def back(timeout: float = 30) -> None:
        wait_until(lambda: "1 packets received" in sh(lab, "h1", "boot", "ping -c1 -W1 peer"),
                   timeout, what="restart-always container back on its meshnet network")

    try:
        with_plugin = []
        for _ in range(3):
            with_plugin.append(restart_dockerd())
            back()
        # a boot: dockerd and the agent both down; the socket unit listens first, the agent
        # starts when dockerd connects (systemd-socket-activate: what meshnet.socket does)
        activated = []
        for _ in range(3):
            dockerd.stop(lab.spec, "h1", everything=False)
            lab.stop_agent("h1")
            lab.start_agent_socket_activated("h1")
            assert not os.path.exists(lab.spec.api_socket("h1"))  # only the socket: no agent
            activated.append(restart_dockerd())
            back()
        assert "(from systemd)" in agent_log(lab, "h1")
        dockerd.stop(lab.spec, "h1", everything=False)  # its containers released cleanly
        lab.stop_agent("h1")
        os.unlink(dockerd.plugin_socket(lab.spec, "h1"))  # the plugin absent: no socket
        try:
            without = restart_dockerd()
        finally:
            lab.restart_agent("h1")
        fmt = ", ".join
        print(f"dockerd API up: {fmt(f'{t:.2f}' for t in with_plugin)} s with the plugin, "
              f"{fmt(f'{t:.2f}' for t in activated)} s with the socket-activated agent, "
              f"{without:.2f} s without")
        assert sorted(with_plugin)[1] < 2.0, with_plugin
        assert sorted(activated)[1] < 2.0, activated
        assert without > 10 * sorted(with_plugin)[1]
        # the plugin is back: the container comes back on the next restart
        restart_dockerd()
        back(20)
    finally:
        if dockerd.pid(lab.spec, "h1") is None:
            dockerd.start(lab.spec, "h1")
            dockerd.wait(lab.spec, "h1", timeout=120)
        if not lab.agent_running("h1"):
            lab.restart_agent("h1")
        docker(lab, "h1", "rm", "-f", "boot", check=False)
        docker(lab, "h2", "rm", "-f", "peer", check=False)


def test_cli_lab_exec_sets_docker_host(lab):
    docker(lab, "h2", "run", "-d", "--name", "cli", "--network", NET["h2"], IMAGE,
           "sleep", "3600")
    r = subprocess.run([*MESHNET, "lab", "exec", "--name", lab.spec.name, "h2", "--", "sh",
                        "-c", "echo $DOCKER_HOST; docker ps --format '{{.Names}}'"],
                       capture_output=True, text=True, timeout=30)
    assert r.stdout.splitlines()[0] == f"unix://{dockerd.docker_socket(lab.spec, 'h2')}"
    names = docker(lab, "h2", "ps", "--format", "{{.Names}}").splitlines()
    assert r.stdout.splitlines()[1:] == names == ["cli"]  # h2's dockerd
    docker(lab, "h2", "rm", "-f", "cli")


def test_removing_every_container_and_network_leaves_nothing(lab):
    """Last: everything a user made through Docker removed -> no veth, endpoint, FDB or
    neighbour entry, address, pool or plugin record is left on either host."""
    for h in ("h1", "h2"):
        ids = docker(lab, h, "ps", "-aq").split()
        if ids:
            docker(lab, h, "rm", "-f", *ids)
        for net in docker(lab, h, "network", "ls", "--filter", "driver=meshnet", "--format",
                          "{{.Name}}").split():
            docker(lab, h, "network", "rm", net)
    for h in ("h1", "h2"):
        wait_until(lambda h=h: not [e for e in api(lab, h).get("/v1/endpoints")
                                    if e["netns"].startswith("docker:")], 10,
                   what=f"no Docker endpoint known on {h}")
        assert host_links(lab, h) == [], host_links(lab, h)
        state = plugin_state(lab, h)
        assert state["endpoints"] == {} and state["joined"] == {}, state
        assert state["networks"] == {} and state["pools"] == {}, state
        for net in api(lab, h).get("/v1/networks"):  # sandboxes go with their endpoints
            sandbox = f"{lab.spec.host_ns(h)}-ov-{net['vni']:06x}"
            wait_until(lambda s=sandbox: not os.path.exists(f"/run/netns/{s}"), 10,
                       what=f"{sandbox} removed")
