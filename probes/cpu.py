"""``--device cpu``: a real training step on the CPU, measured with the byte tracker.

The model is built exactly as for CUDA (bitsandbytes 4-bit runs on CPU); the tracker counts
the live bytes of every tensor the step allocates (:mod:`probes.protocol`). Slow for big
models: use it for small ones, and ``--device fake`` for full-size models (it equals this
measurement to the byte).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from planner import ModelSpec, TrainSpec

from .build import ProbeModel, build, probe_model, resolve_precision
from .deltanet_kernels import fused_kernels, wants_fused
from .protocol import Measurement, measure_tracked
from .step import make_optimizer, make_scaler, synthetic_batch


# A bf16 training step on a CPU without native bf16 (AVX2 only) is emulated: about 1.4 GFLOP/s
# on one such 2-core machine (a Qwen2.5-0.5B LoRA step at seq 64, 6 * 494M * 64 FLOP, took
# 140 s). Used only to warn with an order of magnitude, never as a measurement.
EMULATED_BF16_FLOPS = 1.4e9


def has_native_bf16(cpuinfo: str | None = None, capability: str | None = None,
                    onednn_max_isa: str | None = None) -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), as torch would use it:
    False when torch runs at AVX2 or below (``torch.backends.cpu.get_cpu_capability()``, which
    ``ATEN_CPU_CAPABILITY=avx2`` lowers), when oneDNN is capped at AVX2
    (``ONEDNN_MAX_CPU_ISA=AVX2``), or when the CPU's flags lack avx512_bf16 / amx_bf16.

    Each argument left out is read from this process (/proc/cpuinfo, torch, the environment);
    given, it is used as it is, so that a caller that passes all three gets an answer that
    does not depend on the environment it runs in."""
    if capability is None:
        import torch

        capability = torch.backends.cpu.get_cpu_capability()
    if onednn_max_isa is None:
        onednn_max_isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "")
    if not capability.upper().startswith("AVX512") or onednn_max_isa.upper() == "AVX2":
        return False
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = set(cpuinfo.split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def emulated_step_seconds(params: int, tokens: int) -> float:
    """Rough seconds of one emulated bf16 training step: 6 FLOP per parameter per token
    (forward 2, backward 4; Kaplan et al. 2020) at :data:`EMULATED_BF16_FLOPS`."""
    return 6 * params * tokens / EMULATED_BF16_FLOPS


def measure(spec: ModelSpec | ProbeModel, train: TrainSpec, *, steps: int = 1, warmup: int = 1,
            weights: str | Path | None = None, tracker=None,
            on_step: Callable[[str, int, int, float], None] | None = None) -> Measurement:
    """Build on CPU, warm up, and measure ``steps`` real steps with the byte tracker;
    ``on_step(kind, k, n, seconds)`` after each warm-up and measured step (progress)."""
    spec = probe_model(spec, train)
    precision = resolve_precision(train, "cpu")
    model = build(spec, train, "cpu", weights)
    optimizer = make_optimizer(model.parameters(), train.optim, "cpu")
    ids = synthetic_batch(train.batch_size, train.seq_len, spec.vocab_size, "cpu")
    with fused_kernels(wants_fused(train)):
        return measure_tracked(model, optimizer, ids, precision, steps=steps, warmup=warmup,
                               scaler=make_scaler(precision, "cpu", model.parameters()),
                               force_flash=not spec.eager, tracker=tracker, on_step=on_step)
