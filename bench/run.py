"""Run the benchmarks and rewrite docs/benchmarks.md.

    python -m bench.run            # every bench/bench_*.py
    python -m bench.run lab gossip  # only these; other sections keep their last figures
    python -m bench.run --render    # rewrite benchmarks.md from benchmarks.json
    python -m bench.run --update X  # re-measure some rows of X (env), keep its others

Results are also kept in docs/benchmarks.json so that a partial run keeps the rest.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def machine() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"kernel": platform.release(), "cpus": str(os.cpu_count()), "cpu": cpu,
            "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def available() -> list[str]:
    return sorted(p.stem[6:] for p in (ROOT / "bench").glob("bench_*.py"))


def render(results: dict[str, dict]) -> str:
    out = ["# Benchmarks", "",
           "Every figure below was produced by `make bench` (or `python -m bench.run NAME`), "
           "which rewrites this file. Each benchmark measures meshnet and its anchor side by "
           "side in the same run; the ratio is meshnet / anchor. A row whose anchor says "
           "\"goal\" compares with nothing measured: its goal column is the target.", ""]
    for name in sorted(results):
        entry = results[name]
        m = entry["machine"]
        out += [f"## {name}", "",
                f"Command: `{entry['command']}`  ",
                f"Machine: {m['cpus']} CPUs ({m['cpu']}), Linux {m['kernel']}, "
                f"Python {m['python']}, run {m['date']}", "",
                "| metric | meshnet | anchor | anchor value | ratio | goal |",
                "|---|---|---|---|---|---|"]
        for r in entry["results"]:
            ratio = "n/a" if not r["anchor"] else f"{r['ratio']:.3g}"
            value = ("-" if r["anchor_name"].startswith("goal") and not r["anchor"]
                     else f"{r['anchor']:.4g} {r['unit']}")
            out.append(f"| {r['metric']} | {r['meshnet']:.4g} {r['unit']} | {r['anchor_name']} | "
                       f"{value} | {ratio} | {r['goal']} |")
        notes = [r["notes"] for r in entry["results"] if r.get("notes")]
        if notes:
            out += [""] + [f"- {n}" for n in notes]
        out.append("")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    if argv == ["--render"]:  # rewrite the page from docs/benchmarks.json only
        store = DOCS / "benchmarks.json"
        (DOCS / "benchmarks.md").write_text(render(json.loads(store.read_text())))
        return 0
    update = "--update" in argv  # replace only the rows measured now, keep the others
    argv = [a for a in argv if a != "--update"]
    names = argv or available()
    unknown = set(names) - set(available())
    if unknown:
        print(f"unknown benchmark(s): {', '.join(sorted(unknown))}; have: {', '.join(available())}",
              file=sys.stderr)
        return 2
    store = DOCS / "benchmarks.json"
    results = json.loads(store.read_text()) if store.exists() else {}
    fresh_entries: dict[str, dict] = {}
    for name in names:
        print(f"== bench {name}", flush=True)
        mod = importlib.import_module(f"bench.bench_{name}")
        rs = mod.run()
        for r in rs:
            print(f"   {r.metric}: meshnet {r.meshnet:.4g} {r.unit}, {r.anchor_name} "
                  f"{r.anchor:.4g} {r.unit}, ratio {r.ratio:.3g}", flush=True)
        env = " ".join(f"{k}={v}" for k, v in sorted(os.environ.items())
                       if k.startswith(("MESHNET_BENCH_", "MESHNET_SIM_")))
        command = f"{env + ' ' if env else ''}.venv/bin/python -m bench.run " \
                  f"{'--update ' if update else ''}{name}"
        rows = [r.to_dict() for r in rs]
        old = results.get(name)
        if update and old:
            fresh = {r["metric"]: r for r in rows}
            kept = [fresh.pop(r["metric"], r) for r in old["results"]]
            rows = kept + list(fresh.values())
            command = f"{old['command']}; then {command} (the rows it measured)"
        fresh_entries[name] = {"command": command, "machine": machine(), "results": rows}
    DOCS.mkdir(exist_ok=True)
    # read the store again: another benchmark may have written its section meanwhile
    results = json.loads(store.read_text()) if store.exists() else {}
    results.update(fresh_entries)
    store.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    (DOCS / "benchmarks.md").write_text(render(results))
    subprocess.run([sys.executable, "-m", "meshnet.testing.leftovers", "snapshot"],
                   capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
