"""The pure modules of meshnet.ipvs import no I/O (style rule 1)."""

import ast
import pathlib

import pytest

import meshnet.ipvs

PURE = ["state", "planner", "rules", "health"]
FORBIDDEN = {"asyncio", "socket", "time", "pyroute2", "subprocess", "threading"}


@pytest.mark.parametrize("mod", PURE)
def test_pure_modules_import_no_io(mod):
    path = pathlib.Path(meshnet.ipvs.__file__).parent / f"{mod}.py"
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    assert not names & FORBIDDEN, names & FORBIDDEN
