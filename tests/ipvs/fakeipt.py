"""An in-memory iptables: applies ``iptables-restore --noflush`` input to per-namespace
tables of chains and prints ``iptables-save``. Strict where the real one is: appending to
a missing chain, deleting a missing rule, or deleting a non-empty or referenced chain
fails the table's transaction (nothing of that table is applied)."""

from __future__ import annotations

import copy

BUILTIN = {
    "nat": ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"],
    "filter": ["INPUT", "FORWARD", "OUTPUT"],
    "mangle": ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"],
}


class RestoreError(Exception):
    pass


def empty_tables() -> dict[str, dict[str, list[str]]]:
    return {t: {c: [] for c in cs} for t, cs in BUILTIN.items()}


class FakeIptables:
    def __init__(self, namespaces=("",)) -> None:
        self.ns = {n: empty_tables() for n in namespaces}
        self.restores: list[tuple[str, str]] = []
        self.fail_next = False

    # IptablesRunner
    def namespaces(self) -> list[str]:
        return sorted(self.ns)

    def restore(self, ns: str, text: str) -> None:
        if ns not in self.ns:
            raise FileNotFoundError(ns)
        if self.fail_next:
            self.fail_next = False
            raise RestoreError("injected failure")
        self.restores.append((ns, text))
        tables = self.ns[ns]
        work = None
        table = ""
        for n, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("*"):
                table = line[1:]
                work = copy.deepcopy(tables.get(table, {}))
                continue
            if line == "COMMIT":
                tables[table] = work
                work = None
                continue
            if work is None:
                raise RestoreError(f"line {n}: outside a table")
            if line.startswith(":"):
                name = line[1:].split()[0]
                if name not in BUILTIN.get(table, []):
                    work[name] = []  # create or flush
                continue
            op, rest = line.split(" ", 1)
            if op == "-X":
                name = rest.strip()
                if name not in work:
                    raise RestoreError(f"line {n}: no chain {name}")
                if work[name]:
                    raise RestoreError(f"line {n}: chain {name} not empty")
                if any(f"-j {name}" == r[-len(name) - 3:] or f"-j {name} " in r
                       for c, rules in work.items() for r in rules if c != name):
                    raise RestoreError(f"line {n}: chain {name} still referenced")
                del work[name]
                continue
            chain, _, spec = rest.partition(" ")
            if chain not in work:
                raise RestoreError(f"line {n}: no chain {chain}")
            if op == "-A":
                self._check_target(work, spec, n)
                work[chain].append(spec)
            elif op == "-I":
                pos, _, spec = spec.partition(" ")
                self._check_target(work, spec, n)
                work[chain].insert(int(pos) - 1, spec)
            elif op == "-D":
                if spec not in work[chain]:
                    raise RestoreError(f"line {n}: no such rule in {chain}: {spec}")
                work[chain].remove(spec)
            elif op == "-F":
                work[chain] = []
            else:
                raise RestoreError(f"line {n}: unsupported {op}")
        if work is not None:
            raise RestoreError("missing COMMIT")

    @staticmethod
    def _check_target(work, spec, n):
        if "-j " not in spec:
            return
        target = spec.rsplit("-j ", 1)[1].split()[0]
        if target.startswith("MESHNET-") and target not in work:
            raise RestoreError(f"line {n}: jump to missing chain {target}")

    def save(self, ns: str) -> str:
        if ns not in self.ns:
            raise FileNotFoundError(ns)
        out = []
        for table in ("nat", "filter"):
            chains = self.ns[ns][table]
            out.append(f"*{table}")
            builtin = BUILTIN[table]
            out += [f":{c} ACCEPT [0:0]" for c in builtin]
            users = sorted(c for c in chains if c not in builtin)
            out += [f":{c} - [0:0]" for c in users]
            for c in builtin + users:
                out += [f"-A {c} {r}" for r in chains[c]]
            out.append("COMMIT")
        return "\n".join(out) + "\n"

    def chains(self, ns: str, table: str = "nat") -> dict[str, list[str]]:
        return self.ns[ns][table]
