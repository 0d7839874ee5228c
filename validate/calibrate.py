"""Calibrate the validator's tolerance bands from repeated seeds.

    python -m validate.calibrate                 # every calibrated quantity, 30 seeds
    python -m validate.calibrate lora.merge --seeds 10

For each quantity (an error measured by an invariant's own measurement function) it prints
the mean, the standard deviation over seeds, and the band mean + k * sigma (and, for
two-sided bands, mean - k * sigma). The bands are then written, rounded outward, next to
their checks in validate/invariants/*.py with these figures.
"""
from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time

from .invariants import GROUPS

K = 6.0


def quantities(prefixes: list[str]) -> dict:
    found = {}
    wanted = {p.split(".")[0] for p in prefixes}
    for group in GROUPS:
        if wanted and group not in wanted:
            continue
        module = importlib.import_module(f"validate.invariants.{group}")
        for name, fn in getattr(module, "CALIBRATION", {}).items():
            if not prefixes or any(name.startswith(p) for p in prefixes):
                found[name] = fn
    return found


def calibrate(fn, seeds: int) -> list[float]:
    return [float(fn(seed)) for seed in range(seeds)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m validate.calibrate", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="quantity name prefixes (default: all)")
    parser.add_argument("--seeds", type=int, default=30)
    parser.add_argument("-k", type=float, default=K)
    args = parser.parse_args(argv)
    from .models import quiet

    quiet()
    found = quantities(args.names)
    if not found:
        print(f"no calibrated quantity matches {' '.join(args.names)}", file=sys.stderr)
        return 2
    print(f"{'quantity':28} {'seeds':>5} {'mean':>11} {'sigma':>11} {'min':>11} {'max':>11} "
          f"{'mean-k*s':>11} {'mean+k*s':>11}  (k={args.k:g})")
    for name, fn in found.items():
        start = time.perf_counter()
        values = calibrate(fn, args.seeds)
        mean, sigma = statistics.fmean(values), statistics.stdev(values)
        print(f"{name:28} {len(values):5d} {mean:11.6g} {sigma:11.3g} {min(values):11.6g} {max(values):11.6g} "
              f"{mean - args.k * sigma:11.6g} {mean + args.k * sigma:11.6g}  ({time.perf_counter() - start:.1f} s)",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
