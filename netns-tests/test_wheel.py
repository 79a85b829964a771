"""Issue 19: meshnet installs as a Python user expects. Build the wheel, install it into a
fresh venv outside the checkout, and run a one-host lab (its agent from that venv)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import unique

from meshnet.lab.lab import Lab

CHECKOUT = Path(__file__).resolve().parent.parent


def run(*cmd, **kw):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600,
                       **kw)
    assert r.returncode == 0, f"{cmd}: {r.stdout[-2000:]} {r.stderr[-2000:]}"
    return r.stdout


@pytest.fixture
def installed(tmp_path_factory):
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"  # build from a copy: setuptools writes build/ next to the sources
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(CHECKOUT / name, src / name)
    shutil.copytree(CHECKOUT / "meshnet", src / "meshnet",
                    ignore=shutil.ignore_patterns("__pycache__"))
    run(sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", work / "dist",
        src, cwd=work)
    wheel = next((work / "dist").glob("meshnet-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "meshnet/data/meshnet.service" in names and "meshnet/data/config.toml" in names
    assert not any(n.startswith(("tests/", "bench/", "netns-tests/")) for n in names)
    venv = work / "venv"
    run(sys.executable, "-m", "venv", venv)
    # dependencies as pinned by this checkout's venv (no network needed for them)
    reqs = run(sys.executable, "-m", "pip", "freeze", "--exclude-editable")
    (work / "reqs.txt").write_text(
        "".join(ln + "\n" for ln in reqs.splitlines()
                if ln.split("==")[0].lower() in {"pyroute2", "msgpack", "cryptography",
                                                 "dnslib", "cffi", "pycparser", "scapy"}))
    run(venv / "bin/pip", "install", "-q", "--disable-pip-version-check", "-r",
        work / "reqs.txt", wheel, cwd=work)
    return work, venv


def test_wheel_installs_and_runs_an_agent_outside_the_checkout(installed):
    work, venv = installed
    meshnet = venv / "bin" / "meshnet"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    where = run(venv / "bin/python", "-c", "import meshnet; print(meshnet.__file__)",
                cwd=work, env=env)
    assert where.startswith(str(venv)), where
    # trace's packet library comes with the package (not only with the dev extras)
    run(venv / "bin/python", "-c", "from scapy.arch.common import compile_filter",
        cwd=work, env=env)
    assert run(meshnet, "--version", cwd=work, env=env).startswith("meshnet ")
    out = json.loads(run(meshnet, "install-unit", "--unit-dir", work / "unit", "--config-dir",
                         work / "etc", "--json", cwd=work, env=env))
    assert set(out) == {str(work / "unit/meshnet.service"), str(work / "etc/config.toml")}
    unit = (work / "unit/meshnet.service").read_text()
    assert f"ExecStart={meshnet} agent --config {work / 'etc/config.toml'}" in unit
    name = unique()
    try:
        run(meshnet, "lab", "up", "--name", name, "--hosts", "1", cwd=work, env=env)
        lab = Lab.load(name)
        pid = lab.agent_pid("h1")
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert cmdline[0].decode().startswith(str(venv)), cmdline  # the venv's agent
        status = json.loads(run(meshnet, "--json", "--api", lab.spec.api_socket("h1"),
                                "status", cwd=work, env=env))
        assert status["node"] == "h1" and status["synced"]
    finally:
        subprocess.run([meshnet, "lab", "down", "--name", name], capture_output=True,
                       cwd=work, env=env, timeout=120)
