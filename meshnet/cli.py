"""The ``meshnet`` command line.

Every user error (a bad flag, a bad value, an agent refusing a request) prints one line to
stderr and exits 2, having changed nothing. Commands that talk to an agent take
``--api SOCKET`` (or ``MESHNET_API``) and ``--json``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from meshnet import __version__
from meshnet.clitools import Parser, emit, table
from meshnet.errors import UserError

DEFAULT_API = "/run/meshnet/api.sock"


def _client(args: argparse.Namespace) -> Any:
    from meshnet.api.client import ApiClient

    return ApiClient(args.api or os.environ.get("MESHNET_API") or DEFAULT_API)


# --- agent-facing commands --------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> None:
    data = _client(args).get("/v1/status")

    def text(d: dict[str, Any]) -> str:
        lines = [
            f"node:       {d['node']} ({d['state']}, pid {d['pid']}, up {d['uptime']:.0f}s)",
            f"advertise:  {d['advertise']}   gossip {d['gossip']['bind']} "
            f"({d['gossip']['preset']})",
            f"members:    {', '.join(f'{v} {k}' for k, v in d['members'].items())}",
            f"networks:   {d['networks']}   endpoints: {d['endpoints']}   "
            f"services: {d['services']}",
        ]
        if "view" in d:
            v = d["view"]
            copy = (f"; durable copy of {v['copy_rows']} rows, {v['copy_age']:.0f}s old"
                    if v.get("copy_rows") else "; no durable copy")
            lines.append(f"view:       {v['source']}{copy}")
        if "dataplane" in d:
            dp = d["dataplane"]
            ov = dp["overlay"]
            lines.append(f"dataplane:  vtep {dp['vtep']}, underlay MTU {dp['underlay_mtu']}; "
                         f"overlay {ov['syncs']} syncs, {ov['ops_applied']} changes, "
                         f"{ov['errors']} errors")
        if "lb" in d:
            lb = d["lb"]
            ipvs = "available" if lb["ipvs"]["available"] else \
                f"unavailable ({lb['ipvs']['reason']})"
            lines.append(f"lb:         {lb['backend']} backend; IPVS {ipvs}")
            b = lb.get("backends", {})
            lines.append(f"            {lb['virtual_services']} virtual services, tasks "
                         f"{b.get('healthy', 0)} healthy / {b.get('unhealthy', 0)} unhealthy, "
                         f"published: {', '.join(lb['published']) or 'none'}")
        return "\n".join(lines)

    emit(args, data, text)


def cmd_leave(args: argparse.Namespace) -> None:
    data = _client(args).post("/v1/leave", {})
    emit(args, data, lambda d: f"{d['node']} left the cluster" + (
        "" if d["left"] else " (not confirmed by a peer)") + "; the agent is stopping")


def cmd_members(args: argparse.Namespace) -> None:
    data = _client(args).get("/v1/members")
    emit(args, data, lambda d: table(
        [(m["name"], f"{m['addr']}:{m['port']}",
          m["state"] + (" (agent down, host answering)" if m.get("host") == "answering" else ""),
          m["incarnation"],
          ",".join(f"{k}={v}" for k, v in sorted(m["tags"].items()))) for m in d],
        ("NAME", "ADDRESS", "STATE", "INC", "TAGS")))


def cmd_metrics(args: argparse.Namespace) -> None:
    data = _client(args).get("/v1/metrics")

    def flat(d: Any, prefix: str = "") -> list[str]:
        if not isinstance(d, dict):
            return [f"{prefix} {d}"]
        out = []
        for k in sorted(d):
            out += flat(d[k], f"{prefix}.{k}" if prefix else str(k))
        return out
    emit(args, data, lambda d: "\n".join(flat(d)))


def _network_rows(nets: list[dict[str, Any]]) -> str:
    def extra(n: dict[str, Any]) -> str:
        if n.get("driver") != "macvlan":
            return "-"
        parts = [f"gateway {n['gateway_ip']}"]
        parts += [f"range {n['ip_range']}"] if n.get("ip_range") else []
        parts += [f"parent {n['parent']}"] if n.get("parent") else []
        return ", ".join(parts)
    return table(
        [(n["name"], n.get("driver", "overlay"), n["vni"], n["subnet"], n["mtu"] or "auto",
          "yes" if n["internal"] else "no", extra(n)) for n in nets],
        ("NAME", "DRIVER", "VNI", "SUBNET", "MTU", "INTERNAL", "MACVLAN"))


def cmd_network_create(args: argparse.Namespace) -> None:
    from meshnet.model import Network, parse_cidr

    parse_cidr(args.subnet)  # fail before talking to the agent
    body: dict[str, Any] = {"name": args.name, "subnet": args.subnet, "internal": args.internal}
    if args.vni is not None:
        body["vni"] = args.vni
    if args.mtu is not None:
        body["mtu"] = args.mtu
    for key in ("driver", "gateway", "ip_range", "parent", "macvlan_mode"):
        if getattr(args, key):
            body[key] = getattr(args, key)
    local = {k: v for k, v in body.items() if k not in ("gateway",)}
    Network(**{"vni": 1, "mtu": 0, **local, "gateway_ip": body.get("gateway", "")})  # validate
    data = _client(args).post("/v1/networks", body)
    emit(args, data, lambda d: f"network {d['name']} created (vni {d['vni']}, {d['subnet']})")


def cmd_network_ls(args: argparse.Namespace) -> None:
    emit(args, _client(args).get("/v1/networks"), _network_rows)


def cmd_network_rm(args: argparse.Namespace) -> None:
    data = _client(args).delete(f"/v1/networks/{args.name}")
    emit(args, data, lambda d: f"network {d['removed']} removed")


def _endpoint_rows(eps: list[dict[str, Any]]) -> str:
    return table(
        [(e["name"], e["network"], e["ip"], e["mac"], e["host"], e["ifname"],
          e["service"] or "-", ",".join(e["aliases"]) or "-") for e in eps],
        ("NAME", "NETWORK", "IP", "MAC", "HOST", "IF", "SERVICE", "ALIASES"))


def cmd_attach(args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"netns": args.netns, "network": args.network,
                            "aliases": args.alias or []}
    for key in ("name", "service", "ip"):
        if getattr(args, key):
            body[key] = getattr(args, key)
    data = _client(args).post("/v1/endpoints", body)
    emit(args, data, lambda e: f"attached {e['name']} to {e['network']}: {e['ifname']} "
                                f"{e['ip']} ({e['mac']})")


def cmd_detach(args: argparse.Namespace) -> None:
    from urllib.parse import urlencode

    q = {"netns": args.netns, **({"network": args.network} if args.network else {})}
    data = _client(args).delete(f"/v1/endpoints?{urlencode(q)}")
    emit(args, data, lambda eps: "\n".join(f"detached {e['name']} from {e['network']}"
                                            for e in eps))


def cmd_endpoint_ls(args: argparse.Namespace) -> None:
    emit(args, _client(args).get("/v1/endpoints"), _endpoint_rows)


def cmd_service_create(args: argparse.Namespace) -> None:
    from meshnet.services import parse_health

    body: dict[str, Any] = {"name": args.name, "network": args.network, "mode": args.mode,
                            "ports": args.port or [], "affinity": args.affinity}
    health: dict[str, Any] = parse_health(args.health) if args.health else {}
    for key in ("interval", "timeout", "retries"):
        value = getattr(args, f"health_{key}")
        if value is not None:
            health[key] = value
    if health:
        health.setdefault("kind", "tcp")
        body["health"] = health
    if args.vip:
        body["vip"] = args.vip
    data = _client(args).post("/v1/services", body)
    emit(args, data, lambda s: f"service {s['name']} created on {s['network']} "
                                f"({s['mode']}{', VIP ' + s['vip'] if s['vip'] else ''})")


def cmd_service_ls(args: argparse.Namespace) -> None:
    emit(args, _client(args).get("/v1/services"), lambda svcs: table(
        [(s["name"], s["network"], s["mode"], s["vip"] or "-",
          ",".join(f"{p['port']}/{p['protocol']}" for p in s["ports"]) or "-",
          s["health"]["kind"], s["affinity"]) for s in svcs],
        ("NAME", "NETWORK", "MODE", "VIP", "PORTS", "HEALTH", "AFFINITY")))


def cmd_service_rm(args: argparse.Namespace) -> None:
    data = _client(args).delete(f"/v1/services/{args.name}")
    emit(args, data, lambda d: f"service {d['removed']} removed")


def cmd_publish(args: argparse.Namespace) -> None:
    from meshnet.services import parse_publish

    pub, target, proto = parse_publish(args.mapping)
    body: dict[str, Any] = {"published": pub, "target": target, "protocol": proto,
                            "mode": args.mode, "local_only": args.local_only}
    if args.service:
        body["service"] = args.service
    data = _client(args).post("/v1/published", body)
    emit(args, data, lambda p: f"published {p['published']}/{p['protocol']} -> "
                                f"{p['service']}:{p['target']} ({p['mode']}"
                                f"{', local only' if p['local_only'] else ''})")


def cmd_unpublish(args: argparse.Namespace) -> None:
    key = args.port if "/" in args.port else f"{args.port}/tcp"
    data = _client(args).delete(f"/v1/published/{key.replace('/', '-')}")
    emit(args, data, lambda p: f"unpublished {p['published']}/{p['protocol']}")


def cmd_trace(args: argparse.Namespace) -> None:
    """Exit status 1 when a hop is broken (as ping), after printing the report."""
    from meshnet.trace.model import TraceRequest, parse_destination
    from meshnet.trace.render import render

    if len(args.path) != (1 if args.from_host else 2):
        raise UserError("usage: meshnet trace SRC DST[:PORT][/tcp|/udp], or "
                        "meshnet trace --from HOST [ADDR]:PORT[/tcp|/udp]")
    host, port, proto = parse_destination(args.path[-1])
    req = TraceRequest(dst=host, src="" if args.from_host else args.path[0], port=port,
                       proto=proto, from_host=args.from_host or "",
                       pcap=os.path.abspath(args.pcap) if args.pcap else "")
    data = _client(args).post("/v1/trace", req.to_body())
    emit(args, data, render)
    if not data.get("verdict", {}).get("ok"):
        sys.exit(1)


# --- local commands ----------------------------------------------------------------------


def cmd_agent(args: argparse.Namespace) -> None:
    import asyncio

    from meshnet.agent import Agent
    from meshnet.config import load_config
    from meshnet.logs import setup_logging
    from meshnet.systemd import Notifier

    overrides = {
        "node": args.node, "bind": args.bind, "advertise": args.advertise,
        "join": args.join, "api": args.api, "encrypt_key": args.encrypt_key, "lb": args.lb,
        "runtime": args.runtime, "metrics": args.metrics, "gossip_preset": args.gossip_preset,
        "underlay_mtu": args.underlay_mtu, "log_level": args.log_level,
        "dns_upstreams": args.dns_upstream, "state_dir": args.state_dir,
        "netns_prefix": args.netns_prefix, "gwbridge_subnet": args.gwbridge_subnet,
        "docker_socket": args.docker_socket, "leave_on_terminate": args.leave_on_terminate,
        "docker_plugin_socket": args.docker_plugin_socket,
        "macvlan_parents": args.macvlan_parent, "macvlan_shim": args.macvlan_shim,
        "tombstone_lifetime": args.tombstone_lifetime,
    }
    config = load_config(args.config, overrides)
    setup_logging(config.node_name, config.log_level)
    notifier = Notifier(os.environ.get("NOTIFY_SOCKET"), os.environ.get("WATCHDOG_USEC"))
    from meshnet.api.server import fronts

    asyncio.run(Agent(config, notifier=notifier).run(fronts(config)))


def cmd_cleanup(args: argparse.Namespace) -> None:
    from meshnet.cleanup import cleanup_host

    removed = cleanup_host()
    emit(args, removed, lambda d: "\n".join(f"removed {k}: {', '.join(v)}" for k, v in d.items()
                                             if v) or "nothing to remove")


def cmd_keys(args: argparse.Namespace) -> None:
    client = _client(args)
    if args.keys_cmd == "list":
        data = client.get("/v1/keys")
    else:
        data = client.post("/v1/keys", {"op": args.keys_cmd, "key": args.key})

    def text(d: dict[str, Any]) -> str:
        if not d["encrypted"]:
            return "gossip encryption is off"
        return "\n".join(f"{k}{'  (primary)' if k == d['primary'] else ''}" for k in d["keys"])
    emit(args, data, text)


def cmd_install_unit(args: argparse.Namespace) -> None:
    from pathlib import Path

    from meshnet.install import install_unit

    done = install_unit(Path(args.unit_dir), Path(args.config_dir), force=args.force,
                        docker=args.docker)
    units = "meshnet.socket meshnet" if args.docker else "meshnet"
    emit(args, done, lambda d: "\n".join(f"{path}: {what}" for path, what in d.items())
         + f"\nthen: systemctl daemon-reload && systemctl enable --now {units}")


def cmd_keys_generate(args: argparse.Namespace) -> None:
    # The keyring's generator (os.urandom), not meshnet.keys: the model imports that
    # module, and the model stays sans-IO.
    from meshnet.gossip.security import generate_key

    print(generate_key())


# --- parser -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = Parser(add_help=False)
    common.add_argument("--api", metavar="SOCKET", help="agent API socket (env MESHNET_API)")
    common.add_argument("--json", action="store_true", help="machine-readable output")

    p = Parser(prog="meshnet", description="meshnet: container network data plane",
                epilog="--api and --json may come before the command or after it.")
    p.add_argument("--version", action="version", version=f"meshnet {__version__}")
    p.add_argument("--api", dest="global_api", metavar="SOCKET",
                   help="agent API socket, for the commands that talk to an agent")
    p.add_argument("--json", dest="global_json", action="store_true",
                   help="machine-readable output, for the commands that print")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    a = sub.add_parser("agent", help="run the per-host agent")
    a.add_argument("--config", metavar="FILE",
                   help="TOML config; flags override it (default: /etc/meshnet/config.toml)")
    a.add_argument("--node", metavar="NAME", help="node name in the cluster (default: hostname)")
    a.add_argument("--bind", metavar="ADDR[:PORT]",
                   help="gossip address and port, UDP and TCP (default: 0.0.0.0:7946)")
    a.add_argument("--advertise", metavar="ADDR",
                   help="address peers reach us at and VXLAN tunnels end on (default: the bind address, or with 0.0.0.0 the source address of the default route)")
    a.add_argument("--join", metavar="ADDR[:PORT]", action="append",
                   help="a member to join, retried until one answers (repeatable)")
    a.add_argument("--api", metavar="SOCKET",
                   help=f"unix socket to serve the API on (default: {DEFAULT_API})")
    a.add_argument("--encrypt-key", metavar="BASE64",
                   help="gossip encryption key (serf keygen / meshnet keys generate)")
    a.add_argument("--lb", choices=("auto", "ipvs", "iptables", "nftables"),
                   help="load-balancing backend (default: auto = iptables; ipvs is unverified "
                        "against a kernel with ip_vs)")
    a.add_argument("--runtime", choices=("netns", "docker"),
                   help="what containers are: named network namespaces or Docker (default: netns)")
    a.add_argument("--metrics", metavar="ADDR:PORT",
                   help="serve Prometheus metrics over HTTP here (default: off)")
    a.add_argument("--gossip-preset", choices=("swift", "lan", "fast"),
                   help="gossip timings: swift = detect in ~1.5 s at serf's bandwidth; lan = "
                        "memberlist/serf defaults; fast = probe 5x a second (default: swift)")
    a.add_argument("--underlay-mtu", type=int, metavar="N",
                   help="MTU of the underlay (default: that of the advertise address's interface)")
    a.add_argument("--dns-upstream", metavar="ADDR[:PORT]", action="append",
                   help="resolver for names outside the cluster (repeatable; default: resolv.conf)")
    a.add_argument("--state-dir", metavar="DIR",
                   help="where the durable tables live (default: /var/lib/meshnet)")
    a.add_argument("--netns-prefix", metavar="PREFIX",
                   help="prefix of the namespaces it creates (default: mn-)")
    a.add_argument("--gwbridge-subnet", metavar="CIDR",
                   help="egress bridge subnet, host-local (default: 198.18.0.0/16)")
    a.add_argument("--docker-socket", metavar="PATH", help="Docker API socket (--runtime docker)")
    a.add_argument("--docker-plugin-socket", metavar="PATH",
                   help="socket of meshnet's Docker network and IPAM plugin, served with "
                        "--runtime docker (default: /run/docker/plugins/meshnet.sock; "
                        "empty: no plugin)")
    a.add_argument("--macvlan-parent", metavar="NET=IFACE", action="append",
                   help="this host's parent interface for macvlan network NET (repeatable)")
    a.add_argument("--macvlan-shim", action="store_true", default=None,
                   help="let this host reach its own macvlan containers (a macvlan shim on "
                        "the parent per network, with an address of the network)")
    a.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                   help="log verbosity (default: info)")
    a.add_argument("--tombstone-lifetime", type=int, metavar="SECONDS",
                   help="how long deletes are remembered (default 300); a partition or an "
                        "agent away for longer may bring back what was deleted meanwhile")
    a.add_argument("--leave-on-terminate", action="store_true", default=None,
                   help="SIGTERM leaves the cluster (default: SIGTERM is a restart; "
                        "decommission with 'meshnet leave')")
    a.set_defaults(func=cmd_agent)

    sub.add_parser("status", parents=[common], help="this agent's state").set_defaults(
        func=cmd_status)
    sub.add_parser("leave", parents=[common],
                   help="decommission this node: leave the cluster (its entries are removed "
                        "everywhere), then stop the agent").set_defaults(func=cmd_leave)
    sub.add_parser("members", parents=[common], help="cluster members").set_defaults(
        func=cmd_members)
    sub.add_parser("metrics", parents=[common],
                   help="this agent's counters (the Prometheus page's, as JSON with --json)"
                   ).set_defaults(func=cmd_metrics)

    net = sub.add_parser("network", help="overlay networks").add_subparsers(
        dest="network_cmd", required=True, parser_class=Parser)
    nc = net.add_parser("create", parents=[common],
                        help="create a network (overlay, or macvlan on each host's LAN)")
    nc.add_argument("name", help="network name")
    nc.add_argument("--subnet", required=True, metavar="CIDR", help="IPv4 subnet of the network")
    nc.add_argument("--vni", type=int, metavar="N", help="VXLAN id (default: allocated)")
    nc.add_argument("--mtu", type=int, metavar="N",
                    help="container MTU (default: underlay MTU - 50)")
    nc.add_argument("--internal", action="store_true", help="no egress to the outside")
    nc.add_argument("--driver", choices=("overlay", "macvlan"),
                    help="overlay (default): VXLAN between hosts; macvlan: containers "
                         "directly on each host's LAN")
    nc.add_argument("--gateway", metavar="IP", help="macvlan: the LAN's router (required)")
    nc.add_argument("--ip-range", metavar="CIDR",
                    help="macvlan: allocate addresses only here (keep it clear of hosts)")
    nc.add_argument("--parent", metavar="IFACE",
                    help="macvlan: parent interface, or IFACE.VLAN for an 802.1Q "
                         "sub-interface (default: the one holding the host's VTEP "
                         "address; per host: the agent's macvlan-parents)")
    nc.add_argument("--macvlan-mode", choices=("bridge", "private", "vepa", "passthru"),
                    help="macvlan mode (default: bridge)")
    nc.set_defaults(func=cmd_network_create)
    net.add_parser("ls", parents=[common], help="list networks").set_defaults(func=cmd_network_ls)
    nr = net.add_parser("rm", parents=[common], help="remove a network")
    nr.add_argument("name", help="network name")
    nr.set_defaults(func=cmd_network_rm)

    at = sub.add_parser("attach", parents=[common], help="attach a namespace to a network")
    at.add_argument("netns", metavar="NETNS", help="netns name or /proc/PID/ns/net")
    at.add_argument("--network", required=True, help="network to attach to")
    at.add_argument("--name", help="container name (DNS; default: the netns name)")
    at.add_argument("--service", help="as a task of this service")
    at.add_argument("--alias", action="append", help="DNS alias (repeatable)")
    at.add_argument("--ip", help="this address instead of an allocated one")
    at.set_defaults(func=cmd_attach)
    dt = sub.add_parser("detach", parents=[common], help="detach a namespace")
    dt.add_argument("netns", metavar="NETNS", help="netns name or /proc/PID/ns/net")
    dt.add_argument("--network", help="only from this network (default: all)")
    dt.set_defaults(func=cmd_detach)
    ep = sub.add_parser("endpoint", help="endpoints (attached containers)").add_subparsers(
        dest="endpoint_cmd", required=True, parser_class=Parser)
    ep.add_parser("ls", parents=[common], help="list endpoints cluster-wide").set_defaults(
        func=cmd_endpoint_ls)

    sv = sub.add_parser("service", help="load-balanced services").add_subparsers(
        dest="service_cmd", required=True, parser_class=Parser)
    sc = sv.add_parser("create", parents=[common], help="create a service")
    sc.add_argument("name", help="service name (DNS)")
    sc.add_argument("--network", required=True, help="network of the service and its tasks")
    sc.add_argument("--mode", choices=("vip", "dnsrr"), default="vip",
                    help="vip: one virtual IP, load-balanced; dnsrr: DNS answers the tasks")
    sc.add_argument("--port", action="append", metavar="PORT[/tcp|/udp]",
                    help="port the VIP serves (repeatable)")
    sc.add_argument("--vip", metavar="ADDR", help="pick the VIP (default: allocated)")
    sc.add_argument("--health", metavar="tcp|http[:PATH]",
                    help="health check of each task (default: none)")
    sc.add_argument("--health-interval", type=float, metavar="S", help="seconds between checks")
    sc.add_argument("--health-timeout", type=float, metavar="S", help="seconds a check may take")
    sc.add_argument("--health-retries", type=int, metavar="N",
                    help="failed checks before a task is taken out")
    sc.add_argument("--affinity", choices=("none", "client-ip"), default="none",
                    help="client-ip: a client keeps reaching the same task")
    sc.set_defaults(func=cmd_service_create)
    sv.add_parser("ls", parents=[common], help="list services").set_defaults(
        func=cmd_service_ls)
    sr = sv.add_parser("rm", parents=[common], help="remove a service")
    sr.add_argument("name", help="service name")
    sr.set_defaults(func=cmd_service_rm)

    pb = sub.add_parser("publish", parents=[common], help="publish a service port")
    pb.add_argument("mapping", metavar="PUBLISHED:TARGET[/tcp|/udp]",
                    help="host port and the service's target port")
    pb.add_argument("--mode", choices=("ingress", "host"), default="ingress",
                    help="ingress: every host accepts the port (routing mesh); host: only hosts with a task")
    pb.add_argument("--service", help="the service behind the port")
    pb.add_argument("--local-only", action="store_true",
                    help="serve only local tasks and keep the client's address")
    pb.set_defaults(func=cmd_publish)
    up = sub.add_parser("unpublish", parents=[common], help="remove a published port")
    up.add_argument("port", metavar="PUBLISHED[/tcp|/udp]", help="the published port")
    up.set_defaults(func=cmd_unpublish)

    tr = sub.add_parser("trace", parents=[common],
                        help="walk a real probe hop by hop and compare with the tables")
    tr.add_argument("path", nargs="+", metavar="ARG",
                    help="SRC DST[:PORT][/tcp|/udp]: an attached container and a name, VIP "
                         "or address; with --from, only [ADDR]:PORT[/tcp|/udp]")
    tr.add_argument("--from", dest="from_host", metavar="HOST",
                    help="trace traffic entering HOST on a published port (DST = [ADDR]:PORT)")
    tr.add_argument("--pcap", metavar="DIR", help="keep the captures as pcap files in DIR")
    tr.set_defaults(func=cmd_trace)

    c = sub.add_parser("cleanup", parents=[common],
                       help="remove every kernel object meshnet owns on this host")
    c.set_defaults(func=cmd_cleanup)

    keys = sub.add_parser("keys", help="gossip encryption keys").add_subparsers(
        dest="keys_cmd", required=True, parser_class=Parser)
    keys.add_parser("generate", help="print a new key (as `serf keygen`)").set_defaults(
        func=cmd_keys_generate)
    keys.add_parser("list", parents=[common], help="installed keys").set_defaults(
        func=cmd_keys)
    for op, what in (("install", "add a key cluster-wide"), ("use", "make a key primary"),
                     ("remove", "remove a key cluster-wide")):
        kp = keys.add_parser(op, parents=[common], help=what)
        kp.add_argument("key", help="base64 key")
        kp.set_defaults(func=cmd_keys)

    iu = sub.add_parser("install-unit",
                        help="write the systemd unit (running this meshnet) and a sample config")
    iu.add_argument("--unit-dir", default="/etc/systemd/system", metavar="DIR",
                    help="where the unit goes (default: /etc/systemd/system)")
    iu.add_argument("--config-dir", default="/etc/meshnet", metavar="DIR",
                    help="where config.toml goes if there is none (default: /etc/meshnet)")
    iu.add_argument("--force", action="store_true", help="replace an existing unit")
    iu.add_argument("--docker", action="store_true",
                    help="also the Docker plugin's socket unit (meshnet.socket, before "
                         "docker.service)")
    iu.add_argument("--json", action="store_true", help="machine-readable output")
    iu.set_defaults(func=cmd_install_unit)

    from meshnet.lab.cli import add_lab_parser

    add_lab_parser(sub, common)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    rest: list[str] | None = None
    if "--" in argv:  # everything after the first "--" is a command to run (lab exec/run)
        cut = argv.index("--")
        argv, rest = argv[:cut], argv[cut + 1:]
    args = parser.parse_args(argv)
    for name in ("api", "json"):  # global options given before the command
        value = getattr(args, f"global_{name}")
        if value:
            if not hasattr(args, name):
                parser.error(f"--{name} does not apply to this command")
            if not getattr(args, name):
                setattr(args, name, value)
    if rest is not None:
        if not hasattr(args, "command_args"):
            parser.error("unexpected '--'")
        args.command_args = rest
    try:
        args.func(args)
    except UserError as exc:
        sys.stderr.write(f"meshnet: error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
