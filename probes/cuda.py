"""``--device cuda``: the real GPU probe (torch.cuda statistics and NVML device memory).

Protocol (docs/design.md, "The measurement protocol"), in :func:`measure_steps`:

1. Refuse a GPU that other processes already use (more than 500 MiB), unless forced: their
   memory would be in the device figures (:func:`check_idle`).
2. NVML "used" memory is read before this process creates its CUDA context, and again after
   (the context's size: used - before - reserved). Build the model on the GPU.
3. ``gc.collect()``, ``empty_cache()``; warm-up steps (not measured); ``synchronize()``.
4. ``reset_peak_memory_stats()``; a background thread samples NVML used memory every few ms;
   measured steps. At each phase boundary (forward / backward / optimizer) the step
   synchronizes, reads ``max_memory_allocated`` / ``max_memory_reserved`` and the active
   peak for the phase that ended, and resets the peaks: per-phase peaks, and the overall
   peaks as their maximum. ``device_used_bytes`` = max sampled used - used before the
   context (so it includes this process' context, as nvidia-smi shows it).
5. A CUDA out-of-memory error is a result: :class:`OutOfMemory` carries what was allocated
   and the peak when it happened; the caller writes a row with status ``oom``, frees the
   model and goes on.

Everything that touches the GPU is passed in (``cuda``: the ``torch.cuda`` module or a mock;
``nvml``: the ``pynvml`` module or a fake), so the protocol is tested without a GPU.
"""
from __future__ import annotations

import gc
import os
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from planner.units import MIB, PHASES

from .protocol import Measurement

BUSY_BYTES = 500 * MIB
_CONTEXT: dict = {}  # per process: NVML used before / after this process' CUDA context


class GpuBusy(RuntimeError):
    """Other processes use the GPU: measurements would include their memory."""


class OutOfMemory(RuntimeError):
    """The step ran out of device memory; ``figures`` says what was allocated then."""

    def __init__(self, message: str, figures: dict):
        super().__init__(message)
        self.figures = figures


def is_oom(exc: BaseException) -> bool:
    """A CUDA (or CPU allocator) out-of-memory error."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text.lower()
                                             or "can't allocate memory" in text
                                             or "CUBLAS_STATUS_ALLOC_FAILED" in text)


# ---------------------------------------------------------------------- NVML

@dataclass(frozen=True)
class DeviceInfo:
    """The GPU as NVML and torch describe it."""

    name: str
    driver: str
    total_bytes: int
    used_bytes: int
    other_processes_bytes: int


def nvml_handle(nvml, index: int = 0):
    nvml.nvmlInit()
    return nvml.nvmlDeviceGetHandleByIndex(index)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def device_info(nvml, handle, pid: int | None = None) -> DeviceInfo:
    """Name, driver, memory, and the memory other processes hold on the device."""
    pid = os.getpid() if pid is None else pid
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    others = 0
    for proc in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
        if proc.pid != pid:
            others += proc.usedGpuMemory or 0
    return DeviceInfo(name=_text(nvml.nvmlDeviceGetName(handle)),
                      driver=_text(nvml.nvmlSystemGetDriverVersion()),
                      total_bytes=int(memory.total), used_bytes=int(memory.used),
                      other_processes_bytes=int(others))


def check_idle(info: DeviceInfo, own_bytes: int = 0, force: bool = False) -> None:
    """Raise :class:`GpuBusy` if other processes hold more than 500 MiB (unless forced).

    Where NVML cannot list processes (containers), memory used beyond this process' own
    (``own_bytes``) counts as other processes'.
    """
    others = max(info.other_processes_bytes, info.used_bytes - own_bytes)
    if others > BUSY_BYTES and not force:
        raise GpuBusy(f"{info.name}: {others / MIB:.0f} MiB already used by other processes; "
                      "measurements would be wrong (use --force to measure anyway)")


class NvmlSampler:
    """Samples NVML used memory in a background thread; ``peak`` is the maximum seen."""

    def __init__(self, nvml, handle, interval_s: float = 0.005):
        self.nvml, self.handle, self.interval_s = nvml, handle, interval_s
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> int:
        used = int(self.nvml.nvmlDeviceGetMemoryInfo(self.handle).used)
        self.peak = max(self.peak, used)
        self.samples += 1
        return used

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "NvmlSampler":
        self.sample()
        self._thread = threading.Thread(target=self._run, name="nvml-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()


# ---------------------------------------------------------------------- protocol

class PhaseMeter:
    """Per-phase peaks from torch.cuda: read and reset at every phase boundary."""

    def __init__(self, cuda):
        self.cuda = cuda
        self.phase: str | None = None
        self.allocated: dict[str, int] = {}
        self.reserved: dict[str, int] = {}
        self.active: dict[str, int] = {}

    def start(self) -> None:
        self.cuda.synchronize()
        self.cuda.reset_peak_memory_stats()
        self.phase = None

    def __call__(self, phase: str) -> None:
        self.cuda.synchronize()
        if self.phase in PHASES:
            p = self.phase
            self.allocated[p] = max(self.allocated.get(p, 0), int(self.cuda.max_memory_allocated()))
            self.reserved[p] = max(self.reserved.get(p, 0), int(self.cuda.max_memory_reserved()))
            active = self.cuda.memory_stats().get("active_bytes.all.peak", 0)
            self.active[p] = max(self.active.get(p, 0), int(active))
        self.cuda.reset_peak_memory_stats()
        self.phase = phase


def measure_steps(run_step: Callable[[Callable[[str], None]], None], cuda, *, steps: int,
                  warmup: int, tokens_per_step: int, sampler: NvmlSampler | None = None,
                  used_before_context: int | None = None, context_bytes: int | None = None,
                  clock: Callable[[], float] = time.perf_counter) -> Measurement:
    """Steps 3-5 of the protocol for one built model (see the module docstring).

    ``run_step(on_phase)`` runs one training step and calls ``on_phase`` at each boundary.
    """
    gc.collect()
    cuda.empty_cache()
    oom = None
    try:
        for _ in range(warmup):
            run_step(lambda phase: None)
        cuda.synchronize()
        meter = PhaseMeter(cuda)
        meter.start()
        sampling = sampler if sampler is not None else _NoSampler()
        with sampling:
            start = clock()
            for _ in range(steps):
                run_step(meter)
            cuda.synchronize()
            elapsed = clock() - start
    except Exception as exc:  # noqa: BLE001 - only OOM is a result; the rest is re-raised
        if not is_oom(exc):
            raise
        oom = (str(exc).splitlines()[0] if str(exc) else "out of memory",
               {"allocated_bytes_at_oom": int(cuda.memory_allocated()),
                "peak_allocated_bytes": int(cuda.max_memory_allocated()),
                "reserved_bytes_at_oom": int(cuda.memory_reserved())})
    if oom is not None:
        # Raised outside the except block: the OOM's traceback (whose frames hold the
        # step's activations) is gone, so the caller can free the memory.
        raise OutOfMemory(*oom)
    peak_phase = max(meter.allocated, key=meter.allocated.get) if meter.allocated else None
    step_time = elapsed / steps if steps else None
    device_used = None
    if sampler is not None and used_before_context is not None:
        device_used = sampler.peak - used_before_context
    return Measurement(
        peak_allocated_bytes=max(meter.allocated.values(), default=None),
        peak_reserved_bytes=max(meter.reserved.values(), default=None),
        device_used_bytes=device_used,
        phase_peaks={p: meter.allocated.get(p) for p in PHASES},
        peak_phase=peak_phase,
        step_time_s=step_time,
        tokens_per_second=tokens_per_step / step_time if step_time else None,
        extra={"peak_active_bytes": max(meter.active.values(), default=None),
               "cuda_context_bytes": context_bytes,
               "nvml_samples": sampler.samples if sampler is not None else 0},
    )


class _NoSampler:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def context_figures(cuda, nvml, handle) -> tuple[int, int]:
    """NVML used bytes before this process' CUDA context, and the context's size.

    Read once per process (the context lives until the process ends).
    """
    if not _CONTEXT:
        before = int(nvml.nvmlDeviceGetMemoryInfo(handle).used)
        cuda.init()
        cuda.synchronize()
        after = int(nvml.nvmlDeviceGetMemoryInfo(handle).used)
        _CONTEXT.update(before=before, context=after - before - int(cuda.memory_reserved()))
    return _CONTEXT["before"], _CONTEXT["context"]


def measure(spec, train, *, steps: int = 3, warmup: int = 2, weights: str | Path | None = None,
            force: bool = False, nvml=None, wrap=None) -> tuple[Measurement, DeviceInfo]:
    """Build ``spec`` (a planner model or a :class:`probes.build.ProbeModel`) on the GPU and
    run the protocol. ``wrap(model)`` gives the module to train (a data-parallel wrapper:
    probes.parallel), before the optimizer is made. Raises GpuBusy / OutOfMemory."""
    import torch

    from .build import build, probe_model, resolve_precision
    from .step import make_optimizer, make_scaler, synthetic_batch, train_step

    spec = probe_model(spec, train)
    if nvml is None:
        import pynvml as nvml
    index = torch.cuda.current_device() if torch.cuda.is_initialized() else 0
    handle = nvml_handle(nvml, index)
    info = device_info(nvml, handle)
    own = int(torch.cuda.memory_reserved()) + _CONTEXT["context"] if _CONTEXT else 0
    check_idle(info, own_bytes=own, force=force)
    before, context = context_figures(torch.cuda, nvml, handle)
    precision = resolve_precision(train, "cuda")
    model = optimizer = oom = None
    try:
        model = build(spec, train, "cuda", weights)
        runner = model if wrap is None else wrap(model)
        optimizer = make_optimizer(model.parameters(), train.optim, "cuda")
        scaler = make_scaler(precision, "cuda", model.parameters())
        ids = synthetic_batch(train.batch_size, train.seq_len, spec.vocab_size, "cuda")

        def run_step(on_phase):
            train_step(runner, optimizer, ids, precision, scaler, on_phase=on_phase)

        measurement = measure_steps(run_step, torch.cuda, steps=steps, warmup=warmup,
                                    tokens_per_step=ids.numel(),
                                    sampler=NvmlSampler(nvml, handle),
                                    used_before_context=before, context_bytes=context)
    except Exception as exc:  # noqa: BLE001 - an OOM while building is a result too
        if isinstance(exc, OutOfMemory) or not is_oom(exc):
            raise
        oom = (str(exc).splitlines()[0], {
            "allocated_bytes_at_oom": int(torch.cuda.memory_allocated()),
            "peak_allocated_bytes": int(torch.cuda.max_memory_allocated())})
    finally:
        del model, optimizer
        runner = None
        gc.collect()
        torch.cuda.empty_cache()
    if oom is not None:
        raise OutOfMemory(*oom)
    from .kernels import sdpa_choice

    kernel = "eager" if spec.eager else sdpa_choice(
        *spec.attention_shape(), train.seq_len, precision.compute, "cuda", spec.value_head_dim())
    return replace(measurement, attention_kernel=kernel), info
