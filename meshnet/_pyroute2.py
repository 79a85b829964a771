"""Import pyroute2 without its package ``__init__``.

``pyroute2/__init__.py`` imports every subsystem it has (NDB with sqlite, IPDB, wireless,
devlink, ...), which costs about 6 MB of resident memory per process that meshnet never
uses. Registering a bare package module first lets ``pyroute2.iproute.linux``,
``pyroute2.netns`` and the rest import on their own. Done once, before any pyroute2
import, from ``meshnet/__init__.py``; if pyroute2 is already imported, nothing changes.
"""

from __future__ import annotations

import importlib.util
import sys
import types


def install() -> None:
    if "pyroute2" in sys.modules:
        return
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or spec.submodule_search_locations is None:
        return  # not installed: the import error will name it where it is used
    pkg = types.ModuleType("pyroute2")
    pkg.__path__ = list(spec.submodule_search_locations)
    pkg.__spec__ = spec
    pkg.__file__ = spec.origin
    pkg.__package__ = "pyroute2"
    sys.modules["pyroute2"] = pkg
