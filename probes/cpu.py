"""``--device cpu``: a real training step on the CPU, measured with the byte tracker.

The model is built exactly as for CUDA (bitsandbytes 4-bit runs on CPU); the tracker counts
the live bytes of every tensor the step allocates (:mod:`probes.protocol`). Slow for big
models: use it for small ones, and ``--device fake`` for full-size models (it equals this
measurement to the byte).
"""
from __future__ import annotations

from pathlib import Path

from planner import ModelSpec, TrainSpec

from .build import ProbeModel, build, probe_model, resolve_precision
from .protocol import Measurement, measure_tracked
from .step import make_optimizer, make_scaler, synthetic_batch


def measure(spec: ModelSpec | ProbeModel, train: TrainSpec, *, steps: int = 1, warmup: int = 1,
            weights: str | Path | None = None, tracker=None) -> Measurement:
    """Build on CPU, warm up, and measure ``steps`` real steps with the byte tracker."""
    spec = probe_model(spec)
    precision = resolve_precision(train, "cpu")
    model = build(spec, train, "cpu", weights)
    optimizer = make_optimizer(model.parameters(), train.optim, "cpu")
    ids = synthetic_batch(train.batch_size, train.seq_len, spec.vocab_size, "cpu")
    return measure_tracked(model, optimizer, ids, precision, steps=steps, warmup=warmup,
                           scaler=make_scaler(precision, "cpu", model.parameters()),
                           force_flash=not spec.eager, tracker=tracker)
