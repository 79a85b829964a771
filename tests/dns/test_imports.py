"""Import boundary: the DNS cores are sans-IO (style.md principle 1)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import meshnet.dns

PKG = Path(meshnet.dns.__file__).parent
SANS_IO = ["config", "records", "wire", "responder", "forwarder"]
FORBIDDEN = {"asyncio", "socket", "time", "selectors", "threading", "subprocess", "pyroute2",
             "os"}


@pytest.mark.parametrize("mod", SANS_IO)
def test_cores_import_no_io_clock_or_global_random(mod):
    tree = ast.parse((PKG / f"{mod}.py").read_text())
    for node in ast.walk(tree):
        names: list[tuple[str, list[str]]] = []
        if isinstance(node, ast.Import):
            names = [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [(node.module, [a.name for a in node.names])]
        for name, imported in names:
            top = name.split(".")[0]
            assert top not in FORBIDDEN, f"{mod} imports {name}"
            if top == "random":
                assert imported == ["Random"], f"{mod} uses the global random module"


def test_adapter_is_thin():
    assert len((PKG / "server.py").read_text().splitlines()) <= 400
