"""Validator speed: the whole `validate` run as a cold process, and each invariant in-process.

Target (issue: the validator): the whole `validate` run under 60 s on a 2-core CPU machine.
Prints the figures; it is a benchmark, not a timed test.

    python benchmarks/validate_speed.py            # cold `validate --json` + per-invariant times
    python benchmarks/validate_speed.py --cold-only
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections import defaultdict

TARGET_S = 60.0


def cold_run() -> tuple[float, int, dict]:
    exe = shutil.which("validate")
    cmd = [exe] if exe else [sys.executable, "-c", "from validate.cli import main; main()"]
    start = time.perf_counter()
    proc = subprocess.run(cmd + ["--json", "-q"], capture_output=True, text=True)
    wall = time.perf_counter() - start
    return wall, proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else {}


def in_process() -> tuple[float, list]:
    start = time.perf_counter()
    from validate import models
    from validate.invariants import run, select

    invariants = select()
    models.quiet()
    imported = time.perf_counter() - start
    return imported, run(invariants)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cold-only", action="store_true")
    args = parser.parse_args()

    wall, code, data = cold_run()
    results = data.get("results", [])
    held = sum(r["passed"] and (r["control"] or {}).get("rejected", False) for r in results)
    print(f"validate (cold process): {wall:.1f} s, exit {code}, {held}/{len(results)} invariants hold "
          f"with their controls rejected; target < {TARGET_S:.0f} s: {'met' if wall < TARGET_S else 'MISSED'}")
    for r in results:
        if not r["passed"]:
            print(f"  failing: {r['name']}: {r['detail']}")
    if args.cold_only:
        return 0

    imported, outcomes = in_process()
    print(f"\nin-process: imports + group modules {imported:.1f} s")
    per_group = defaultdict(float)
    for o in outcomes:
        per_group[o.group] += o.seconds
    for group, seconds in per_group.items():
        print(f"  {group:8} {seconds:6.1f} s")
    print("slowest invariants (check + control, first use builds the shared models):")
    for o in sorted(outcomes, key=lambda o: -o.seconds)[:8]:
        name = o.result.name if hasattr(o, "result") else o.name
        print(f"  {o.seconds:6.2f} s  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
