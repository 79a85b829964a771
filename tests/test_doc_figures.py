"""Every measured figure quoted in README.md and docs/ is one the benchmark runner wrote.

``docs/benchmarks.md`` is what ``make bench`` writes; a figure quoted elsewhere has to be
one of its numbers, so a rerun that changes a figure leaves no stale copy behind. A
measured figure is a decimal with four or more significant digits (the runner prints
four); addresses and versions are not figures.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOT_FIGURES = {"20.10"}  # Docker's API/engine version
DECIMAL = re.compile(r"(?<![\w.])(\d+\.\d+(?:e[+-]\d+)?)(?![\w.]|\.\d)")


def quoted_figures(text: str) -> list[tuple[int, str]]:
    out = []
    for m in DECIMAL.finditer(text):
        x = m.group(1)
        digits = len(x.split("e")[0].replace(".", "").lstrip("0"))
        if digits >= 4 and x not in NOT_FIGURES:
            out.append((text.count("\n", 0, m.start()) + 1, x))
    return out


def test_quoted_figures_are_on_the_benchmark_page():
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    on_page = set(re.findall(r"\d+\.\d+(?:e[+-]\d+)?", page))
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    stale = [f"{p.relative_to(ROOT)}:{line}: {x}" for p in docs if p.name != "benchmarks.md"
             for line, x in quoted_figures(p.read_text()) if x not in on_page]
    assert not stale, "figures not on docs/benchmarks.md (rerun or requote):\n" + "\n".join(stale)


def test_the_check_sees_figures_and_skips_addresses():
    text = "took 0.6819 s (p50), 303.8 ms; at 192.0.2.1 over 802.1Q, dockerd 20.10, 1.5x"
    assert [x for _, x in quoted_figures(text)] == ["0.6819", "303.8"]
