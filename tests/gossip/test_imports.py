"""Import boundary: the gossip cores are sans-IO (style.md principle 1), with everything
they import (see tests/sansio.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

import meshnet.gossip
from tests.sansio import violations

PKG = Path(meshnet.gossip.__file__).parent
#: Every module of the package but the adapter (the package docstring: "all sans-IO
#: except adapter"), so a new module is checked without being listed.
SANS_IO = sorted(p.stem for p in PKG.glob("*.py") if p.stem not in {"__init__", "adapter"})
ALLOW = {
    # AES-GCM nonces (and fresh keys) from os.urandom: a repeated nonce under one key is
    # fatal, so they must not come from the core's seeded Random. urandom has no clock
    # and never blocks after boot; tests pass nonce= to make frames reproducible.
    ("meshnet.gossip.security", "os"): "os.urandom for AES-GCM nonces",
}


def test_the_list_is_not_empty():
    assert {"core", "tables", "security", "sync"} <= set(SANS_IO)


@pytest.mark.parametrize("mod", SANS_IO)
def test_sans_io_modules_import_no_io_clock_or_global_random(mod):
    assert violations(f"meshnet.gossip.{mod}", ALLOW) == []


def test_adapter_is_thin():
    assert len((PKG / "adapter.py").read_text().splitlines()) <= 320
