"""The measurement protocol of the tracked backends (``cpu`` and ``fake``), and its result.

Every backend follows the protocol of docs/design.md, "The measurement protocol": build,
clean up, warm-up steps (not measured), reset the peaks and record the baseline, measured
steps, one :class:`Measurement`.

For ``cpu`` and ``fake`` the meter is the byte tracker (:mod:`probes.tracker`):

1. ``gc.collect()``; ``warmup`` steps run untracked (the first step creates the optimizer
   states, which is why a measured step is never the first one).
2. A new tracker registers what lives across steps (weights, quant states, buffers,
   optimizer states, the input batch) and resets: that is the baseline.
3. ``steps`` measured steps run under the tracker, with SDPA forced to the flash kernel
   (:mod:`probes.kernels`) and the bitsandbytes 4-bit matmul expanded to the steps its GPU
   kernel takes. Gradients are labelled ``grads`` as they are accumulated (a post-accumulate
   hook), so the breakdown at each phase's peak names them.
"""
from __future__ import annotations

import contextlib
import gc
import time
from dataclasses import dataclass, field

import torch

from planner.units import PHASES

from . import kernels
from .step import train_step
from .tracker import ByteTracker, register_state


@dataclass(frozen=True)
class Measurement:
    """What a probe measured. Bytes are ints; None where the backend has no such figure.

    ``peak_allocated_bytes``: torch allocations (max_memory_allocated / tracker peak);
    ``peak_reserved_bytes``: the caching allocator's reserve (CUDA only);
    ``device_used_bytes``: device memory as nvidia-smi shows it, minus what was used before
    the run (CUDA only); ``phase_peaks``: peak per phase; ``baseline_bytes``: live at the
    start of the measured steps; ``breakdown``: live bytes by label at the peak (tracked
    backends); ``extra``: backend-specific figures (CUDA context size, active bytes, ...).
    """

    peak_allocated_bytes: int | None
    peak_reserved_bytes: int | None = None
    device_used_bytes: int | None = None
    phase_peaks: dict = field(default_factory=dict, hash=False)
    peak_phase: str | None = None
    baseline_bytes: int | None = None
    step_time_s: float | None = None
    tokens_per_second: float | None = None
    attention_kernel: str = ""
    breakdown: dict = field(default_factory=dict, hash=False)
    phase_breakdowns: dict = field(default_factory=dict, hash=False)
    extra: dict = field(default_factory=dict, hash=False)


@contextlib.contextmanager
def _grad_labels(model, tracker: ByteTracker):
    """Relabel each gradient ``grads`` as soon as autograd accumulates it."""
    handles = []

    def hook(param):
        if param.grad is not None:
            tracker.relabel([param.grad], "grads")

    for p in model.parameters():
        if p.requires_grad:
            handles.append(p.register_post_accumulate_grad_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def measure_tracked(model, optimizer, ids: torch.Tensor, precision, *, steps: int, warmup: int,
                    scaler=None, force_flash: bool = True, timed: bool = True,
                    tracker: ByteTracker | None = None, on_step=None, state=None,
                    resizes: bool = False) -> Measurement:
    """Warm-up, then ``steps`` measured steps under the byte tracker (module docstring).

    ``tracker`` may be passed in (tests use a deliberately broken one); ``timed=False`` leaves
    step time and throughput empty (a fake trace has no meaningful speed); ``on_step(kind, k,
    n, seconds)`` is told of each finished step ("warm-up" or "measured"), for progress.
    ``state()`` gives more that lives across steps, {label: tensors} (a data-parallel wrapper's
    gradient buckets); ``resizes`` follows storages resized in place (FSDP2's parameters).
    """
    def done(kind: str, k: int, n: int, since: float) -> None:
        if on_step is not None:
            on_step(kind, k, n, time.perf_counter() - since)

    @contextlib.contextmanager
    def attention():
        with kernels.force_flash() if force_flash else contextlib.nullcontext(), kernels.unequal_head_dims():
            yield

    gc.collect()
    with attention():
        for k in range(warmup):
            t0 = time.perf_counter()
            train_step(model, optimizer, ids, precision, scaler)
            done("warm-up", k + 1, warmup, t0)
    gc.collect()
    tracker = tracker or ByteTracker(expand=kernels.expansions())
    register_state(tracker, model, optimizer, {"inputs": [ids], **(state() if state else {})})
    tracker.reset()
    start = time.perf_counter()
    try:
        resized = tracker.storage_resizes() if resizes else contextlib.nullcontext()
        with _grad_labels(model, tracker), attention(), resized, tracker:
            for k in range(steps):
                t0 = time.perf_counter()
                train_step(model, optimizer, ids, precision, scaler, on_phase=tracker.set_phase)
                done("measured", k + 1, steps, t0)
        elapsed = time.perf_counter() - start
        result = tracker.result()
    finally:
        tracker.close()
    step_time = elapsed / steps if timed and steps else None
    return Measurement(
        peak_allocated_bytes=result.peak_bytes,
        phase_peaks={p: result.phase_peaks.get(p) for p in PHASES},
        peak_phase=result.peak_phase,
        baseline_bytes=result.baseline_bytes,
        step_time_s=step_time,
        tokens_per_second=ids.numel() / step_time if step_time else None,
        attention_kernel=kernels.attention_kernel_from_ops(result.ops),
        breakdown=result.peak_breakdown,
        phase_breakdowns=result.phase_breakdowns,
    )
