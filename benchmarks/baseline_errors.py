"""The planner against a baseline table, worst rows first: where the formulas are off.

    python benchmarks/baseline_errors.py random.csv                  # the random tier
    python benchmarks/baseline_errors.py traced.csv --top 20
    python benchmarks/baseline_errors.py random.csv --where precision=mixed --where method=qdora

Prints median and worst |planned/traced - 1| and how many rows are more than 2% off, then one
line per row: planned/traced, every setting, the traced and planned peak phase and the
planned peak moment. A row the planner refuses shows its one-line error.
"""
from __future__ import annotations

import argparse
import statistics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", help="a table in data/baselines (traced.csv, random.csv, ...) or a path")
    parser.add_argument("--top", type=int, default=40, help="rows to list (worst first)")
    parser.add_argument("--where", action="append", default=[], metavar="FIELD=VALUE",
                        help="keep the rows whose column FIELD reads VALUE (repeatable)")
    args = parser.parse_args()
    from planner import plan
    from validate import baselines as B
    from validate.gates import PLAN_GPU

    wanted = dict(w.split("=", 1) for w in args.where)
    rows = [r for r in B.load(args.table) if all(str(r.get(k)) == v for k, v in wanted.items())]
    out = []
    for row in rows:
        cfg = B.config_of(row)
        try:
            p = plan(B.spec_for(cfg.model), PLAN_GPU, cfg.train)
            out.append((p.peak_allocated_bytes / row["peak_allocated_bytes"], row, f"{p.peak_phase}/{p.peak_moment}"))
        except ValueError as exc:
            out.append((float("nan"), row, f"refused: {exc}"))
    errors = [abs(r - 1) for r, _, _ in out if r == r]
    if not errors:
        print("no rows")
        return
    print(f"{len(out)} rows: median {statistics.median(errors):.3%}, worst {max(errors):.2%}, "
          f"{sum(e > 0.02 for e in errors)} more than 2% off")
    for ratio, row, planned in sorted(out, key=lambda x: -abs(x[0] - 1) if x[0] == x[0] else float("-inf"))[:args.top]:
        t = B.config_of(row).train
        print(f"{ratio:.4f} {row['model']} {t.method} {t.dtype} {t.precision} gc={int(t.gradient_checkpointing)} "
              f"bs{t.batch_size}x{t.seq_len} r{t.rank} {','.join(t.target_modules)} {t.optim} drop={t.lora_dropout} "
              f"attn={t.attn_implementation} save={','.join(t.modules_to_save) or '-'} {t.num_gpus}x{t.sharding} "
              f"{t.quant_type}/dq{int(t.double_quant)} traced={row['peak_phase']} planned={planned}")


if __name__ == "__main__":
    main()
