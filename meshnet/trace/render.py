"""The trace report for people (pure): one row per hop, what was expected and observed
under it, the verdict last. Works on the JSON report the API returns, so the CLI needs
nothing but this module."""

from __future__ import annotations

from typing import Any

STATUS = {True: "ok", False: "BROKEN", None: "-"}


def render(report: dict[str, Any]) -> str:
    exp = report.get("expected") or {}
    head = f"trace {report.get('trace', '?')}: {report.get('from', '?')} -> " \
           f"{report.get('dst', '?')}"
    if exp:
        head += (f"  [{exp.get('kind')} on network {exp.get('network')}, vni "
                 f"{exp.get('vni')}, {exp.get('proto')}]")
    lines = [head]
    hops = report.get("hops") or []
    width = max([len(h.get("name", "")) for h in hops] + [3])
    for i, h in enumerate(hops, 1):
        status = STATUS.get(h.get("ok"), "-")
        where = f"  @ {h['where']}" if h.get("where") else ""
        lines.append(f"{i:>2}  {h.get('name', ''):<{width}}  {status:<6}{where}")
        pad = " " * (width + 6)
        lines.append(f"{pad}expected: {h.get('expected', '')}")
        lines.append(f"{pad}observed: {h.get('observed', '')}")
        if h.get("cause") and h.get("ok") is not True:
            lines.append(f"{pad}cause:    {h['cause']}")
    v = report.get("verdict") or {}
    if v.get("ok"):
        lines.append(f"verdict: {v.get('cause', 'delivered')}")
    else:
        lines.append(f"verdict: BROKEN at {v.get('hop') or '?'}: {v.get('cause', '')}")
    files = report.get("pcap") or []
    if files:
        lines.append("captures: " + ", ".join(files))
    return "\n".join(lines)
