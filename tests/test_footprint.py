"""An agent must not load aiohttp (its Docker client and API server are meshnet's own),
nor cryptography before a gossip key is installed: about 30 MB of resident memory
between them (issue 10's RSS goal)."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import sys
import meshnet.agent, meshnet.api.server, meshnet.cluster
import meshnet.runtime.docker, meshnet.runtime.watcher
from meshnet.gossip.security import Keyring
heavy = sorted(m for m in ("aiohttp", "cryptography", "yarl", "multidict") if m in sys.modules)
print("heavy:" + ",".join(heavy))
Keyring([b"k" * 16])
print("crypto-after-key:" + str("cryptography" in sys.modules))
"""


def test_agent_imports_stay_light():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["heavy:", "crypto-after-key:True"]
