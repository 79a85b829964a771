"""Build, inspect and tear down a lab (see the package docstring for the layout)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyroute2.iproute.linux import IPRoute

from meshnet import netns
from meshnet.errors import Conflict, NotFound, UserError
from meshnet.lab.topology import RUN_DIR, UNDERLAY, LabSpec, check_lab_name
from meshnet.model import check_name

RESOLVER_HOST = "h253"  #: the lab's "outside" DNS server (dnsmasq), not an agent host
RESOLVER_ADDR = "192.0.2.253"
BIG_TXT = ",".join(f'"{chr(97 + i) * 250}"' for i in range(17))  #: a 4.3 KB TXT answer

log = logging.getLogger("meshnet.lab")
Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


#: the kernel's neighbour-table limits: one table for every namespace of the machine
NEIGH_SYSCTL = "/proc/sys/net/{family}/neigh/default/gc_thresh{n}"


def neighbour_need(hosts: int) -> int:
    """Neighbour entries a lab of ``hosts`` hosts may hold at once, with room.

    Every host namespace resolves every other host (and the resolver and bare hosts) on
    the underlay, and every sandbox and container its local peers: about hosts^2 on the
    underlay alone. Past the kernel's default hard limit (gc_thresh3 = 1024, for the whole
    machine) new entries fail with ENOBUFS, so at ~30 hosts gossip packets start to be
    dropped: members flap and table changes crawl (issue 17).
    """
    return 4 * (hosts + 3) ** 2 + 4096


def ensure_neighbour_capacity(entries: int) -> int:
    """Raise (never lower) gc_thresh3 to ``entries`` (gc_thresh2 to half, gc_thresh1 to a
    quarter) for IPv4 and IPv6; returns the new hard limit, or 0 if nothing changed."""
    changed = 0
    for family in ("ipv4", "ipv6"):
        for n, want in ((3, entries), (2, entries // 2), (1, entries // 4)):
            path = Path(NEIGH_SYSCTL.format(family=family, n=n))
            try:
                if int(path.read_text()) < want:
                    path.write_text(str(want))
                    changed = entries
            except (OSError, ValueError):
                pass  # no IPv6, or not allowed: the lab still works at small sizes
    return changed


@dataclass
class Lab:
    spec: LabSpec

    # --- loading ------------------------------------------------------------------

    @classmethod
    def load(cls, name: str) -> Lab:
        check_lab_name(name)
        path = RUN_DIR / name / "lab.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise NotFound(f"no lab named {name} is up (start one with 'meshnet lab up')") from None
        except ValueError:
            raise UserError(f"lab {name}: {path} is corrupt; 'meshnet lab down --name {name}'") from None
        return cls(LabSpec(**data))

    @staticmethod
    def names() -> list[str]:
        if not RUN_DIR.is_dir():
            return []
        return sorted(p.parent.name for p in RUN_DIR.glob("*/lab.json"))

    def check_host(self, host: str) -> str:
        if host not in self.spec.host_names:
            raise NotFound(
                f"lab {self.spec.name} has no host {host!r} (hosts: "
                f"{', '.join(self.spec.host_names)})"
            )
        return host

    # --- up -----------------------------------------------------------------------

    def up(self, progress: Progress = _quiet, agent_args: Sequence[str] = ()) -> None:
        spec = self.spec
        if (spec.state_dir / "lab.json").exists() or netns.exists(spec.underlay_ns):
            raise Conflict(f"lab {spec.name} is already up ('meshnet lab down --name "
                           f"{spec.name}' first)")
        spec.state_dir.mkdir(parents=True, exist_ok=True)
        (spec.state_dir / "lab.json").write_text(json.dumps(spec.to_dict()))
        (spec.state_dir / "agent-args.json").write_text(json.dumps(list(agent_args)))
        raised = ensure_neighbour_capacity(neighbour_need(len(spec.host_names)))
        if raised:
            progress(f"raised the kernel's neighbour table limits (gc_thresh1/2/3, shared by "
                     f"every namespace on this machine) to {raised}")
        try:
            progress(f"underlay {UNDERLAY} (MTU {spec.underlay_mtu}) in netns {spec.underlay_ns}")
            self._build_underlay()
            with netns.ipr(spec.underlay_ns) as ul:
                for host in spec.host_names:
                    progress(f"host {host}: netns {spec.host_ns(host)}, {spec.host_addr(host)}")
                    self._build_host(host, ul)
            if self._start_resolver():
                progress(f"outside resolver (dnsmasq) at {RESOLVER_ADDR}: example.com, "
                         "*.lab.example")
            for host in spec.host_names:
                self._start_agent(host, agent_args)
            for host in spec.host_names:
                self._wait_agent(host)
                progress(f"host {host}: agent up, API {spec.api_socket(host)}")
            if spec.docker:
                self._start_dockerds(progress)
        except BaseException:
            self.down()
            raise

    def _start_dockerds(self, progress: Progress) -> None:
        from meshnet.lab import dockerd

        for host in self.spec.host_names:
            dockerd.start(self.spec, host)
        for host in self.spec.host_names:
            dockerd.wait(self.spec, host)
            dockerd.import_image(self.spec, host)
            progress(f"host {host}: dockerd up, DOCKER_HOST=unix://"
                     f"{dockerd.docker_socket(self.spec, host)}, image {dockerd.IMAGE}")

    def _stop_dockerds(self) -> None:
        from meshnet.lab import dockerd

        for host in self.spec.host_names:
            if dockerd.pid(self.spec, host) is None:
                continue
            ids = dockerd.docker(self.spec, host, "ps", "-aq").stdout.decode().split()
            if ids:
                dockerd.docker(self.spec, host, "rm", "-f", *ids)
        for host in self.spec.host_names:
            dockerd.stop(self.spec, host)

    def _build_underlay(self) -> None:
        spec = self.spec
        netns.create(spec.underlay_ns)
        with netns.ipr(spec.underlay_ns) as ip:
            ip.link("set", index=ip.link_lookup(ifname="lo")[0], state="up")
            ip.link("add", ifname="br0", kind="bridge", mtu=spec.underlay_mtu)
            ip.link("set", index=ip.link_lookup(ifname="br0")[0], state="up")

    def _build_host(self, host: str, ul: IPRoute | None = None) -> None:
        spec = self.spec
        ns = spec.host_ns(host)
        netns.create(ns)
        with netns.ipr(ns) as ip:
            ip.link("add", ifname="eth0", kind="veth", mtu=spec.underlay_mtu,
                    peer={"ifname": host, "net_ns_fd": spec.underlay_ns,
                          "mtu": spec.underlay_mtu})
            own = ul is None
            ul = ul or netns.ipr(spec.underlay_ns)
            try:
                idx = ul.link_lookup(ifname=host)[0]
                ul.link("set", index=idx, master=ul.link_lookup(ifname="br0")[0], state="up")
            finally:
                if own:
                    ul.close()
            ip.link("set", index=1, state="up")  # lo is always index 1
            eth0 = ip.link_lookup(ifname="eth0")[0]
            ip.addr("add", index=eth0, address=spec.host_addr(host),
                    prefixlen=UNDERLAY.prefixlen)
            ip.link("set", index=eth0, state="up")

    def add_bare_host(self, host: str) -> str:
        """Another host on the underlay with no agent (for serf peers, outside servers).

        ``host`` is ``hK``; it gets 192.0.2.K. Removed by ``down`` like every lab host.
        """
        if not host.startswith("h") or not host[1:].isdigit() or not 1 <= int(host[1:]) <= 254:
            raise UserError(f"invalid host name {host!r}: use hK with K in 1..254")
        if netns.exists(self.spec.host_ns(host)):
            raise Conflict(f"host {host} already exists in lab {self.spec.name}")
        with netns.ipr(self.spec.underlay_ns) as ul:
            self._build_host(host, ul)
        return self.spec.host_ns(host)

    def _start_resolver(self) -> bool:
        """A DNS server "outside" the cluster, on the underlay: the agents' upstream.

        Labs never forward to the machine's own resolver. Answers example.com and every
        name under lab.example with its own address; everything else is NXDOMAIN.
        """
        dnsmasq = shutil.which("dnsmasq")
        if not dnsmasq:
            return False
        ns = self.add_bare_host(RESOLVER_HOST)
        logf = open(self.spec.state_dir / "resolver.log", "ab")
        subprocess.Popen(
            ["ip", "netns", "exec", ns, dnsmasq, "--no-daemon", "--no-resolv", "--no-hosts",
             "--bind-interfaces", f"--listen-address={RESOLVER_ADDR}", "--log-queries",
             f"--pid-file={self.spec.state_dir / 'resolver.pid'}", "--user=root",
             f"--address=/example.com/{RESOLVER_ADDR}", f"--address=/lab.example/{RESOLVER_ADDR}",
             "--address=/#/", f"--txt-record=big.lab.example,{BIG_TXT}"],
            stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, start_new_session=True)
        logf.close()
        return True

    def agent_command(self, host: str, extra: Sequence[str] = ()) -> list[str]:
        spec = self.spec
        cmd = [
            sys.executable, "-m", "meshnet", "agent",
            "--node", host,
            "--bind", spec.host_addr(host),
            "--api", spec.api_socket(host),
            "--state-dir", str(spec.state_dir / host),
            "--underlay-mtu", str(spec.underlay_mtu),
            "--netns-prefix", f"{spec.host_ns(host)}-",
        ]
        if "--dns-upstream" not in extra:
            cmd += ["--dns-upstream", RESOLVER_ADDR]
        if spec.docker:
            from meshnet.lab import dockerd

            cmd += dockerd.agent_args(spec, host)
        for other in spec.host_names:  # every other host, as a retry-join list
            if other != host:
                cmd += ["--join", spec.host_addr(other)]
        return cmd + list(extra)

    def _start_agent(self, host: str, extra: Sequence[str] = (),
                     env: dict[str, str] | None = None, activate_on: str = "") -> int:
        """``activate_on``: a socket path to listen on first, starting the agent only when
        someone connects, and handing it the socket (as systemd's socket units do:
        ``systemd-socket-activate``)."""
        spec = self.spec
        sock = Path(spec.api_socket(host))
        sock.unlink(missing_ok=True)
        logf = open(spec.state_dir / f"{host}.log", "ab")
        ns = spec.host_ns(host)
        cmd = self.agent_command(host, extra)
        if activate_on:
            Path(activate_on).unlink(missing_ok=True)
            cmd = ["systemd-socket-activate", "-l", activate_on, "--", *cmd]
        # not `ip netns exec`: that gives the agent a mount namespace of its own, and the
        # sandbox namespaces it creates under /run/netns would be invisible outside it
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=logf,
            stderr=logf, start_new_session=True, preexec_fn=lambda: netns.enter(ns),
            env={**os.environ, **(env or {})},
        )
        logf.close()
        (spec.state_dir / f"{host}.pid").write_text(str(proc.pid))
        return proc.pid

    def _wait_agent(self, host: str, timeout: float = 20.0) -> None:
        from meshnet.api.client import ApiClient

        client = ApiClient(self.spec.api_socket(host), timeout=2.0)
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.get("/v1/status")
                return
            except UserError:
                if time.monotonic() > deadline or not self.agent_running(host):
                    tail = self.log_tail(host)
                    raise UserError(f"agent on {host} did not come up: {tail}") from None
                time.sleep(0.05)

    def agent_pid(self, host: str) -> int | None:
        try:
            return int((self.spec.state_dir / f"{host}.pid").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def agent_running(self, host: str) -> bool:
        pid = self.agent_pid(host)
        return pid is not None and netns._alive(pid)

    def log_tail(self, host: str) -> str:
        try:
            lines = (self.spec.state_dir / f"{host}.log").read_text().strip().splitlines()
        except FileNotFoundError:
            return "no log"
        return lines[-1] if lines else "empty log"

    def saved_agent_args(self) -> list[str]:
        """The ``--agent-arg`` list the lab was brought up with."""
        try:
            args = json.loads((self.spec.state_dir / "agent-args.json").read_text())
        except (OSError, ValueError):
            return []
        return [str(a) for a in args] if isinstance(args, list) else []

    def restart_agent(self, host: str, extra: Sequence[str] | None = None,
                      env: dict[str, str] | None = None, wait: bool = True) -> None:
        """Start the host's agent again (after a crash, a kill or ``stop_agent``) with the
        lab's agent arguments (or ``extra``) and wait for its API."""
        self.check_host(host)
        if self.agent_running(host):
            raise Conflict(f"agent on {host} is running")
        self._start_agent(host, self.saved_agent_args() if extra is None else extra, env)
        if wait:
            self._wait_agent(host)

    def start_agent_socket_activated(self, host: str) -> None:
        """The host's agent as a systemd socket unit would start it: the Docker plugin's
        socket listens now; the agent starts at the first connection (lab --docker)."""
        from meshnet.lab import dockerd

        self.check_host(host)
        if self.agent_running(host):
            raise Conflict(f"agent on {host} is running")
        path = dockerd.plugin_socket(self.spec, host)
        self._start_agent(host, self.saved_agent_args(), activate_on=path)
        deadline = time.monotonic() + 10
        while not os.path.exists(path):
            if time.monotonic() > deadline:
                raise UserError(f"systemd-socket-activate did not listen on {path}")
            time.sleep(0.02)

    def stop_agent(self, host: str, timeout: float = 15.0) -> bool:
        """SIGTERM the host's agent and wait for it to exit (to the agent a restart: the
        kernel state stays and traffic keeps flowing). False if it was not running."""
        self.check_host(host)
        pid = self.agent_pid(host)
        if pid is None or not self.agent_running(host):
            return False
        netns.kill_pids([pid], grace=timeout)
        return True

    # --- containers ---------------------------------------------------------------

    def containers(self) -> dict[str, dict[str, Any]]:
        out = {}
        for path in sorted(self.spec.state_dir.glob("ctr-*.json")):
            try:
                out[path.stem[4:]] = json.loads(path.read_text())
            except ValueError:
                continue
        return out

    def run(self, host: str, name: str, command: Sequence[str],
            attach: dict[str, Any] | None = None) -> dict[str, Any]:
        """Start COMMAND in a new namespace L-NAME on HOST, attached through HOST's agent."""
        self.check_host(host)
        check_name(name, "container name")
        if not command:
            raise UserError("nothing to run: give a command after --")
        ns = self.spec.container_ns(name)
        if netns.exists(ns) or name in self.containers():
            raise Conflict(f"container {name} already exists in lab {self.spec.name}")
        netns.create(ns)
        try:
            with IPRoute(netns=ns) as ip:
                ip.link("set", index=ip.link_lookup(ifname="lo")[0], state="up")
            endpoint = None
            if attach is not None:
                from meshnet.api.client import ApiClient

                endpoint = ApiClient(self.spec.api_socket(host)).post(
                    "/v1/endpoints", {"netns": ns, **attach})
            logf = open(self.spec.state_dir / f"{name}.log", "ab")
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, *command], stdin=subprocess.DEVNULL,
                stdout=logf, stderr=logf, start_new_session=True,
            )
            logf.close()
        except BaseException:
            netns.remove(ns)
            raise
        record = {"name": name, "host": host, "netns": ns, "pid": proc.pid,
                  "command": list(command), "endpoint": endpoint}
        (self.spec.state_dir / f"ctr-{name}.json").write_text(json.dumps(record))
        return record

    # --- down ---------------------------------------------------------------------

    def down(self) -> list[str]:
        """Remove every namespace, link and process of this lab. Safe to repeat."""
        spec = self.spec
        removed = []
        self._stop_dockerds()  # first: their containers' Leave/DeleteEndpoint reach the agents
        pids = [p for p in (self.agent_pid(h) for h in spec.host_names) if p]
        netns.kill_pids(pids, grace=3.0)
        names = [n for n in netns.list_netns() if n.startswith(spec.ns_prefix)]
        names += [c["netns"] for c in self.containers().values() if "netns" in c]
        # containers first, then agent sandboxes, hosts, and the underlay last
        names = sorted(set(names), key=lambda n: (n.startswith(spec.ns_prefix),
                                                  n == spec.underlay_ns, n))
        for name in names:
            if netns.remove(name):
                removed.append(name)
        shutil.rmtree(spec.state_dir, ignore_errors=True)
        return removed

    # --- ls -----------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        spec = self.spec
        return {
            **spec.to_dict(),
            "hosts": [
                {"name": h, "address": spec.host_addr(h), "netns": spec.host_ns(h),
                 "api": spec.api_socket(h), "agent": "up" if self.agent_running(h) else "down"}
                for h in spec.host_names
            ],
            "containers": [
                {"name": n, "host": c.get("host"), "netns": c.get("netns"),
                 "running": netns._alive(c["pid"]) if c.get("pid") else False}
                for n, c in self.containers().items()
            ],
        }
