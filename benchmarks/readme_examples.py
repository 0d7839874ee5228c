"""Run README.md's `probe` and `validate` examples verbatim, as a user would, and time each.

The test suite runs the examples that take minutes (a real CPU step of a catalog model,
emulated on a CPU without native bf16) in a fast form on a tiny model
(tests/cli/test_readme.py); this script runs them as written. Output files go to a
temporary folder, never to the committed results table.

    python benchmarks/readme_examples.py            # every example
    python benchmarks/readme_examples.py --only cpu # the real CPU probes only
"""
from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def examples() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```console\n(.*?)```", readme, flags=re.S)
    lines = [line[2:] for block in blocks for line in block.splitlines() if line.startswith("$ ")]
    return [c.split("&&")[-1].strip() for c in lines if c.split("&&")[-1].strip().split()[0] in ("probe", "validate")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=None, help="run only the examples containing this word")
    args = parser.parse_args()
    chosen = [c for c in examples() if args.only is None or args.only in c.split()]
    with tempfile.TemporaryDirectory(prefix="readme-examples-") as tmp:
        for i, command in enumerate(chosen):
            argv = [str(Path(tmp) / f"{i}-{Path(a).name}") if a.startswith("/tmp/") else a for a in shlex.split(command)]
            if argv[0] == "probe" and "--output" not in argv:
                argv += ["--output", str(Path(tmp) / f"{i}-rows.csv")]
            module = {"probe": "probes.cli", "validate": "validate.cli"}[argv[0]]
            start = time.perf_counter()
            result = subprocess.run([sys.executable, "-m", module, *argv[1:]], capture_output=True, text=True, cwd=tmp)
            print(f"{time.perf_counter() - start:8.1f} s  exit {result.returncode}  {command}", flush=True)


if __name__ == "__main__":
    main()
