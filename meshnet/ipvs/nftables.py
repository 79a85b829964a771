"""The nftables backend (``--lb nftables``): sandboxes in nftables maps, the host's
published ports in iptables. Layout and reasons: :mod:`meshnet.ipvs.nftrules`.

Same contract as the other backends (observe / plan / apply / cleanup). A plan is one
:class:`~meshnet.ipvs.nftrules.NftOp` per sandbox that changes (an ``nft -f`` script for
structure, then element changes over netlink) plus the iptables transactions of the host
namespace (and the removal of iptables load-balancing chains a previous ``--lb iptables``
run left in sandboxes). ``nft list`` is read only on full syncs and at start; between
them the backend trusts what it applied, as the iptables backend does.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field

from meshnet import netns
from meshnet.errors import ConfigError, KernelError
from meshnet.ipvs.commitack import run_plain
from meshnet.ipvs.iptables import IptablesBackend, Observed, Restore
from meshnet.ipvs.iptables import plan as ipt_plan
from meshnet.ipvs.nftnl import ElementWriter
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
