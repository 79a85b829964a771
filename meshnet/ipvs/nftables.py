"""The nftables backend (``--lb nftables``): sandboxes in nftables maps, the host's
published ports in iptables. Layout and reasons: :mod:`meshnet.ipvs.nftrules`.

Same contract as the other backends (observe / plan / apply / cleanup). A plan is one
:class:`~meshnet.ipvs.nftrules.NftOp` per sandbox that changes (an ``nft -f`` script for
structure, then element changes over netlink) plus the iptables transactions of the host
namespace (and the removal of iptables load-balancing chains a previous ``--lb iptables``
run left in sandboxes). ``nft list`` is read only on full syncs and at start; between
them the backend trusts what it applied, as the iptables backend does. Element changes
are encoded by :mod:`meshnet.ipvs.nftnl` (sans-IO) and sent by :class:`ElementWriter`.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from meshnet import netns
from meshnet.errors import ConfigError, KernelError
from meshnet.ipvs.commitack import run_plain
from meshnet.ipvs.iptables import IptablesBackend, Observed, Restore
from meshnet.ipvs.iptables import plan as ipt_plan
from meshnet.ipvs.nftnl import NETLINK_NETFILTER, SetChange, acks, batch
from meshnet.ipvs.nftrules import (
    TABLE,
    NftMemo,
    NftOp,
    NftSandbox,
    parse_ruleset,
    plan_sandbox,
    render,
)
from meshnet.ipvs.rules import HOST, Ruleset, render_host
from meshnet.ipvs.state import LbConfig, LbState


@dataclass
class NftObserved:
    tables: dict[str, NftSandbox] = field(default_factory=dict)  #: sandbox ns -> its table
    rules: Observed = field(default_factory=Observed)  #: iptables, every namespace


@dataclass(frozen=True)
class NftPlan:
    tables: tuple[NftOp, ...]
    rules: tuple[Restore, ...]

    def __bool__(self) -> bool:
        return bool(self.tables or self.rules)


SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
SO_SNDBUFFORCE = 32


class ElementWriter:
    """One netlink socket per namespace, opened there once and kept (a socket's close
    after a commit waits for an RCU grace period; an open one never does). A namespace
    that was removed and made again under the same name gets a new socket."""

    def __init__(self, timeout: float = 10.0) -> None:
        self.timeout = timeout
        self._socks: dict[str, tuple[socket.socket, tuple[int, int]]] = {}
        self._seq = 1

    def _sock(self, ns: str) -> socket.socket:
        ident = _ident(ns)  # FileNotFoundError: no such namespace (the caller skips it)
        have = self._socks.get(ns)
        if have is not None and have[1] == ident:
            return have[0]
        if have is not None:
            have[0].close()
        s = netns.open_in(ns, lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW,
                                                    NETLINK_NETFILTER))
        s.settimeout(self.timeout)
        s.bind((0, 0))
        s.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)  # errors without our request echoed
        self._socks[ns] = (s, ident)
        return s

    def write(self, ns: str, table: str, changes: Sequence[SetChange]) -> None:
        """Apply ``changes`` in one transaction; a refused one raises KernelError (the
        kernel rolled all of it back)."""
        if not any(c.delete or c.add for c in changes):
            return
        s = self._sock(ns)
        first = self._seq
        data, last = batch(table, changes, first)
        self._seq = (last + 2) & 0x3FFFFFFF or 1
        try:
            _room(s, len(data))
            s.send(data)
            failed: list[int] = []
            done = False
            while not done:
                for seq, err in acks(s.recv(1 << 16)):
                    if first <= seq <= last:
                        if err:
                            failed.append(err)
                        done = done or seq in (first, last)
        except (OSError, ValueError) as exc:
            self.close(ns)  # unknown state: a fresh socket next time
            raise KernelError(f"nftables elements in {ns}: {exc}") from exc
        if failed:
            raise KernelError(f"nftables elements in {ns}: {os.strerror(failed[0])} "
                              f"({errno.errorcode.get(failed[0], failed[0])})")

    def close(self, ns: str | None = None) -> None:
        for name in ([ns] if ns is not None else list(self._socks)):
            have = self._socks.pop(name, None)
            if have is not None:
                have[0].close()

    def keep(self, namespaces: Iterable[str]) -> None:
        """Close the sockets of namespaces not in ``namespaces``."""
        keep = set(namespaces)
        for ns in [n for n in self._socks if n not in keep]:
            self.close(ns)


def _room(s: socket.socket, size: int) -> None:
    """A batch is one datagram: the send buffer must hold it (a full sync of 1,000
    services is ~1 MB). Root may force it past ``wmem_max``."""
    if s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= 2 * size + 4096:
        return
    try:
        s.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, size + 4096)
    except OSError:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size + 4096)


def _ident(ns: str) -> tuple[int, int]:
    st = os.stat(netns.path_of(ns))
    return (st.st_dev, st.st_ino)


class NftRunner:
    """``nft`` inside a namespace (the fake lives in the tests)."""

    def __init__(self, binary: str = "nft", timeout: float = 60.0) -> None:
        path = shutil.which(binary)
        if not path:
            raise ConfigError(f"--lb nftables: {binary} not found (install nftables)")
        self.nft = path
        self.timeout = timeout
        self.writer = ElementWriter()

    def script(self, ns: str, text: str) -> None:
        """Run ``nft -f`` in ``ns`` (FileNotFoundError: no such namespace)."""
        try:
            run_plain(ns, [self.nft, "-f", "-"], text, self.timeout)
        except KernelError as exc:
            raise KernelError(f"nft in {ns} failed: {exc}") from exc

    def list_ruleset(self, ns: str) -> str:
        """The namespace's nftables ruleset as JSON (ours are picked out by the parser)."""
        r = netns.run_cmd(ns, [self.nft, "-j", "list", "ruleset", "ip"],
                          capture_output=True, text=True, timeout=self.timeout)
        if r.returncode != 0:
            raise KernelError(f"nft list in {ns} failed: {r.stderr.strip()[:300]}")
        return r.stdout

    def elements(self, ns: str, changes) -> None:
        self.writer.write(ns, TABLE, changes)  # each change names its own table

    def forget(self, keep) -> None:
        self.writer.keep(keep)


class NftBackend:
    name = "nftables"

    def __init__(self, runner, config: LbConfig | None = None, nft: NftRunner | None = None
                 ) -> None:
        """``runner``: the iptables runner (host rules; namespaces to look in)."""
        self.runner = runner
        self.nft = nft or NftRunner()
        self.config = config or LbConfig()
        self.ipt = IptablesBackend(runner, self.config, sweep_nft=False)
        self._memo: dict[str, NftMemo] = {}
        self._planned: tuple[dict[str, NftSandbox | None], NftPlan] | None = None

    def render(self, want: LbState) -> tuple[dict[str, NftSandbox | None], dict[str, Ruleset]]:
        tables = render(want, self.config, self._memo)
        return tables, {HOST: render_host(want.host.published, self.config)}

    def plan(self, want: LbState, have: NftObserved, full: bool = False) -> NftPlan:
        tables, rules = self.render(want)
        ops = []
        for ns in sorted(set(tables) | set(have.tables)):
            op = plan_sandbox(ns, tables.get(ns), have.tables.get(ns), full)
            if op is not None:
                ops.append(op)
        # sandboxes hold no iptables load-balancing chains under this backend (a previous
        # --lb iptables run may have left some: the plan removes them)
        p = NftPlan(tuple(ops), tuple(ipt_plan(rules, have.rules, full)))
        self._planned = (tables, p)
        return p

    def observe(self) -> NftObserved:
        out = NftObserved(rules=self.ipt.observe())
        for ns in self.runner.namespaces():
            if ns == HOST:
                continue
            try:
                table = parse_ruleset(self.nft.list_ruleset(ns))
            except FileNotFoundError:
                continue
            if table is not None:
                out.tables[ns] = table
        return out

    def apply(self, p: NftPlan, have: NftObserved) -> tuple[NftObserved, list[str]]:
        planned, self._planned = self._planned, None
        wanted = planned[0] if planned is not None and planned[1] is p else None
        tables = dict(have.tables)
        skipped: list[str] = []
        for op in p.tables:
            try:
                if op.script:
                    self.nft.script(op.ns, op.script)
                self.nft.elements(op.ns, op.elements)
            except FileNotFoundError:
                skipped.append(op.ns)
                tables.pop(op.ns, None)
                continue
            now = wanted.get(op.ns) if wanted is not None else _reread(self.nft, op.ns)
            if now is None:  # tables removed (a sandbox that is no longer wanted)
                tables.pop(op.ns, None)
            else:
                tables[op.ns] = now
        if wanted is not None:
            # a namespace the plan left alone already holds exactly its render: adopt the
            # render, so the next plan may compare only what the next render touches
            for ns, t in wanted.items():
                if t is not None and ns not in skipped and ns in tables:
                    tables[ns] = t
        self.nft.forget(tables)
        rules, more = self.ipt.apply(p.rules, have.rules)
        return NftObserved(tables, rules), skipped + more

    def cleanup(self) -> list[str]:
        """Remove this backend's tables in every sandbox, and every owned iptables
        chain."""
        removed = []
        for ns in self.runner.namespaces():
            if ns == HOST:
                continue
            try:
                seen = parse_ruleset(self.nft.list_ruleset(ns))
                if seen is not None and seen.tables:
                    self.nft.script(ns, "".join(f"delete table ip {t}\n"
                                                for t in sorted(seen.tables)))
                    removed += [f"{ns}:table ip {t}" for t in sorted(seen.tables)]
            except FileNotFoundError:
                continue
        self.nft.forget(())
        return removed + self.ipt.cleanup()


def _reread(nft: NftRunner, ns: str) -> NftSandbox | None:
    return parse_ruleset(nft.list_ruleset(ns))
