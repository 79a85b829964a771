"""Interop check of meshnet's gossip layer against the real ``serf`` 0.9.4 binary.

Not collected by pytest (no ``test_`` prefix); run by hand:

    .venv/bin/python tests/gossip/serf_interop_check.py [--only plain|encrypted]

It starts, on loopback only and on high ports, two ``serf agent`` processes and two
Python nodes (this same file in ``node`` mode, each a subprocess running the asyncio
adapter with the ``fast`` preset), then checks: joins in both directions, tags,
serf's view of the Python nodes and theirs of serf, app user messages between the
Python nodes, kill -9 detection both ways, restart under the same name
(refutation), SIGTERM -> ``left``, and that serf logged no decode, checksum,
unknown-type, merge or [ERR] lines. The whole scenario runs plaintext and with
``-encrypt``. Every process it starts is killed in ``finally``. Set
``INTEROP_KEEP_DIR`` to keep the logs and status files.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

SERF = "/usr/bin/serf"
KEEP_DIR = os.environ.get("INTEROP_KEEP_DIR")  # keep logs and status files here
BAD_LOG = re.compile(
    r"(decode|unknown type|not supported|invalid checksum|Failed push/pull merge|"
    r"Unsupported ping|Failed to decode|bad type prefix|Conflicting address|\[ERR\])",
    re.IGNORECASE,
)


# -- node mode: one Python gossip node -----------------------------------------


async def run_node(args: argparse.Namespace) -> None:
    import random

    from meshnet.gossip.adapter import GossipAdapter
    from meshnet.gossip.config import GossipConfig
    from meshnet.gossip.core import Memberlist
    from meshnet.gossip.events import UserMessage
    from meshnet.gossip.member import meshnet_meta
    from meshnet.gossip.security import Keyring

    host, port = args.bind.rsplit(":", 1)
    keyring = Keyring.from_base64([args.encrypt]) if args.encrypt else None
    cfg = getattr(GossipConfig, args.preset)()
    core = Memberlist(cfg, args.name, host, int(port), meshnet_meta({"kind": "py"}),
                      random.Random(), keyring)
    received: list[str] = []

    def on_event(ev: object) -> None:
        if isinstance(ev, UserMessage):
            received.append(f"{ev.from_node}:{'tcp' if ev.reliable else 'udp'}:{ev.payload[:40]!r}")

    ad = GossipAdapter(core, on_event=on_event)
    await ad.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    join_result = None
    if args.join:
        addrs = [(a.rsplit(":", 1)[0], int(a.rsplit(":", 1)[1])) for a in args.join]
        jr = await ad.join(addrs, timeout=5)
        join_result = {"ok": jr.ok, "errors": list(jr.errors)}
    status = Path(args.status)
    n = 0
    while not stop.is_set():
        n += 1
        for m in core.members():
            if m.name != core.name and m.is_meshnet and m.state == "alive":
                ad.send_user(m.name, b"m" + f"hello {n} from {core.name}".encode(),
                             reliable=n % 2 == 0)
        _write_status(status, core, received, join_result, left=False)
        try:
            await asyncio.wait_for(stop.wait(), 0.5)
        except TimeoutError:
            pass
    done = await ad.leave(timeout=5)
    _write_status(status, core, received, join_result, left=done)
    await asyncio.sleep(0.5)  # keep answering pings while the leave spreads
    await ad.stop()


def _write_status(path: Path, core, received, join_result, left: bool) -> None:
    data = {
        "members": {m.name: {"state": m.state, "tags": m.tags, "incarnation": m.incarnation}
                    for m in core.members()},
        "metrics": dict(core.metrics),
        "health": core.health_score,
        "received": received[-20:],
        "received_count": len(received),
        "join": join_result,
        "left": left,
        "time": time.time(),
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


# -- orchestrator ----------------------------------------------------------------


class Cluster:
    def __init__(self, workdir: Path, encrypt: str | None) -> None:
        self.dir = workdir
        self.encrypt = encrypt
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}
        self.notes: list[str] = []

    def serf(self, name: str, bind: int, rpc: int, join: int | None = None) -> None:
        cmd = [SERF, "agent", f"-node={name}", f"-bind=127.0.0.1:{bind}",
               f"-rpc-addr=127.0.0.1:{rpc}", "-log-level=debug", "-tag", "kind=serf"]
        if join:
            cmd.append(f"-join=127.0.0.1:{join}")
        if self.encrypt:
            cmd.append(f"-encrypt={self.encrypt}")
        self._spawn(name, cmd)
        wait_for(lambda: self.serf_members(rpc) is not None, 10, f"{name} rpc up")

    def py(self, name: str, bind: int, join: list[int] | None = None) -> None:
        cmd = [sys.executable, __file__, "node", f"--name={name}", f"--bind=127.0.0.1:{bind}",
               f"--status={self.dir / (name + '.json')}", "--preset=fast"]
        for j in join or []:
            cmd.append(f"--join=127.0.0.1:{j}")
        if self.encrypt:
            cmd.append(f"--encrypt={self.encrypt}")
        self._spawn(name, cmd)
        wait_for(lambda: self.py_status(name) is not None, 10, f"{name} up")

    def _spawn(self, name: str, cmd: list[str]) -> None:
        log = self.dir / f"{name}.log"
        self.logs[name] = log
        self.procs[name] = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT,
                                            cwd=ROOT)

    def kill9(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGKILL)
        self.procs[name].wait()

    def sigterm(self, name: str) -> int:
        self.procs[name].send_signal(signal.SIGTERM)
        return self.procs[name].wait(15)

    def close(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()

    def serf_members(self, rpc: int) -> dict | None:
        try:
            out = subprocess.run([SERF, "members", f"-rpc-addr=127.0.0.1:{rpc}", "-format=json"],
                                 capture_output=True, text=True, timeout=5)
        except subprocess.TimeoutExpired:
            return None
        if out.returncode != 0:
            return None
        return {m["name"]: m for m in json.loads(out.stdout)["members"]}

    def serf_status(self, rpc: int, node: str) -> str | None:
        m = (self.serf_members(rpc) or {}).get(node)
        return m["status"] if m else None

    def py_status(self, name: str) -> dict | None:
        try:
            return json.loads((self.dir / f"{name}.json").read_text())
        except (OSError, ValueError):
            return None

    def py_state(self, name: str, node: str) -> str | None:
        st = self.py_status(name) or {"members": {}}
        m = st["members"].get(node)
        return m["state"] if m else None

    def bad_serf_log_lines(self) -> list[str]:
        bad = []
        for name, path in self.logs.items():
            if name.startswith("s"):
                bad += [f"{name}: {ln.strip()}" for ln in path.read_text().splitlines()
                        if BAD_LOG.search(ln)]
        return bad


def wait_for(pred, timeout: float, what: str, step: float = 0.1) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if pred():
            return time.monotonic() - start
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for: {what}")


def scenario(encrypt: str | None, ports: dict[str, int], results: list[str]) -> None:
    label = "encrypted" if encrypt else "plain"
    with tempfile.TemporaryDirectory(prefix=f"serf-interop-{label}-") as d:
        if KEEP_DIR:
            d = str(Path(KEEP_DIR) / label)
            Path(d).mkdir(parents=True, exist_ok=True)
        c = Cluster(Path(d), encrypt)

        def ok(msg: str) -> None:
            results.append(f"[{label}] PASS {msg}")
            print(results[-1], flush=True)

        try:
            s1r, s2r = ports["s1rpc"], ports["s2rpc"]
            c.serf("s1", ports["s1"], s1r)
            c.serf("s2", ports["s2"], s2r, join=ports["s1"])
            wait_for(lambda: len(c.serf_members(s1r) or {}) == 2, 10, "s1+s2 joined")

            # Python -> serf join.
            c.py("py1", ports["py1"], join=[ports["s1"]])
            t = wait_for(lambda: c.serf_status(s1r, "py1") == "alive"
                         and c.serf_status(s2r, "py1") == "alive", 15, "serf sees py1 alive")
            tags = c.serf_members(s1r)["py1"]["tags"]
            assert tags == {"kind": "py", "mn": "1"}, tags
            ok(f"py1 -> serf join: s1 and s2 list py1 alive in {t:.1f}s with tags {tags}")
            wait_for(lambda: c.py_state("py1", "s1") == "alive"
                     and c.py_state("py1", "s2") == "alive", 10, "py1 sees s1,s2")
            ok(f"py1 sees s1, s2 alive; join result {c.py_status('py1')['join']}")

            # serf -> Python join (serf initiates the push/pull to the Python node).
            c.py("py2", ports["py2"])
            out = subprocess.run([SERF, "join", f"-rpc-addr=127.0.0.1:{s2r}",
                                  f"127.0.0.1:{ports['py2']}"], capture_output=True, text=True)
            assert out.returncode == 0, out.stdout + out.stderr
            t = wait_for(lambda: all(c.py_state("py2", n) == "alive" for n in ("s1", "s2", "py1"))
                         and c.serf_status(s1r, "py2") == "alive", 15, "py2 in cluster")
            ok(f"serf -> py2 join ({out.stdout.strip()}); py2 sees s1, s2, py1 alive, "
               f"s1 sees py2 alive, in {t:.1f}s")

            # App user messages between the Python nodes (UDP and TCP).
            wait_for(lambda: (c.py_status("py1")["received_count"] >= 4
                              and c.py_status("py2")["received_count"] >= 4), 10, "user msgs")
            kinds = {r.split(":")[1] for r in c.py_status("py1")["received"]}
            ok(f"app user messages py2->py1 received over {sorted(kinds)}: "
               f"{c.py_status('py1')['received'][-1]}")

            time.sleep(2)  # let some probes and gossip flow
            m = c.py_status("py1")["metrics"]
            ok("py1 metrics after steady state: "
               + ", ".join(f"{k}={v}" for k, v in sorted(m.items())
                           if k.startswith(("recv.", "drop.", "probe.", "refute"))))

            # kill -9 a serf agent: the Python nodes must mark it dead.
            t0 = time.monotonic()
            c.kill9("s2")
            t = wait_for(lambda: c.py_state("py1", "s2") == "dead"
                         and c.py_state("py2", "s2") == "dead", 30, "py nodes see s2 dead")
            t_s1 = wait_for(lambda: c.serf_status(s1r, "s2") == "failed", 30, "s1 sees s2 failed")
            ok(f"kill -9 s2: py1 and py2 mark s2 dead after {t:.1f}s "
               f"(serf s1 marks it failed after {time.monotonic() - t0:.1f}s)")
            del t_s1

            # kill -9 a Python node: serf must mark it failed.
            t0 = time.monotonic()
            c.kill9("py2")
            t = wait_for(lambda: c.serf_status(s1r, "py2") == "failed", 30, "s1 sees py2 failed")
            t2 = wait_for(lambda: c.py_state("py1", "py2") == "dead", 30, "py1 sees py2 dead")
            ok(f"kill -9 py2: s1 shows failed after {t:.1f}s, py1 shows dead after "
               f"{time.monotonic() - t0:.1f}s")
            del t2

            # Restart py2 under the same name: it learns it is dead and refutes.
            c.py("py2", ports["py2"], join=[ports["s1"]])
            t = wait_for(lambda: c.serf_status(s1r, "py2") == "alive", 15, "py2 alive again")
            inc = c.py_status("py2")["members"]["py2"]["incarnation"]
            assert inc >= 2, inc
            ok(f"py2 restarted under the same name: refuted to incarnation {inc}, s1 shows "
               f"it alive after {t:.1f}s")

            # SIGTERM a Python node: serf must show it left (not failed).
            rc = c.sigterm("py1")
            st = c.py_status("py1")
            t = wait_for(lambda: c.serf_status(s1r, "py1") == "left", 15, "s1 sees py1 left")
            ok(f"SIGTERM py1 (exit {rc}, leave_done={st['left']}): s1 shows py1 'left' "
               f"after {t:.1f}s")

            bad = c.bad_serf_log_lines()
            assert not bad, "serf logged errors:\n" + "\n".join(bad[:20])
            ok("serf logs contain no decode/checksum/unknown-type/merge/[ERR] lines")
        except Exception:
            print(f"[{label}] FAILED; logs in {d}:", flush=True)
            for name, path in c.logs.items():
                print(f"----- {name}.log (tail)")
                print("\n".join(path.read_text().splitlines()[-40:]))
            raise
        finally:
            c.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd")
    n = sub.add_parser("node")
    n.add_argument("--name", required=True)
    n.add_argument("--bind", required=True)
    n.add_argument("--join", action="append", default=[])
    n.add_argument("--encrypt")
    n.add_argument("--status", required=True)
    n.add_argument("--preset", default="fast")
    ap.add_argument("--only", choices=["plain", "encrypted"])
    args = ap.parse_args()
    if args.cmd == "node":
        import logging

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        asyncio.run(run_node(args))
        return
    results: list[str] = []
    if args.only in (None, "plain"):
        scenario(None, dict(s1=17946, s2=17947, s1rpc=17373, s2rpc=17374, py1=17950, py2=17951),
                 results)
    if args.only in (None, "encrypted"):
        key = subprocess.run([SERF, "keygen"], capture_output=True, text=True,
                             check=True).stdout.strip()
        scenario(key, dict(s1=17956, s2=17957, s1rpc=17383, s2rpc=17384, py1=17960, py2=17961),
                 results)
    print("\nALL INTEROP CHECKS PASSED:\n" + "\n".join(results))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
