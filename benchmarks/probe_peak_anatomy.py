"""What is live at each phase's peak of a traced step: tensors grouped by label, shape, dtype.

Two fake traces of the same step: the first finds each phase's peak, the second stops at the
moment each peak is first reached and lists the live storages (label = the op that made the
tensor, or the component it was registered as). Labels: ``forward/_to_copy`` are dtype casts
(autocast copies, peft's fp32 input casts), ``forward/mm`` matmul outputs, and so on.

    python benchmarks/probe_peak_anatomy.py --model 7b --method lora
    python benchmarks/probe_peak_anatomy.py --model 7b --method qdora --gradient-checkpointing --top 25
"""
from __future__ import annotations

import argparse

from planner.units import GIB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="7b")
    parser.add_argument("--method", default="lora")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--target-modules", default="all-linear", help="all-linear or a comma list")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    from probes import quiet_libraries

    quiet_libraries()  # before the torch stack is imported: its import-time notices too
    from planner import TrainSpec, get_model, plan
    from probes import fake, kernels
    from probes.tracker import ByteTracker

    spec = get_model(args.model)
    train = TrainSpec(method=args.method, rank=args.rank, target_modules=tuple(args.target_modules.split(",")),
                      batch_size=args.batch_size, seq_len=args.seq_len,
                      gradient_checkpointing=args.gradient_checkpointing, dtype="bf16")
    first = fake.trace(spec, train)
    tracker = ByteTracker(expand=kernels.expansions(), detail_at=first.phase_peaks)
    second = fake.trace(spec, train, tracker=tracker)
    assert second.phase_peaks == first.phase_peaks, "the two traces differ"
    p = plan(spec, "h100-80gb", train)
    print(f"{spec.name} {args.method} bs{args.batch_size} seq{args.seq_len} "
          f"gc={'yes' if args.gradient_checkpointing else 'no'}: traced peak "
          f"{first.peak_allocated_bytes / GIB:.3f} GiB in {first.peak_phase}; planned "
          f"{p.peak_allocated_bytes / GIB:.3f} GiB in {p.peak_phase}")
    for phase in ("forward", "backward", "optimizer"):
        detail = tracker.details.get(phase, [])
        print(f"\n{phase}: traced {first.phase_peaks[phase] / GIB:.3f} GiB, planned "
              f"{p.phases[phase] / GIB:.3f} GiB")
        for nbytes, count, label, shape, dtype in detail[:args.top]:
            print(f"  {nbytes / GIB:8.3f}  {count:4d} x {label:<44} {str(list(shape)):<22} {dtype}")
        rest = sum(d[0] for d in detail[args.top:])
        print(f"  {rest / GIB:8.3f}  ({len(detail) - args.top if len(detail) > args.top else 0} "
              "more groups)")


if __name__ == "__main__":
    main()
