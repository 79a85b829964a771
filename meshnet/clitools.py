"""What every ``meshnet`` command line shares: the argument parser that reports a usage
error as one line (exit 2), JSON-or-text output and plain-text tables.

Below both ``meshnet.cli`` and ``meshnet.lab.cli`` (imports go only downwards)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn


class Parser(argparse.ArgumentParser):
    """argparse that reports errors as one line and exit status 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"meshnet: error: {message} (see '{self.prog} --help')\n")
        sys.exit(2)


def emit(args: argparse.Namespace, data: Any, text: str | Callable[[Any], str]) -> None:
    """``data`` as JSON with ``--json``, else the text (``text(data)`` if callable;
    nothing if empty)."""
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        out = text(data) if callable(text) else text
        if out:
            print(out)


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    cells = [list(map(str, header))] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells
    )
