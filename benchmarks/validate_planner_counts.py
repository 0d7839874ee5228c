"""Planner vs peft parameter counts over the full matrix (a benchmark: about a minute).

`validate` checks every catalog model with QUICK_CONFIGS and the tests add WIDE_CONFIGS;
this script runs every model x {LoRA, DoRA} x {all-linear, attention, mlp} x ranks
{4, 8, 16, 64, 256} and prints the mismatches (none expected) and the time.

    python benchmarks/validate_planner_counts.py
    python benchmarks/validate_planner_counts.py --models qwen2.5-0.5b phi-3-mini
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*")
    parser.add_argument("--ranks", nargs="*", type=int, default=[4, 8, 16, 64, 256])
    args = parser.parse_args()

    from planner import model_names
    from validate import models
    from validate.invariants import planner as P

    models.quiet()
    names = args.models or model_names()
    configs = [P.Config(dora, targets, rank) for dora, targets, rank
               in itertools.product((False, True), ("all-linear", "attention", "mlp"), args.ranks)]
    start = time.perf_counter()
    total = bad = 0
    for name in names:
        t0 = time.perf_counter()
        pairs = P.count_pairs([name], configs)
        wrong = [p for p in pairs if not p.equal]
        total, bad = total + len(pairs), bad + len(wrong)
        print(f"{name:14} {len(pairs):4d} combinations, {len(wrong)} mismatches  ({time.perf_counter() - t0:.1f} s)",
              flush=True)
        for p in wrong[:3]:
            print(f"    {p}")
    print(f"\n{total} combinations over {len(names)} models, {bad} mismatches, {time.perf_counter() - start:.1f} s")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
