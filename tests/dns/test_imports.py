"""Import boundary: the DNS cores are sans-IO (style.md principle 1), with everything they
import (see tests/sansio.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

import meshnet.dns
from tests.sansio import violations

PKG = Path(meshnet.dns.__file__).parent
SANS_IO = ["config", "records", "wire", "responder", "forwarder"]


@pytest.mark.parametrize("mod", SANS_IO)
def test_cores_import_no_io_clock_or_global_random(mod):
    assert violations(f"meshnet.dns.{mod}") == []


def test_adapter_is_thin():
    assert len((PKG / "server.py").read_text().splitlines()) <= 400
