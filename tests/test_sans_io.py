"""Import boundary of the pure modules outside gossip/dns/ipvs/trace/runtime (those have
their own test_imports or sans-IO test): the model, and the desired-state and plan halves
of the reconcilers (style rules 1 and 3), with everything they import. Also checks that
the closure walk of tests/sansio.py finds what it must."""

from __future__ import annotations

import pytest

from tests.sansio import violations

PURE = [
    "meshnet.model",
    "meshnet.keys",
    "meshnet.vxlan.state",
    "meshnet.vxlan.plan",
    "meshnet.vxlan.ipam",
    "meshnet.macvlan.state",
    "meshnet.gwbridge.state",
    "meshnet.dockerplugin.protocol",
    "meshnet.lab.topology",
]


@pytest.mark.parametrize("mod", PURE)
def test_pure_modules_import_no_io(mod):
    assert violations(mod) == []


FAKE = {
    "pkg/__init__.py": "",
    "pkg/core.py": "from pkg import helpers\nimport pkg.sub.leaf\n",
    "pkg/helpers.py": "def f():\n    from .deep import g\n",
    "pkg/deep.py": "import time\n",
    "pkg/sub/__init__.py": "import socket\n",
    "pkg/sub/leaf.py": ("from typing import TYPE_CHECKING\nimport random\n"
                        "if TYPE_CHECKING:\n    import asyncio\n"
                        "def pick(rng: random.Random):\n    return random.choice([1])\n"),
    "pkg/clean.py": ("import random\nfrom random import Random\n"
                     "def pick(rng: random.Random):\n    return rng.random()\n"),
}


def test_the_walk_follows_submodules_relative_and_function_imports_and_packages(tmp_path):
    for name, text in FAKE.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    found = violations("pkg.core", root=tmp_path)
    assert [v.split(":")[0] for v in found] == ["pkg.deep", "pkg.sub", "pkg.sub.leaf"]
    assert "(via pkg.core -> pkg.helpers -> pkg.deep)" in found[0]  # two levels down
    assert "import random" in found[2]  # random.choice; not asyncio (TYPE_CHECKING only)
    assert violations("pkg.clean", root=tmp_path) == []
    assert violations("pkg.core", {("pkg.deep", "time"): "why", ("pkg.sub", "socket"): "why",
                                   ("pkg.sub.leaf", "random"): "why"}, root=tmp_path) == []
