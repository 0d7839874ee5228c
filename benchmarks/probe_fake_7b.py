"""Fake-tensor tracer speed and host memory on full-size models (a benchmark, not a test).

Targets (issue: probes): tracing one Llama-2-7B training step (after one warm-up step) under
every method takes under 60 s and under 1.5 GiB of host memory. Each configuration runs in
a fresh Python process, so its time includes building the model (meta + fake) and its peak
resident memory (ru_maxrss) is its own; imports are timed separately.

Also prints, per configuration, the traced per-phase peaks next to the planner's phases and
the largest labels live at the traced peak.

    python benchmarks/probe_fake_7b.py                      # Llama-2-7B, bs1 seq512
    python benchmarks/probe_fake_7b.py --model 8b --seq-len 2048 --batch-size 4
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

from planner.units import GIB

CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import logging
for name in ("bitsandbytes", "transformers", "peft"):
    logging.getLogger(name).setLevel(logging.ERROR)
from planner import TrainSpec, get_model, plan
from probes import fake
import probes.build, peft, bitsandbytes  # noqa: F401  (imports timed apart from the trace)
t1 = time.perf_counter()
args = json.loads(sys.argv[1])
spec = get_model(args["model"])
train = TrainSpec(method=args["method"], gradient_checkpointing=args["gc"],
                  batch_size=args["bs"], seq_len=args["seq"], dtype="bf16")
m = fake.trace(spec, train)
t2 = time.perf_counter()
p = plan(spec, "h100-80gb", train)
print(json.dumps({
    "import_s": t1 - t0, "trace_s": t2 - t1,
    "maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    "peak": m.peak_allocated_bytes, "phases": m.phase_peaks, "peak_phase": m.peak_phase,
    "kernel": m.attention_kernel, "top": dict(list(m.breakdown.items())[:6]),
    "plan_peak": p.peak_allocated_bytes, "plan_phases": p.phases, "plan_peak_phase": p.peak_phase,
}))
"""


def run_one(model: str, method: str, gc: bool, bs: int, seq: int) -> dict:
    args = json.dumps({"model": model, "method": method, "gc": gc, "bs": bs, "seq": seq})
    out = subprocess.run([sys.executable, "-c", CHILD, args], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{method} gc={gc} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def gib(x) -> str:
    return f"{x / GIB:6.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="7b")
    parser.add_argument("--methods", default="full,lora,qlora,dora,qdora")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=512)
    args = parser.parse_args()
    print(f"{args.model}, bs {args.batch_size}, seq {args.seq_len}, bf16 autocast, AdamW; "
          "GiB = 2^30 bytes; traced = fake tracer, plan = planner on h100-80gb")
    print(f"{'method':<6} {'gc':<3} {'trace s':>7} {'rss GiB':>7} | {'traced fwd':>10} {'bwd':>6} "
          f"{'opt':>6} {'peak':>6} | {'plan fwd':>8} {'bwd':>6} {'opt':>6} {'peak':>6} | ratio")
    worst_time = worst_rss = 0.0
    details = []
    for method in args.methods.split(","):
        for gc in (False, True):
            r = run_one(args.model, method, gc, args.batch_size, args.seq_len)
            worst_time = max(worst_time, r["trace_s"])
            worst_rss = max(worst_rss, r["maxrss_bytes"])
            ph, pp = r["phases"], r["plan_phases"]
            print(f"{method:<6} {'yes' if gc else 'no':<3} {r['trace_s']:7.1f} "
                  f"{r['maxrss_bytes'] / GIB:7.2f} | {gib(ph['forward']):>10} {gib(ph['backward'])} "
                  f"{gib(ph['optimizer'])} {gib(r['peak'])} | {gib(pp['forward']):>8} "
                  f"{gib(pp['backward'])} {gib(pp['optimizer'])} {gib(r['plan_peak'])} | "
                  f"{r['peak'] / r['plan_peak']:.3f}", flush=True)
            details.append((method, gc, r))
    print()
    print("largest labels live at the traced peak (GiB):")
    for method, gc, r in details:
        top = ", ".join(f"{k} {v / GIB:.2f}" for k, v in r["top"].items())
        print(f"  {method:<6} gc={'yes' if gc else 'no':<3} peak in {r['peak_phase']:<9} "
              f"kernel={r['kernel']}: {top}")
    print()
    print(f"slowest trace {worst_time:.1f} s (target < 60 s); "
          f"largest host memory {worst_rss / GIB:.2f} GiB (target < 1.5 GiB); "
          f"imports {details[0][2]['import_s']:.1f} s per process, not included")


if __name__ == "__main__":
    main()
