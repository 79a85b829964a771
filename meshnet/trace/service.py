"""The trace inside the agent: the API handler (origin side) and the capture service
every agent runs for its peers (destination side), coordinated through the "traces"
table only (agents have no RPC to each other).

Origin (the agent of SRC's host, or of ``--from HOST``)::

    resolve (127.0.0.11 from SRC) -> expected path (tables) -> read FDB/neigh/MTU
    -> bind the probe socket (its port is the marker) -> open local captures
    -> put ID/capture/HOST for every remote host with a candidate backend
    -> wait until each reports "armed" -> send the probe -> read conntrack
    -> put the orders again with stop=true -> collect ID/result/HOST ("done")
    -> delete the orders, forget the probe's conntrack entries -> diagnose

Destination: an order naming this node starts a capture on the underlay, in the
network's sandbox and on the named tasks' interfaces (only meshnet's own namespaces:
nothing in an order can point a capture elsewhere), reports "armed", stops at
``stop``/deadline, reports a summary ("done", < 1 KiB), and deletes its result when
the order disappears (or 30 s after the deadline if the origin died).
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import secrets
import time
from collections import Counter
from typing import Any

from meshnet.errors import ModelError, UserError
from meshnet.hostport import HostPort
from meshnet.ipvs.state import ingress_link_name
from meshnet.trace import probe as kernel
from meshnet.trace.capture import Capture, Point
from meshnet.trace.diagnose import (
    Facts,
    Hop,
    Probe,
    Resolution,
    diagnose,
    resolution_hop,
    verdict_of,
)
from meshnet.trace.frames import bpf_filter
from meshnet.trace.model import (
    MAX_ENTRY_DATA,
    CaptureOrder,
    Seen,
    TraceEntry,
    TraceRequest,
    compact,
    entry_key,
)
from meshnet.trace.path import Expected, View, expected_ingress, expected_path, find_source
from meshnet.vxlan.state import sandbox_ns, vxlan_name

log = logging.getLogger("meshnet.trace")
TABLE = "traces"
ARM_TIMEOUT = 1.5  #: how long the origin waits for remote captures to be armed
PROBE_TIMEOUT = 1.5
RESULT_TTL = 30.0


def fit(data: dict[str, Any]) -> str:
    """Compact JSON of a result, shortened (summaries first) until it fits an entry."""
    text = compact(data)
    seen = data.get("seen") or []
    for limit in (80, 48, 24, 0):
        if len(text.encode()) <= MAX_ENTRY_DATA:
            return text
        for s in seen:
            for k in ("fp", "fr", "i", "e"):
                if k in s:
                    s[k] = s[k][:limit]
        data.pop("pcap", None)
        text = compact(data)
    return compact({"state": data.get("state", "done"), "error": "result too large"})


class Tracer:
    """Both roles; the agent makes one at start (it serves peers' capture orders from
    then on) and the API calls ``trace`` and ``in_flight``."""

    def __init__(self, host: HostPort) -> None:
        self.host = host
        self.node = host.node
        self.store = host.store
        self.serving: dict[str, tuple[Capture | None, asyncio.Event]] = {}
        self.results: dict[str, asyncio.Event] = {}  #: trace id -> kicked on results
        self.stats: Counter[str] = Counter()
        self.store.listeners.append(self._changed)

    def in_flight(self) -> list[str]:
        """Keys of the trace entries in the tables (orders and results)."""
        return sorted(k for k, _, _ in self.store.backend.items(TABLE))

    # --- tables ---------------------------------------------------------------------

    def _entry(self, key: str) -> TraceEntry | None:
        obj = self.store.get(TABLE, key)
        return obj if isinstance(obj, TraceEntry) else None

    def _put(self, kind: str, trace: str, node: str, until: float, data: str) -> None:
        e = TraceEntry(trace=trace, kind=kind, node=node, until=until,  # type: ignore[arg-type]
                       data=data)
        self.store.put(TABLE, e.key, e, self.host.clock())

    def _changed(self, table: str, key: str) -> None:
        if table != TABLE:
            return
        parts = key.split("/")
        if len(parts) != 3:
            self.stats["bad_keys"] += 1
            return
        trace, kind, node = parts
        if kind == "result" and trace in self.results:
            self.results[trace].set()
        elif kind == "capture" and node == self.node:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            loop.create_task(self._order_changed(key), name=f"trace-{trace}")

    # --- destination side ------------------------------------------------------------

    async def _order_changed(self, key: str) -> None:
        entry = self._entry(key)
        running = self.serving.get(key)
        if entry is None or entry.until < time.time():
            if running is not None:
                cap, gone = running
                if cap is not None:
                    cap.stop()
                gone.set()
            return
        try:
            order = CaptureOrder.from_payload(entry.payload())
        except ModelError as exc:
            self.stats["bad_orders"] += 1
            log.info("trace %s: ignoring a capture order: %s", entry.trace, exc)
            return
        if running is not None:
            if order.stop and running[0] is not None:
                running[0].stop()
            return
        gone = asyncio.Event()
        self.serving[key] = (None, gone)
        try:
            await self._serve(key, entry, order, gone)
        except Exception:
            log.exception("trace %s: capture failed", entry.trace)
        finally:
            self.serving.pop(key, None)

    async def _dest_points(self, order: CaptureOrder) -> list[Point]:
        vx = bpf_filter(order.proto, order.marker, vxlan=True,
                        inner_v6=ipaddress.ip_address(order.client).version == 6)
        plain = bpf_filter(order.proto, order.marker)
        ul = await self.host.in_kernel(lambda: kernel.underlay_iface(self.host.vtep))
        net = self.store.networks().get(order.network)
        if net is not None and net.macvlan:  # the probe arrives on this host's LAN parent
            points = [Point("lan", None, self.host.macvlan_parent(net) or ul or "eth0", plain)]
        else:
            points = [Point("underlay", None, ul or "eth0", vx),
                      Point("sandbox", sandbox_ns(self.host.prefix, order.vni),
                            vxlan_name(order.vni), plain)]
        for e in self.store.endpoints().values():
            if (e.host == self.node and e.netns and e.network == order.network
                    and str(e.ip) in order.tasks):
                points.append(Point("task", e.netns, e.ifname or "eth0", plain))
        return points

    async def _serve(self, key: str, entry: TraceEntry, order: CaptureOrder,
                     gone: asyncio.Event) -> None:
        rkey_until = entry.until + RESULT_TTL
        cap = Capture(self.node, await self._dest_points(order), order.marker, order.proto)
        self.serving[key] = (cap, gone)
        try:
            await asyncio.to_thread(cap.open)
            self._put("result", entry.trace, self.node, rkey_until,
                      compact({"state": "armed"}))
            until = min(time.time() + order.seconds, entry.until)
            current = self._entry(key)
            if current is None or (current.payload().get("stop")):
                cap.stop()
            await asyncio.to_thread(cap.run, until)
        finally:
            cap.close()
        data: dict[str, Any] = {"state": "done", "seen": [s.to_dict() for s in cap.summaries()]}
        if order.pcap:
            data["pcap"] = await asyncio.to_thread(cap.write_pcaps, order.pcap, entry.trace)
        self._put("result", entry.trace, self.node, rkey_until, fit(data))
        self.stats["served"] += 1
        rkey = entry_key(entry.trace, "result", self.node)
        try:
            if self._entry(key) is not None:
                await asyncio.wait_for(gone.wait(), timeout=max(0.0, rkey_until - time.time()))
        except TimeoutError:
            pass
        finally:
            self.store.delete(TABLE, rkey, self.host.clock())

    # --- origin side -------------------------------------------------------------------

    def view(self) -> View:
        s = self.store
        down = self.host.gone_hosts()
        vteps = {name: str(n.vtep_addr) for name, n in s.all("vteps").items()}  # type: ignore[attr-defined]
        nets = s.networks()
        return View(node=self.node, prefix=self.host.prefix, networks=nets,
                    endpoints=list(s.endpoints().values()), services=s.services(),
                    health=s.all("health"), published=list(s.all("published").values()),  # type: ignore[arg-type]
                    vteps=vteps, down=down,
                    parents={n: self.host.macvlan_parent(net) for n, net in nets.items()
                             if net.macvlan})

    async def trace(self, req: TraceRequest) -> dict[str, Any]:
        tid = secrets.token_hex(8)
        view = self.view()
        report: dict[str, Any] = {"trace": tid, "node": self.node}
        if req.from_host:
            if req.from_host != self.node:
                raise UserError(f"--from {req.from_host}: this is {self.node}'s agent; ask "
                                f"{req.from_host}'s (--api)")
            assert req.port is not None
            exp = expected_ingress(view, req.port, req.proto)
            addr = req.dst or self.host.vtep
            res = Resolution(name=addr, skipped=f"published port {req.port}/{req.proto} on "
                                                f"{self.node} (no DNS)")
            report.update({"from": f"{self.node} (published port)",
                           "dst": f"{addr}:{req.port}/{req.proto}"})
            probe_ns, probe_dst, src_if = None, (addr, req.port), ""
        else:
            src = find_source(view, req.src)
            report["from"] = f"{src.name} on {self.node} ({src.ip})"
            report["dst"] = f"{req.dst}{':' + str(req.port) if req.port else ''}/{req.proto}"
            res = await self._resolve(view, src, req.dst)
            report["resolution"] = dataclasses.asdict(res)
            if not res.ok and not res.answers:
                hops = [resolution_hop(res)]
                return self._finish(report, hops)
            dst_ip = res.answers[0] if res.answers else req.dst
            exp = expected_path(view, src, dst_ip, req.port, req.proto)
            probe_ns, probe_dst, src_if = src.netns, (exp.dst, exp.port), src.ifname or "eth0"
        report["expected"] = exp.to_dict()
        if not req.from_host:
            report["dst"] = f"{req.dst}:{exp.port}/{req.proto}"
        return await self._probe(req, tid, view, exp, res, report, probe_ns, probe_dst, src_if)

    async def _resolve(self, view: View, src: Any, name: str) -> Resolution:
        try:
            ipaddress.ip_address(name)
            return Resolution(name=name, skipped=f"{name} is an address")
        except ValueError:
            pass
        expected = self._expected_answers(view, src.network, name)
        v6 = ipaddress.ip_address(src.ip).version == 6
        rcode, answers = await asyncio.to_thread(kernel.dns_query, src.netns, name, v6)
        return Resolution(name=name, rcode=rcode, answers=answers, expected=expected)

    @staticmethod
    def _expected_answers(view: View, network: str, name: str) -> tuple[str, ...]:
        short = name.rstrip(".")
        svc = view.services.get(short)
        if svc is not None and svc.network == network:
            if svc.vip is not None:
                return (str(svc.vip),)
            return tuple(sorted(str(e.ip) for e in view.endpoints
                                if e.service == svc.name and e.network == network))
        return tuple(sorted(str(e.ip) for e in view.endpoints if e.network == network
                            and (e.name == short or short in e.aliases)))

    async def _probe(self, req: TraceRequest, tid: str, view: View, exp: Expected,
                     res: Resolution, report: dict[str, Any], probe_ns: str | None,
                     probe_dst: tuple[str, int], src_if: str) -> dict[str, Any]:
        v6 = ipaddress.ip_address(probe_dst[0]).version == 6 if probe_dst[0] else False
        sock = await asyncio.to_thread(kernel.ProbeSocket, probe_ns, req.proto, v6)
        marker = sock.marker
        probe_len = (40 if v6 else 20) + (40 if req.proto == "tcp" else 8 + 32)
        facts = await self.host.in_kernel(lambda: kernel.read_facts(
            exp.sandbox, exp.vxlan_dev, probe_ns, src_if, probe_len))
        remote = [h for h in exp.remote_hosts]
        cap = Capture(self.node, await self._origin_points(exp, probe_ns, src_if, marker,
                                                            req.proto), marker, req.proto)
        orders: dict[str, CaptureOrder] = {}
        until = time.time() + ARM_TIMEOUT + PROBE_TIMEOUT + req.timeout + 1.0
        kick = self.results[tid] = asyncio.Event()
        run: asyncio.Future[None] | None = None
        outcome, line = "not sent", ""
        try:
            await asyncio.to_thread(cap.open)
            run = asyncio.ensure_future(asyncio.to_thread(cap.run, until))
            for host in remote:
                orders[host] = CaptureOrder(
                    proto=req.proto, marker=marker, client=exp.client or probe_dst[0],
                    network=exp.network, vni=exp.vni,
                    tasks=tuple(b.ip for b in exp.backends if b.host == host),
                    target=exp.target, seconds=ARM_TIMEOUT + PROBE_TIMEOUT + req.timeout,
                    pcap=req.pcap)
                self._put("capture", tid, host, until, orders[host].to_json())
            await self._collect(tid, remote, ("armed", "done"), ARM_TIMEOUT, kick)
            payload = f"meshnet-trace {tid}".encode()
            outcome = await asyncio.to_thread(sock.send, probe_dst[0], probe_dst[1], payload,
                                              PROBE_TIMEOUT)
            if exp.kind in ("vip", "ingress"):
                line = await asyncio.to_thread(kernel.conntrack_lookup, exp.sandbox,
                                               req.proto, marker)
            await asyncio.sleep(0.2)  # the reply's last hops
            for host, order in orders.items():
                stop = CaptureOrder(**{**order.__dict__, "stop": True})
                self._put("capture", tid, host, until, stop.to_json())
            cap.stop()
            results = await self._collect(tid, remote, ("done",), req.timeout, kick)
        finally:
            cap.stop()
            if run is not None:
                await run
            cap.close()
            await asyncio.to_thread(sock.close)
            for host in orders:
                self.store.delete(TABLE, entry_key(tid, "capture", host), self.host.clock())
            self.results.pop(tid, None)
            for ns in {probe_ns, exp.sandbox or None}:
                await asyncio.to_thread(kernel.conntrack_forget, ns, req.proto, marker)
        seen = cap.summaries()
        reported: dict[str, str] = {}
        files: list[str] = []
        for host, data in results.items():
            reported[host] = str(data.get("state", ""))
            for raw in data.get("seen") or []:
                try:
                    seen.append(Seen.from_dict(raw))
                except ModelError:
                    self.stats["bad_results"] += 1
            files += [str(f) for f in data.get("pcap") or []]
        if req.pcap:
            files = await asyncio.to_thread(cap.write_pcaps, req.pcap, tid) + files
        chosen = kernel.parse_conntrack(line) if line else None
        pr = Probe(outcome=outcome, marker=marker, chosen=chosen[1] if chosen else "",
                   conntrack=line)
        hops = diagnose(exp, res, pr, seen, facts, reported, view.down)
        report.update({
            "probe": {"marker": marker, "outcome": outcome, "conntrack": line,
                      "payload": f"meshnet-trace {tid}"},
            "facts": {"fdb": dict(facts.fdb), "neigh": dict(facts.neigh), "mtu": facts.mtu,
                      "sandbox_exists": facts.sandbox_exists},
            "seen": [s.to_dict() for s in seen], "reported": reported, "pcap": files})
        return self._finish(report, hops)

    @staticmethod
    def _finish(report: dict[str, Any], hops: list[Hop]) -> dict[str, Any]:
        report["hops"] = [h.to_dict() for h in hops]
        report["verdict"] = verdict_of(hops).to_dict()
        log.info("trace %s %s -> %s: %s", report["trace"], report.get("from"),
                 report.get("dst"), report["verdict"])
        return report

    async def _collect(self, tid: str, hosts: list[str], states: tuple[str, ...],
                       timeout: float, kick: asyncio.Event) -> dict[str, dict[str, Any]]:
        """Wait until every host's result is in one of ``states`` (or the timeout)."""
        deadline = time.monotonic() + timeout
        out: dict[str, dict[str, Any]] = {}
        while True:
            for host in hosts:
                e = self._entry(entry_key(tid, "result", host))
                if e is None:
                    continue
                try:
                    out[host] = e.payload()
                except ModelError:
                    self.stats["bad_results"] += 1
            if all(out.get(h, {}).get("state") in states for h in hosts):
                return out
            left = deadline - time.monotonic()
            if left <= 0:
                return {h: d for h, d in out.items() if d.get("state") in states}
            kick.clear()
            try:
                await asyncio.wait_for(kick.wait(), timeout=min(left, 0.1))
            except TimeoutError:
                pass

    async def _origin_points(self, exp: Expected, probe_ns: str | None, src_if: str,
                             marker: int, proto: str) -> list[Point]:
        plain = bpf_filter(proto, marker)
        points = []
        if exp.kind == "ingress":
            points.append(Point("ingress", None, ingress_link_name(exp.vni), plain))
        else:
            points.append(Point("src", probe_ns, src_if, plain))
        if exp.lan:
            if exp.remote_hosts:
                points.append(Point("lan", None, exp.lan, plain))
        elif exp.remote_hosts or exp.kind != "direct":
            points.append(Point("sandbox", exp.sandbox, exp.vxlan_dev, plain))
        if exp.remote_hosts and not exp.lan:
            ul = await self.host.in_kernel(lambda: kernel.underlay_iface(self.host.vtep))
            v6 = ipaddress.ip_address(exp.client).version == 6 if exp.client else False
            points.append(Point("underlay", None, ul or "eth0",
                                bpf_filter(proto, marker, vxlan=True, inner_v6=v6)))
        local = {b.ip for b in exp.backends if b.local}
        for e in self.store.endpoints().values():
            if e.host == self.node and e.netns and e.network == exp.network \
                    and str(e.ip) in local:
                points.append(Point("task", e.netns, e.ifname or "eth0", plain))
        return points

    def metrics(self) -> dict[str, int]:
        return dict(self.stats)


__all__ = ["Facts", "Tracer"]
