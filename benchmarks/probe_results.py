"""Regenerate the committed probe rows in data/probes/results.csv with `probe` sweeps.

Runs these commands (printed as it goes), each into its own temporary table, then appends
all rows to the results table in this order:

  CPU, small model (real steps), and the same configurations traced on fake tensors
  (the two must agree to the byte):
    probe --model qwen2.5-0.5b --method all --seq-len 256 --device cpu  [--gradient-checkpointing]
    probe --model qwen2.5-0.5b --method all --seq-len 256 --device fake [--gradient-checkpointing]
  Fake device, the catalog's 7B and 8B models under every method:
    probe --model M --method all --batch-size 1,4 --seq-len 512,2048 --device fake [--gradient-checkpointing]
    for M in llama-2-7b, mistral-7b, qwen2.5-7b, llama-3.1-8b

    python benchmarks/probe_results.py              # everything (about 40 min on 2 cores)
    python benchmarks/probe_results.py --only cpu   # or: fake-small, fake-7b
    python benchmarks/probe_results.py --jobs 2 --output new-results.csv
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SMALL = "qwen2.5-0.5b"
LARGE = ("llama-2-7b", "mistral-7b", "qwen2.5-7b", "llama-3.1-8b")


def commands(only: str | None) -> list[tuple[str, list[str]]]:
    """(group, probe arguments) in the order the rows are appended."""
    out = []
    for gc in ([], ["--gradient-checkpointing"]):
        out.append(("cpu", ["--model", SMALL, "--method", "all", "--seq-len", "256",
                            "--device", "cpu", *gc]))
    for gc in ([], ["--gradient-checkpointing"]):
        out.append(("fake-small", ["--model", SMALL, "--method", "all", "--seq-len", "256",
                                   "--device", "fake", *gc]))
    for model in LARGE:
        for gc in ([], ["--gradient-checkpointing"]):
            out.append(("fake-7b", ["--model", model, "--method", "all", "--batch-size", "1,4",
                                    "--seq-len", "512,2048", "--device", "fake", *gc]))
    return [c for c in out if only is None or c[0] == only]


def probe_exe() -> list[str]:
    exe = shutil.which("probe")
    return [exe] if exe else [sys.executable, "-m", "probes.cli"]


def run(args: list[str], output: Path) -> float:
    start = time.perf_counter()
    subprocess.run(probe_exe() + args + ["--output", str(output)], check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("cpu", "fake-small", "fake-7b"))
    parser.add_argument("--jobs", type=int, default=2, help="probe processes at a time")
    parser.add_argument("--output", default=None, help="table to append to (default: data/probes/results.csv)")
    args = parser.parse_args()

    from probes import store

    todo = commands(args.only)
    with tempfile.TemporaryDirectory(prefix="probe-rows-") as tmp:
        parts = [Path(tmp) / f"part{i:02d}.csv" for i in range(len(todo))]

        def job(i: int) -> None:
            group, probe_args = todo[i]
            print(f"$ probe {' '.join(probe_args)}", flush=True)
            # CPU steps are timed: never run them beside another job.
            seconds = run(probe_args, parts[i])
            print(f"  done in {seconds:.0f} s ({group})", flush=True)

        cpu_jobs = [i for i, (g, _) in enumerate(todo) if g == "cpu"]
        for i in cpu_jobs:
            job(i)
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            list(pool.map(job, [i for i in range(len(todo)) if i not in cpu_jobs]))
        rows = [row for part in parts for row in store.load_rows(part)]
        path = store.append(rows, args.output)
    print(f"appended {len(rows)} rows to {path}")


if __name__ == "__main__":
    main()
