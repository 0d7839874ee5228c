"""Cross-check: rank 0 of an FSDP2 step traced by ``probe --device fake --num-gpus N`` against
torch's own FSDP memory tracker (``torch.distributed._tools.fsdp2_mem_tracker.FSDPMemTracker``)
on the same step: the same model, sharding, fake process group and fake tensors, one warm-up
step, then one step under each meter. Prints both peaks, the difference, and the tracker's
peak by category. Usage: python benchmarks/parallel_memtracker.py [--model M] [--num-gpus N]
[--method lora] [--batch-size 1] [--seq-len 256]  (--model: a catalog name, name@NL for
fewer layers, or a config.json path)
"""
from __future__ import annotations

import argparse
import json

from planner import TrainSpec


def memtracker_peak(spec, train, num_gpus: int) -> tuple[int, dict]:
    """FSDPMemTracker's peak (bytes) for one step after a warm-up, and its peak by category."""
    from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker

    from probes import parallel
    from probes.build import probe_model, resolve_precision
    from probes.fake import cuda_dropout, plain_positions
    from probes.kernels import force_flash
    from probes.step import make_optimizer, synthetic_batch, train_step

    spec = probe_model(spec, train)
    precision = resolve_precision(train, "fake")
    ids = synthetic_batch(train.batch_size, train.seq_len, spec.vocab_size, "cpu")
    with parallel.fake_process_group(num_gpus):
        model, mode = parallel.build_traced(spec, train, "fsdp")
        with mode, plain_positions(), cuda_dropout(), force_flash():
            fake_ids = mode.from_tensor(ids)
            optimizer = make_optimizer(model.parameters(), train.optim, "fake")
            train_step(model, optimizer, fake_ids, precision)
            tracker = FSDPMemTracker(model, optimizer)
            tracker.track_inputs((fake_ids,))
            with tracker:
                train_step(model, optimizer, fake_ids, precision)
            snapshot = tracker.get_tracker_snapshot("peak")
    device = next(iter(snapshot))
    by = {str(k): int(v) for k, v in snapshot[device].items() if v}
    return int(snapshot[device]["Total"]), by


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-0.5b")
    ap.add_argument("--num-gpus", type=int, default=2)
    ap.add_argument("--method", default="lora")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--seq-len", type=int, default=256)
    args = ap.parse_args()
    from probes import parallel, quiet_libraries

    quiet_libraries()
    from validate.baselines import spec_for  # a catalog model, or one cut to fewer layers ("name@NL")

    spec = spec_for(args.model)
    train = TrainSpec(method=args.method, batch_size=args.batch_size, seq_len=args.seq_len,
                      num_gpus=args.num_gpus, sharding="fsdp")
    ours = parallel.trace(spec, train, args.num_gpus, "fsdp").peak_allocated_bytes
    theirs, by = memtracker_peak(spec, train, args.num_gpus)
    print(f"{args.model} {args.method} bs{args.batch_size} seq{args.seq_len}, rank 0 of {args.num_gpus} under FSDP2")
    print(f"  tracer (probe --device fake) peak: {ours:,} bytes")
    print(f"  FSDPMemTracker peak:               {theirs:,} bytes")
    print(f"  difference (FSDPMemTracker - tracer): {theirs - ours:+,} bytes ({theirs / ours - 1:+.2%})")
    print("  FSDPMemTracker peak by category:", json.dumps(by))


if __name__ == "__main__":
    main()
