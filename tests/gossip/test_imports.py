"""Import boundary: the protocol core is sans-IO (style.md principle 1)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import meshnet.gossip

PKG = Path(meshnet.gossip.__file__).parent
SANS_IO = ["awareness", "broadcast", "codec", "config", "core", "events", "lzw", "messages", "probe", "sync",
           "security", "state", "stream", "suspicion"]
FORBIDDEN = {"asyncio", "socket", "time", "selectors", "threading", "subprocess", "pyroute2"}


def imported(mod: str) -> list[tuple[str, list[str]]]:
    tree = ast.parse((PKG / f"{mod}.py").read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.module, [a.name for a in node.names]))
    return out


@pytest.mark.parametrize("mod", SANS_IO)
def test_sans_io_modules_import_no_io_clock_or_global_random(mod):
    for name, names in imported(mod):
        top = name.split(".")[0]
        assert top not in FORBIDDEN, f"{mod} imports {name}"
        if top == "random":
            assert names == ["Random"], f"{mod} uses the global random module"
        if top == "os":
            assert mod == "security", f"{mod} imports os"  # only for AES-GCM nonces


def test_adapter_is_thin():
    assert len((PKG / "adapter.py").read_text().splitlines()) <= 320
