"""The pure modules of meshnet.ipvs import no I/O (style rule 1), nor does anything they
import (see tests/sansio.py)."""

import pytest

from tests.sansio import violations

PURE = ["state", "planner", "incremental", "rules", "nftrules", "nftnl", "health"]


@pytest.mark.parametrize("mod", PURE)
def test_pure_modules_import_no_io(mod):
    assert violations(f"meshnet.ipvs.{mod}") == []
