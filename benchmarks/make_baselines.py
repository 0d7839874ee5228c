"""Trace the baseline matrix (or the regression set) with the exact no-GPU tracer.

    python benchmarks/make_baselines.py --set regression     # data/baselines/regression.csv, seconds
    python benchmarks/make_baselines.py --set matrix         # data/baselines/traced.csv, hours on 2 cores
    python benchmarks/make_baselines.py --set matrix --limit 50
    python benchmarks/make_baselines.py --set matrix --shard 1/2 --output shard1.csv   # one of two processes
    python benchmarks/make_baselines.py --set matrix --merge shard1.csv shard2.csv      # then join them
    python benchmarks/make_baselines.py --set random         # data/baselines/random.csv (validate.random_tier)

Resumable: configurations already in the output file are skipped, so a run can be stopped
and continued, and a later session can extend a partial matrix. Each row records the
torch / transformers / peft / bitsandbytes versions that traced it. Progress on stderr.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

from planner.units import GIB


def shard(text: str) -> tuple[int, int]:
    """--shard K/N: 1 <= K <= N."""
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not K/N") from None
    if not 1 <= k <= n:
        raise argparse.ArgumentTypeError(f"{text!r}: K must be from 1 to N")
    return k, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", choices=("matrix", "regression", "random"), default="matrix")
    parser.add_argument("--limit", type=int, default=None, help="trace at most this many new configurations")
    parser.add_argument("--output", default=None, help="CSV to append to (default: the committed file)")
    parser.add_argument("--shard", type=shard, default=(1, 1), metavar="K/N",
                        help="trace only every N-th remaining configuration, starting at the K-th: run N processes "
                             "(each with its own --output) to use N cores, then append their rows to the committed file")
    parser.add_argument("--merge", nargs="+", metavar="CSV", default=None,
                        help="append the rows of these files (e.g. shard outputs) that the committed file lacks, "
                             "in matrix order, and exit")
    parser.add_argument("--models", default=None, metavar="NAMES",
                        help="trace only the configurations of these baseline models (comma list, e.g. "
                             "granite-4.0-h-tiny@2L,lfm2-1.2b@2L)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    from probes import quiet_libraries

    quiet_libraries()  # before the torch stack is imported: its import-time notices too
    from probes import parallel
    from probes.fake import trace
    from probes.run import versions
    from validate import baselines as B

    from validate.random_tier import draws

    configs = {"matrix": B.matrix, "regression": B.regression_configs, "random": draws}[args.set]()
    committed = B.path({"matrix": "traced.csv", "regression": "regression.csv", "random": "random.csv"}[args.set])
    if args.merge:
        merge(B, configs, [Path(p).resolve() for p in args.merge], committed)
        return
    out = Path(args.output) if args.output else committed
    done = {B.config_of(r).key() for p in {out.resolve(), committed} if p.exists() for r in B.load(str(p))}
    k, n = args.shard
    only = set(args.models.split(",")) if args.models else None
    todo = [c for c in configs if c.key() not in done and (only is None or c.model in only)][k - 1::n]
    if args.limit is not None:
        todo = todo[:args.limit]
    vers = versions()
    print(f"{len(done)} done, tracing {len(todo)} of {len(configs)} into {out}", file=sys.stderr)
    start = time.perf_counter()
    failed = 0
    for i, cfg in enumerate(todo, 1):
        t0 = time.perf_counter()
        t = cfg.train
        try:
            m = (parallel.trace(B.spec_for(cfg.model), t, t.num_gpus, t.sharding) if t.parallel
                 else trace(B.spec_for(cfg.model), t))
        except Exception as exc:  # a configuration the tracer cannot run: say so, go on with the next
            print(f"[{i}/{len(todo)}] {cfg.model} {t}: not traced: {type(exc).__name__}: {exc}", file=sys.stderr)
            failed += 1
            continue
        B.append(B.row_from_trace(cfg, m, vers), out)
        print(f"[{i}/{len(todo)} {time.perf_counter() - start:6.0f} s] {cfg.model} {cfg.train.method} "
              f"bs{cfg.train.batch_size} seq{cfg.train.seq_len} r{cfg.train.rank} "
              f"{','.join(cfg.train.target_modules)} gc={int(cfg.train.gradient_checkpointing)}"
              f"{f' {t.num_gpus}x{t.sharding}' if t.parallel else ''}: "
              f"{m.peak_allocated_bytes / GIB:.3f} GiB ({time.perf_counter() - t0:.1f} s)",
              file=sys.stderr, flush=True)
    if failed:
        print(f"{failed} configurations not traced", file=sys.stderr)


def merge(B, configs, sources: list[Path], target: Path) -> None:
    """Append to ``target`` the rows of ``sources`` it lacks, in the order of ``configs``."""
    have = {B.config_of(r).key() for r in B.load(str(target))} if target.exists() else set()
    new = {}
    for source in sources:
        for row in B.load(str(source)):
            key = B.config_of(row).key()
            if key not in have:
                new.setdefault(key, row)
    order = {c.key(): i for i, c in enumerate(configs)}
    for key in sorted(new, key=lambda k: order.get(k, len(order))):
        B.append(new[key], target)
    print(f"appended {len(new)} rows to {target}", file=sys.stderr)


if __name__ == "__main__":
    main()
