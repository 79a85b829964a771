"""The command line's surface: help on every option, global options in either place."""

from __future__ import annotations

import argparse

import pytest

from meshnet import __version__, cli


def _parsers(p: argparse.ArgumentParser, path: str = "meshnet"):
    yield path, p
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{path} {name}")


def test_every_option_and_argument_has_a_help_line():
    missing = [
        f"{path}: {'/'.join(a.option_strings) or a.dest}"
        for path, p in _parsers(cli.build_parser())
        for a in p._actions
        if not isinstance(a, argparse._SubParsersAction) and not (a.help and a.help.strip())
    ]
    assert not missing, missing


@pytest.mark.parametrize("argv", [
    ["--api", "/s.sock", "--json", "members"],
    ["members", "--api", "/s.sock", "--json"],
    ["--json", "members", "--api", "/s.sock"],
    ["--api", "/s.sock", "network", "ls", "--json"],
])
def test_global_options_before_or_after_the_command(argv, monkeypatch):
    got = {}

    def capture(args):
        got["api"], got["json"] = args.api, args.json

    for name in ("cmd_members", "cmd_network_ls"):
        monkeypatch.setattr(cli, name, capture)
    assert cli.main(argv) == 0
    assert got == {"api": "/s.sock", "json": True}


def test_global_option_for_a_command_without_it_is_a_user_error(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--api", "/s.sock", "keys", "generate"])
    assert exc.value.code == 2
    assert "--api does not apply" in capsys.readouterr().err


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"meshnet {__version__}"
