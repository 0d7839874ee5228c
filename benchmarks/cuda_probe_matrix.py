"""Measure the CUDA probe matrix on a lent GPU in under 10 minutes, and show planned against
measured memory and time before any calibration.

The matrix: every method x two model sizes x two sequence lengths x gradient checkpointing
off and on (defaults: qwen2.5-0.5b and qwen2.5-1.5b, batch 2, 512 and 2048 tokens: 48
probes). Each probe is one `probe --device cuda` measurement (probes.run: 2 warm-up steps,
3 measured, NVML and torch.cuda figures), in this one process, smallest first; each row is
appended as soon as it is measured to a results table of the probe schema
(default data/probes/cuda_matrix.csv: not results.csv, so the rows calibrate nothing until
they are moved there on purpose). A time budget (--budget-s, default 540 s) stops the sweep
before the next probe would overrun it; what was left is printed.

Then one line per probe: measured and planned peak allocated and device-used memory, measured
and planned step seconds, each with measured / planned. "Planned" is the planner with no
calibration (its estimated CUDA context and allocator reserve, the default efficiency rules),
on the catalog GPU the device is (or the reference GPU where the catalog lacks it, as probe
rows say in plan_gpu).

    python benchmarks/cuda_probe_matrix.py                       # on a GPU
    python benchmarks/cuda_probe_matrix.py --budget-s 300 --output /tmp/rows.csv
    python benchmarks/cuda_probe_matrix.py --device cpu --model tiny/config.json \\
        --method lora --seq-len 16,32                            # the same path on a CPU (tests)
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from planner import METHODS, TrainSpec, get_gpu, get_model, plan  # noqa: E402

MODELS = ("qwen2.5-0.5b", "qwen2.5-1.5b")
SEQ_LENS = (512, 2048)
BATCH = 2
BUDGET_S = 540.0
MIB = 2 ** 20


@dataclass(frozen=True)
class Cell:
    """One probe of the matrix."""

    model: str
    method: str
    seq_len: int
    gc: bool

    def train(self, batch: int) -> TrainSpec:
        return TrainSpec(method=self.method, batch_size=batch, seq_len=self.seq_len, gradient_checkpointing=self.gc)


def matrix(models=MODELS, methods=METHODS, seq_lens=SEQ_LENS) -> list[Cell]:
    """Every cell, smallest work first (model, then length), so a cut sweep keeps whole sizes."""
    return [Cell(m, meth, s, gc) for m in models for s in seq_lens for gc in (False, True) for meth in methods]


def planned(spec, row: dict) -> dict:
    """The uncalibrated plan of a row's configuration on its plan_gpu: memory and step time."""
    train = TrainSpec(method=row["method"], rank=row["rank"], alpha=row["alpha"], batch_size=row["batch_size"],
                      seq_len=row["seq_len"], gradient_checkpointing=row["gradient_checkpointing"],
                      dtype=row["dtype"], precision=row["precision"], optim=row["optim"],
                      kernels=row["kernels"])
    p = plan(spec, get_gpu(row["plan_gpu"]), train, calibrations={}, speed={})
    return {"alloc": p.peak_allocated_bytes, "used": p.device_used_bytes, "step": p.step_seconds}


def _ratio(measured, planned_value) -> str:
    return f"{measured / planned_value:.3f}" if measured and planned_value else "-"


def _mib(v) -> str:
    return f"{v / MIB:.1f}" if v else "-"


def line(row: dict, p: dict) -> str:
    """One probe: measured / planned memory and time (time n/c off CUDA)."""
    step = row.get("step_time_s") if row["device"] == "cuda" else None
    measured_s = f"{step:.3f}" if step else "n/c"
    planned_s = f"{p['step']:.3f}" if p["step"] else "-"
    return (f"{row['model']:<14} {row['method']:<6} {row['seq_len']:>5} {'on ' if row['gradient_checkpointing'] else 'off'} "
            f"{row['status']:<6} alloc {_mib(row['peak_allocated_bytes']):>8}/{_mib(p['alloc']):>8} "
            f"{_ratio(row['peak_allocated_bytes'], p['alloc']):>6}  used {_mib(row['device_used_bytes']):>8}/"
            f"{_mib(p['used']):>8} {_ratio(row['device_used_bytes'], p['used']):>6}  step "
            f"{measured_s:>6}/{planned_s:>6} "
            f"{_ratio(step, p['step']):>6}")


HEADER = ("model          method   seq gc  status alloc MiB measured/planned ratio  used MiB measured/planned ratio  "
          "step s measured/planned ratio")


def sweep(cells: list[Cell], device: str, output: Path, batch: int = BATCH, budget_s: float = BUDGET_S,
          measure_fn=None, clock=time.monotonic, say=print) -> tuple[list[tuple[dict, dict]], list[Cell]]:
    """Measure ``cells`` in order, appending each row to ``output``; stop before a probe would
    overrun ``budget_s`` (judged by the slowest probe so far). Returns ((row, planned) pairs,
    the cells left). ``measure_fn`` replaces the backend (probes.run.run's hook)."""
    from probes import store
    from probes.run import make_probe, run

    start, slowest = clock(), 0.0
    done: list[tuple[dict, dict]] = []
    for i, cell in enumerate(cells):
        if clock() - start + slowest > budget_s:
            return done, cells[i:]
        t0 = clock()
        spec = get_model(cell.model)
        row = run(make_probe(spec, cell.train(batch), device), run_id="cuda-matrix", measure_fn=measure_fn)
        store.append([row], output)
        p = planned(spec, row)
        done.append((row, p))
        slowest = max(slowest, clock() - t0)
        say(line(row, p))
    return done, []


def main(argv: list[str] | None = None, measure_fn=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", help=f"model (repeatable)  [default: {', '.join(MODELS)}]")
    ap.add_argument("--method", action="append", choices=METHODS, help="method (repeatable)  [default: all]")
    ap.add_argument("--seq-len", default=",".join(map(str, SEQ_LENS)), help="comma list  [default: 512,2048]")
    ap.add_argument("--batch-size", type=int, default=BATCH)
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--budget-s", type=float, default=BUDGET_S, help="stop before overrunning this  [default: 540]")
    ap.add_argument("--output", default=str(ROOT / "data" / "probes" / "cuda_matrix.csv"))
    args = ap.parse_args(argv)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("cuda_probe_matrix: no CUDA device visible (use --device cpu to run the same path on the CPU)",
                  file=sys.stderr)
            return 2
    cells = matrix(tuple(args.model or MODELS), tuple(args.method or METHODS),
                   tuple(int(s) for s in args.seq_len.split(",")))
    print(f"{len(cells)} probes on {args.device}, rows to {args.output}; planned = no calibration")
    print(HEADER)
    started = time.monotonic()
    done, left = sweep(cells, args.device, Path(args.output), args.batch_size, args.budget_s, measure_fn)
    ok = [(r, p) for r, p in done if r["status"] == "ok"]
    mem = sorted(r["peak_allocated_bytes"] / p["alloc"] for r, p in ok if p["alloc"])
    times = sorted(r["step_time_s"] / p["step"] for r, p in ok if r["device"] == "cuda" and p["step"])
    print(f"{len(done)} measured in {time.monotonic() - started:.0f} s ({len(ok)} ok); left: {len(left)}")
    for name, xs in (("allocated measured/planned", mem), ("step time measured/planned", times)):
        if xs:
            print(f"{name}: median {xs[len(xs) // 2]:.3f}, range {xs[0]:.3f} .. {xs[-1]:.3f}")
    for cell in left:
        print(f"not measured (budget): {cell.model} {cell.method} seq {cell.seq_len} gc {'on' if cell.gc else 'off'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
