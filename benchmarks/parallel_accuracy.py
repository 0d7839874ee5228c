"""The planner's per-GPU plan against rank 0 traced with torch's fake process group, on a small
matrix: the tiny Llama of the tests (hidden 128, 2 layers), FSDP at N 2 and 4 and DDP at N 2,
LoRA / full / DoRA, batch 1, seq 8 and 64, checkpointing off and on (36 traces, about 5 minutes
on 2 cores). Prints planned / traced per configuration and phase, and the range: the bound of
tests/probes/test_parallel.py (PEAK_BOUND) comes from here. ``--model`` plans and traces another
config instead (a catalog name cut with @NL, e.g. qwen2.5-0.5b@2L, or a config.json path)."""
from __future__ import annotations

import argparse
import itertools

from planner import TrainSpec, plan
from planner.model.catalog import model_from_config

TINY = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 512, "hidden_size": 128,
        "intermediate_size": 352, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "hidden_act": "silu"}


def model(name: str | None):
    if name is None:
        return model_from_config(dict(TINY), "llama-tiny")
    from validate.baselines import spec_for  # a catalog model, or one cut to fewer layers ("name@NL")

    return spec_for(name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--seq-len", default="8,64")
    args = ap.parse_args()
    from probes import parallel, quiet_libraries

    quiet_libraries()
    spec = model(args.model)
    ratios = []
    seqs = [int(s) for s in args.seq_len.split(",")]
    for sharding, method, n, seq, gc in itertools.product(("fsdp", "ddp"), ("lora", "full", "dora"), (2, 4), seqs,
                                                          (False, True)):
        if sharding == "ddp" and n == 4:
            continue
        train = TrainSpec(method=method, seq_len=seq, num_gpus=n, sharding=sharding, gradient_checkpointing=gc)
        traced = parallel.trace(spec, train, n, sharding)
        planned = plan(spec, "h100-80gb", train, {})
        r = planned.peak_allocated_bytes / traced.peak_allocated_bytes
        ratios.append(r)
        phases = " ".join(f"{p} {planned.phases[p] / traced.phase_peaks[p]:.3f}" for p in traced.phase_peaks)
        print(f"{sharding} N={n} {method:<5} seq {seq:<4} gc {'on ' if gc else 'off'} peak {r:.4f}  ({phases})",
              flush=True)
    print(f"planned / traced peak over {len(ratios)} traces: {min(ratios):.4f} - {max(ratios):.4f}")


if __name__ == "__main__":
    main()
