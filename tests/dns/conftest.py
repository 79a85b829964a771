"""The ``slow`` marker: the large DNS fuzz run (~25 s). It runs in ``make test``; deselect
it in a quick edit loop with ``pytest -m "not slow" tests``."""

from __future__ import annotations


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long fuzz runs (deselect with -m 'not slow')")
