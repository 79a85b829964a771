"""``meshnet install-unit``: write the systemd unit and a sample config that ship in the
package (``meshnet/data/``), so a ``pip install`` is all an install needs.

The unit's ``ExecStart`` is this installation's own ``meshnet`` (the script next to the
running interpreter, or ``python -m meshnet``), whatever venv or prefix it lives in. An
existing config is never overwritten; an existing unit only with ``force``.
"""

from __future__ import annotations

import shlex
import sys
from importlib import resources
from pathlib import Path

from meshnet.errors import Conflict, UserError

UNIT_NAME = "meshnet.service"
SOCKET_NAME = "meshnet.socket"
CONFIG_NAME = "config.toml"
SHIPPED_EXEC = "ExecStart=/usr/local/bin/meshnet agent --config /etc/meshnet/config.toml"


def data(name: str) -> str:
    return resources.files("meshnet").joinpath("data", name).read_text()


def meshnet_command() -> list[str]:
    script = Path(sys.executable).with_name("meshnet")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "meshnet"]


def unit_text(config_path: Path) -> str:
    text = data(UNIT_NAME)
    if SHIPPED_EXEC not in text:
        raise AssertionError("bug: the shipped unit's ExecStart line changed")
    cmd = shlex.join([*meshnet_command(), "agent", "--config", str(config_path)])
    return text.replace(SHIPPED_EXEC, f"ExecStart={cmd}")


def install_unit(unit_dir: Path, config_dir: Path, force: bool = False,
                 docker: bool = False) -> dict[str, str]:
    """Write the unit (with ``docker``, also the plugin's socket unit) and (if absent)
    the sample config; returns what was done to each."""
    unit, config = unit_dir / UNIT_NAME, config_dir / CONFIG_NAME
    sock = unit_dir / SOCKET_NAME
    for path in (unit, sock) if docker else (unit,):
        if path.exists() and not force:
            raise Conflict(f"{path} exists (use --force to replace it)")
    out: dict[str, str] = {}
    try:
        unit_dir.mkdir(parents=True, exist_ok=True)
        config_dir.mkdir(parents=True, exist_ok=True)
        unit.write_text(unit_text(config))
        unit.chmod(0o644)
        out[str(unit)] = "written"
        if docker:
            sock.write_text(data(SOCKET_NAME))
            sock.chmod(0o644)
            out[str(sock)] = "written (set runtime = \"docker\" in the config)"
        if config.exists():
            kept = "kept (exists)"
        else:
            config.write_text(data(CONFIG_NAME))
            config.chmod(0o644)
            kept = "written (edit node and join)"
    except OSError as exc:
        raise UserError(f"cannot install: {exc}") from None
    out[str(config)] = kept
    return out
