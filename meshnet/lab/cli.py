"""``meshnet lab ...`` argument parsing and output."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from meshnet.clitools import Parser, emit, table
from meshnet.errors import UserError
from meshnet.lab.topology import LabSpec, check_lab_name


def add_lab_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    lab = sub.add_parser("lab", help="multi-host lab from network namespaces").add_subparsers(
        dest="lab_cmd", required=True, parser_class=Parser)

    def named(name: str, help: str) -> argparse.ArgumentParser:
        p = lab.add_parser(name, help=help)
        p.add_argument("--name", default="lab", help="lab name (default: lab)")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(func=dispatch)
        return p

    up = named("up", "build a lab and start one agent per host")
    up.add_argument("--hosts", type=int, default=3, metavar="N",
                    help="number of hosts, 1-250 (default: 3)")
    up.add_argument("--underlay-mtu", type=int, default=1500, metavar="N",
                    help="MTU of the lab's underlay network (default: 1500)")
    up.add_argument("--docker", action="store_true",
                    help="one dockerd per host, with meshnet as its network and IPAM "
                         "plugin (needs docker.io and busybox-static)")
    up.add_argument("--agent-arg", action="append", default=[], metavar="ARG",
                    help="extra argument for every agent (repeatable; kept for restarts)")
    ls = lab.add_parser("ls", help="list labs")
    ls.set_defaults(func=dispatch)
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ex = named("exec", "run a command inside a host's namespace")
    ex.add_argument("host", help="host name (h1, h2, ...)")
    ex.add_argument("command_args", nargs="*", metavar="-- COMMAND", help="what to run")
    run = named("run", "start a 'container' namespace on a host")
    run.add_argument("host", help="host name (h1, h2, ...)")
    run.add_argument("container", help="container name (its namespace is L-NAME)")
    run.add_argument("--network", help="attach it to this network")
    run.add_argument("--service", help="as a task of this service")
    run.add_argument("--alias", action="append", default=[], help="DNS alias (repeatable)")
    run.add_argument("--ip", help="this address instead of an allocated one")
    run.add_argument("command_args", nargs="*", metavar="-- COMMAND", help="what to run")
    for name, what in (("stop", "stop a host's agent (SIGTERM: the data plane keeps "
                                "forwarding; start it again with 'lab restart')"),
                       ("restart", "restart a host's agent (or start a stopped one) with "
                                   "the lab's agent arguments")):
        p = named(name, what)
        p.add_argument("host", help="host name (h1, h2, ...)")
    named("down", "remove the lab and everything it created")


def _command(rest: list[str]) -> list[str]:
    if not rest:
        raise UserError("nothing to run: give a command after --")
    return rest


def dispatch(args: argparse.Namespace) -> None:
    from meshnet.lab.lab import Lab  # pyroute2: only for lab commands (the CLI starts fast)

    cmd = args.lab_cmd
    if cmd == "ls":
        labs = [Lab.load(n).describe() for n in Lab.names()]
        rows = [(lab["name"], len(lab["hosts"]),
                 sum(h["agent"] == "up" for h in lab["hosts"]), len(lab["containers"]),
                 lab["underlay_mtu"]) for lab in labs]
        emit(args, labs, table(rows, ("LAB", "HOSTS", "AGENTS UP", "CONTAINERS", "MTU"))
               if labs else "no labs")
        return
    check_lab_name(args.name)
    if cmd == "up":
        spec = LabSpec(name=args.name, hosts=args.hosts, underlay_mtu=args.underlay_mtu,
                       docker=args.docker)
        lab = Lab(spec)
        quiet = args.json
        lab.up(progress=(lambda s: None) if quiet else (lambda s: print(f"  {s}", flush=True)),
               agent_args=args.agent_arg)
        emit(args, lab.describe(),
               f"lab {spec.name} up: {spec.hosts} hosts on {spec.host_addr('h1')}/24; "
               f"try 'meshnet lab exec --name {spec.name} h1 -- meshnet members'")
    elif cmd == "down":
        try:
            lab = Lab.load(args.name)
        except UserError:
            # no state file: still sweep anything left under this lab's names
            lab = Lab(LabSpec(name=args.name))
        removed = lab.down()
        emit(args, {"removed": removed},
               f"lab {args.name} down ({len(removed)} namespaces removed)")
    elif cmd == "stop":
        lab = Lab.load(args.name)
        stopped = lab.stop_agent(args.host)
        emit(args, {"host": args.host, "stopped": stopped},
               f"agent on {args.host} stopped" if stopped
               else f"agent on {args.host} was not running")
    elif cmd == "restart":
        lab = Lab.load(args.name)
        lab.stop_agent(args.host)
        lab.restart_agent(args.host)
        emit(args, {"host": args.host, "pid": lab.agent_pid(args.host)},
               f"agent on {args.host} up again (pid {lab.agent_pid(args.host)})")
    elif cmd == "exec":
        lab = Lab.load(args.name)
        host = lab.check_host(args.host)
        command = _command(args.command_args)
        # the venv's bin first, so `meshnet` inside the host is this meshnet
        path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
        env = dict(os.environ, MESHNET_API=lab.spec.api_socket(host), PATH=path)
        if lab.spec.docker:
            from meshnet.lab.dockerd import docker_socket

            env["DOCKER_HOST"] = f"unix://{docker_socket(lab.spec, host)}"
        sys.stdout.flush()
        try:
            os.execvpe("ip", ["ip", "netns", "exec", lab.spec.host_ns(host), *command], env)
        except OSError as exc:
            raise UserError(f"cannot run {command[0]}: {exc}") from None
    elif cmd == "run":
        lab = Lab.load(args.name)
        attach = None
        if args.network:
            attach = {"network": args.network, "name": args.container,
                      "aliases": args.alias}
            if args.service:
                attach["service"] = args.service
            if args.ip:
                attach["ip"] = args.ip
        elif args.service or args.alias or args.ip:
            raise UserError("--service, --alias and --ip need --network")
        rec = lab.run(args.host, args.container, _command(args.command_args), attach)
        ep = rec.get("endpoint") or {}
        emit(args, rec, f"container {args.container} on {args.host} (netns {rec['netns']})"
               + (f", {ep.get('ip')} on {ep.get('network')}" if ep else "")
               + f"; output in {lab.spec.state_dir / (args.container + '.log')}")
