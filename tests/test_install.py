"""`meshnet install-unit`: the shipped unit and config, pointed at this installation."""

from __future__ import annotations

import shlex

import pytest

from meshnet import cli
from meshnet.errors import Conflict
from meshnet.install import install_unit, meshnet_command


def test_writes_unit_running_this_meshnet_and_sample_config(tmp_path):
    done = install_unit(tmp_path / "u", tmp_path / "c")
    unit = (tmp_path / "u" / "meshnet.service").read_text()
    assert done[str(tmp_path / "c" / "config.toml")].startswith("written")
    exec_line = next(ln for ln in unit.splitlines() if ln.startswith("ExecStart="))
    argv = shlex.split(exec_line[len("ExecStart="):])
    assert argv == [*meshnet_command(), "agent", "--config", str(tmp_path / "c/config.toml")]
    assert "Type=notify" in unit and "StateDirectory=meshnet" in unit
    assert "join = []" in (tmp_path / "c" / "config.toml").read_text()


def test_keeps_an_existing_config_and_refuses_to_replace_a_unit(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "config.toml").write_text("node = 'mine'\n")
    install_unit(tmp_path / "u", tmp_path / "c")
    assert (tmp_path / "c" / "config.toml").read_text() == "node = 'mine'\n"
    with pytest.raises(Conflict):
        install_unit(tmp_path / "u", tmp_path / "c")
    install_unit(tmp_path / "u", tmp_path / "c", force=True)
    assert (tmp_path / "c" / "config.toml").read_text() == "node = 'mine'\n"


def test_cli_reports_a_conflict_as_one_line(tmp_path, capsys):
    argv = ["install-unit", "--unit-dir", str(tmp_path / "u"), "--config-dir",
            str(tmp_path / "c")]
    assert cli.main(argv) == 0
    assert cli.main(argv) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_docker_adds_the_plugin_socket_unit_ordered_before_docker(tmp_path):
    done = install_unit(tmp_path / "units", tmp_path / "etc", docker=True)
    sock = (tmp_path / "units" / "meshnet.socket").read_text()
    unit = (tmp_path / "units" / "meshnet.service").read_text()
    assert "ListenStream=/run/docker/plugins/meshnet.sock" in sock
    assert "Before=docker.service" in sock and "Before=docker.service" in unit
    assert "After=network-online.target\n" in unit and "After=docker" not in unit
    assert str(tmp_path / "units" / "meshnet.socket") in done
    install_unit(tmp_path / "other", tmp_path / "etc")  # without --docker: no socket unit
    assert not (tmp_path / "other" / "meshnet.socket").exists()
