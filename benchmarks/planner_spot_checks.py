"""Planner against the tracer on configurations outside the baseline matrix: a toy Llama
whose vocabulary is small beside its MLP (where in-layer moments outgrow the logits), and
precisions the matrix samples only on three models. Prints planned / traced per phase.

    python benchmarks/planner_spot_checks.py            # every check, under a minute on 2 cores
    python benchmarks/planner_spot_checks.py --only toy

Not a test: the matrix gate (validate --gates) is what CI holds the planner to. These are
the figures to watch when a planner term changes.
"""
from __future__ import annotations

import argparse
import warnings

from planner.units import GIB

# A 3-layer Llama-shaped model with a 512-token vocabulary (the catalog models have 32k+).
TOY_CONFIG = {
    "model_type": "llama", "vocab_size": 512, "hidden_size": 1024, "intermediate_size": 3584,
    "num_hidden_layers": 3, "num_attention_heads": 8, "num_key_value_heads": 2,
    "max_position_embeddings": 4096, "tie_word_embeddings": False,
}

CHECKS = {
    "toy": [("toy-llama-v512", dict(method=m, rank=8, batch_size=4, seq_len=2048, dtype="bf16",
                                    gradient_checkpointing=gc))
            for m in ("full", "lora", "qlora", "dora", "qdora") for gc in (False, True)],
    "precision": [
        ("qwen2.5-0.5b", dict(method="lora", dtype="fp16")),
        ("qwen2.5-0.5b", dict(method="qlora", dtype="fp16")),
        ("qwen2.5-0.5b", dict(method="dora", dtype="fp16")),
        ("qwen2.5-0.5b", dict(method="full", dtype="fp16", precision="mixed", batch_size=4, seq_len=2048)),
        ("qwen2.5-0.5b", dict(method="lora", dtype="bf16", precision="mixed", batch_size=4, seq_len=1024)),
        ("qwen2.5-0.5b", dict(method="lora", dtype="bf16", precision="mixed", batch_size=4, seq_len=1024,
                              gradient_checkpointing=True)),
        ("llama-3.2-1b", dict(method="full", dtype="fp16", precision="mixed", batch_size=2, seq_len=2048)),
        ("llama-3.2-1b", dict(method="qlora", dtype="fp16", batch_size=4, seq_len=1024, gradient_checkpointing=True)),
    ],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=tuple(CHECKS), default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    from probes import quiet_libraries

    quiet_libraries()  # before the torch stack is imported: its import-time notices too
    from planner import TrainSpec, get_model
    from planner.model.catalog import model_from_config
    from planner.memory.moments import step_memory
    from probes.fake import trace

    toy = model_from_config(dict(TOY_CONFIG), "toy-llama-v512")
    for group, checks in CHECKS.items():
        if args.only and group != args.only:
            continue
        print(f"# {group}")
        for model_name, settings in checks:
            spec = toy if model_name == toy.name else get_model(model_name)
            train = TrainSpec(**settings)
            traced = trace(spec, train)
            planned = step_memory(spec, train, train.dtype)
            phases = " ".join(f"{p} {planned.total(p) / traced.phase_peaks[p]:.4f}"
                              for p in ("forward", "backward", "optimizer"))
            label = " ".join(f"{k}={v}" for k, v in settings.items())
            print(f"{model_name} {label}: traced {traced.peak_allocated_bytes / GIB:.3f} GiB "
                  f"({traced.peak_phase}), planned {planned.peak_bytes / GIB:.3f} GiB ({planned.peak_phase}), "
                  f"ratio {planned.peak_bytes / traced.peak_allocated_bytes:.4f}; per phase: {phases}", flush=True)


if __name__ == "__main__":
    main()
