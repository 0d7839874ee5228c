"""One probe = one configuration measured on one backend, turned into one results row.

:func:`run` measures (cuda / cpu / fake), turns out-of-memory and unsupported settings into
rows with a status instead of crashes, adds the environment (device, driver, versions, git
commit) and the planner's prediction for the same configuration, and returns the row
(the schema is :data:`probes.store.SCHEMA`). A model whose architecture the planner lacks
(a :class:`probes.build.ProbeModel` with no planner spec) is measured all the same; its
row's planned columns stay empty, and :attr:`Probe.notes` says why.
"""
from __future__ import annotations

import datetime as dt
import functools
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from planner import ModelSpec, TrainSpec, get_gpu, plan

from .build import ProbeModel, device_dtype, from_spec
from .protocol import Measurement
from .store import COLUMNS, SCHEMA_VERSION

DEVICES = ("cuda", "cpu", "fake")
# (warm-up, measured) steps per backend when not given.
DEFAULT_STEPS = {"cuda": (2, 3), "cpu": (1, 1), "fake": (1, 1)}
# The GPU whose plan is compared with cpu / fake rows (a bf16 GPU, same explicit dtype).
REFERENCE_GPU = "h100-80gb"


@dataclass(frozen=True)
class Probe:
    """What to measure: a model, its training settings, the backend and the protocol counts.

    ``model`` is what the builder builds; ``spec`` is the planner's model, for the planned
    figures (None: the planner's architecture table lacks the model_type). A planner
    :class:`~planner.ModelSpec` given as ``model`` fills both.
    """

    model: ProbeModel
    train: TrainSpec
    device: str
    warmup: int
    steps: int
    weights: str | None = None
    force: bool = False
    spec: ModelSpec | None = None

    def __post_init__(self) -> None:
        if isinstance(self.model, ModelSpec):
            object.__setattr__(self, "spec", self.model)
            object.__setattr__(self, "model", from_spec(self.model))
        if self.device not in DEVICES:
            raise ValueError(f"unknown device {self.device!r} (one of {', '.join(DEVICES)})")
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        if self.warmup < 1:
            raise ValueError("warmup must be at least 1: the first step creates the optimizer "
                             f"states and is never measured, got {self.warmup}")
        if self.train.parallel:
            from .parallel import check_traceable

            check_traceable(self.train, self.train.sharding)
            if self.device == "cpu":
                raise ValueError(f"--device cpu --num-gpus {self.train.num_gpus}: a CPU has no GPUs to shard over; "
                                 "--device fake traces rank 0 exactly (the tests check it against real gloo ranks)")
        if self.weights is not None and self.device == "fake":
            raise ValueError("--weights has no effect with --device fake (a trace needs "
                             "shapes only): pass the folder's config.json as --model instead")

    @property
    def notes(self) -> tuple[str, ...]:
        """What the output should say about this probe's row: a dtype fallback, no plan."""
        out = device_dtype(self.train.dtype, self.device)[1]
        if self.spec is None:
            out += (f"the planner's architecture table lacks model_type {self.model.model_type}: "
                    "no planned figure",)
        return out

    @property
    def label(self) -> str:
        t = self.train
        return (f"{self.model.name} {t.method} bs{t.batch_size} seq{t.seq_len}"
                f"{' gc' if t.gradient_checkpointing else ''} on {self.device}"
                + (f", rank 0 of {t.num_gpus} under {t.sharding}" if t.parallel else ""))


def resolve_device(device: str) -> str:
    """``auto`` -> cuda when a GPU is visible, else fake: with no GPU the exact trace answers
    the memory question in seconds, where a real CPU step of a full-size model can take hours
    on a CPU without native bf16 (``--device cpu`` asks for one explicitly)."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "fake"


def make_probe(model: ModelSpec | ProbeModel, train: TrainSpec, device: str, warmup: int | None = None,
               steps: int | None = None, weights: str | None = None, force: bool = False) -> Probe:
    """A probe of ``model`` (a planner spec, or a :class:`ProbeModel` the planner cannot plan)."""
    default_warmup, default_steps = DEFAULT_STEPS[device] if device in DEFAULT_STEPS else (1, 1)
    return Probe(model=model, train=train, device=device,
                 warmup=default_warmup if warmup is None else warmup,
                 steps=default_steps if steps is None else steps, weights=weights, force=force)


# ---------------------------------------------------------------------- environment

@functools.lru_cache(maxsize=None)
def git_commit() -> str:
    """The commit of the checkout these probes run from ('' outside a git checkout)."""
    root = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


@functools.lru_cache(maxsize=None)
def versions() -> dict:
    import bitsandbytes
    import peft
    import torch
    import transformers

    return {"torch_version": torch.__version__, "transformers_version": transformers.__version__,
            "peft_version": peft.__version__, "bitsandbytes_version": bitsandbytes.__version__,
            "python_version": platform.python_version(),
            "cuda_version": torch.version.cuda or ""}


@functools.lru_cache(maxsize=None)
def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def plan_gpu(device: str, device_name: str) -> str:
    """The catalog GPU to plan with: the measured one when the catalog has it."""
    if device == "cuda":
        from planner import get_gpus

        for gpu in get_gpus(["all"]):
            if gpu.full_name.lower() == device_name.split(";")[0].lower():
                return gpu.name
    return REFERENCE_GPU


# ---------------------------------------------------------------------- measuring

def measure(probe: Probe, on_step=None) -> tuple[Measurement, dict]:
    """Run the probe's backend; returns the measurement and {device_name, driver}.
    ``on_step`` hears of each finished CPU step (progress for slow real steps)."""
    if probe.train.parallel:
        return measure_parallel(probe)
    if probe.device == "fake":
        from . import fake

        m = fake.trace(probe.model, probe.train, steps=probe.steps, warmup=probe.warmup)
        return m, {"device_name": "FakeTensorMode (no memory)", "driver": ""}
    if probe.device == "cpu":
        from . import cpu

        m = cpu.measure(probe.model, probe.train, steps=probe.steps, warmup=probe.warmup,
                        weights=probe.weights, on_step=on_step)
        return m, {"device_name": cpu_name(), "driver": ""}
    from . import cuda

    m, info = cuda.measure(probe.model, probe.train, steps=probe.steps, warmup=probe.warmup,
                           weights=probe.weights, force=probe.force)
    return m, {"device_name": info.name, "driver": info.driver}


def rank_label(train: TrainSpec, rank: int = 0) -> str:
    """Where a multi-GPU row was measured, appended to its device name (the results table has
    no parallel columns): '; rank 0 of 2, fsdp'."""
    return f"; rank {rank} of {train.num_gpus}, {train.sharding}"


def measure_parallel(probe: Probe) -> tuple[Measurement, dict]:
    """One rank of ``probe.train.num_gpus`` under its sharding: traced (fake process group) or
    measured under torchrun (cuda)."""
    from . import parallel

    t = probe.train
    if probe.device == "fake":
        m = parallel.trace(probe.model, t, t.num_gpus, t.sharding, steps=probe.steps, warmup=probe.warmup)
        return m, {"device_name": "FakeTensorMode (no memory)" + rank_label(t), "driver": ""}
    m, info, rank = parallel.measure_cuda(probe.model, t, steps=probe.steps, warmup=probe.warmup,
                                          weights=probe.weights, force=probe.force)
    return m, {"device_name": info.name + rank_label(t, rank), "driver": info.driver, "rank": rank}


def run(probe: Probe, run_id: str = "",
        measure_fn: Callable[[Probe], tuple[Measurement, dict]] | None = None) -> dict:
    """Measure ``probe`` and return its results row.

    Out of memory -> status ``oom`` (with what was allocated); an optimizer the device cannot
    run -> ``unsupported``. Any other error propagates: it is a bug, not a result.
    """
    from .cuda import GpuBusy, OutOfMemory, is_oom
    from .step import Unsupported

    status, error, where = "ok", "", {}
    measurement = Measurement(peak_allocated_bytes=None)
    try:
        measurement, where = (measure_fn or measure)(probe)
    except OutOfMemory as exc:
        status, error = "oom", str(exc)
        measurement = Measurement(peak_allocated_bytes=exc.figures.get("peak_allocated_bytes"),
                                  extra=dict(exc.figures))
    except Unsupported as exc:
        status, error = "unsupported", str(exc)
    except GpuBusy:
        raise
    except Exception as exc:  # noqa: BLE001 - a CPU allocator OOM is a result too
        if not is_oom(exc):
            raise
        status, error = "oom", str(exc).splitlines()[0]
    if not where:
        where = {"device_name": "FakeTensorMode (no memory)" if probe.device == "fake"
                 else cpu_name() if probe.device == "cpu" else "", "driver": ""}
    return make_row(probe, measurement, where, status, error, run_id)


def make_row(probe: Probe, m: Measurement, where: dict, status: str, error: str,
             run_id: str) -> dict:
    """The results row (schema: :data:`probes.store.SCHEMA`)."""
    t = probe.train
    dtype, _ = device_dtype(t.dtype, probe.device)
    gpu = p = None
    if probe.spec is not None:
        gpu = plan_gpu(probe.device, where.get("device_name", ""))
        p = plan(probe.spec, get_gpu(gpu), t.with_(dtype=dtype))
    planned = dict.fromkeys(c for c in COLUMNS if c.startswith("planned_")) if p is None else {
        "planned_peak_allocated_bytes": p.peak_allocated_bytes,
        "planned_peak_reserved_bytes": p.peak_reserved_bytes,
        "planned_device_used_bytes": p.device_used_bytes,
        "planned_forward_bytes": p.phases.get("forward"),
        "planned_backward_bytes": p.phases.get("backward"),
        "planned_optimizer_bytes": p.phases.get("optimizer"),
        "planned_peak_phase": p.peak_phase,
    }
    measured = m.peak_allocated_bytes if status == "ok" else None
    phases = m.phase_peaks or {}
    row = {
        "schema_version": SCHEMA_VERSION,
        "timestamp": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "run_id": run_id,
        "model": probe.model.name, "method": t.method, "rank": t.rank, "alpha": t.lora_alpha,
        "target_modules": ",".join(t.target_modules), "batch_size": t.batch_size,
        "seq_len": t.seq_len, "gradient_checkpointing": t.gradient_checkpointing,
        "dtype": dtype, "precision": t.precision, "optim": t.optim, "quant_type": t.quant_type,
        "double_quant": t.double_quant, "target_parameters": ",".join(t.target_parameters),
        "lora_dropout": t.lora_dropout, "attn_implementation": t.attn_implementation, "kernels": t.kernels,
        "modules_to_save": ",".join(t.modules_to_save), "num_gpus": t.num_gpus, "sharding": t.sharding, "init": "weights" if probe.weights else "random",
        "steps": probe.steps, "warmup": probe.warmup,
        "device": probe.device, "device_name": where.get("device_name", ""),
        "driver": where.get("driver", ""), **versions(), "git_commit": git_commit(),
        "status": status, "error": error,
        "peak_allocated_bytes": measured,
        "peak_reserved_bytes": m.peak_reserved_bytes if status == "ok" else None,
        "device_used_bytes": m.device_used_bytes if status == "ok" else None,
        "peak_active_bytes": m.extra.get("peak_active_bytes"),
        "cuda_context_bytes": m.extra.get("cuda_context_bytes"),
        "baseline_bytes": m.baseline_bytes,
        "forward_peak_bytes": phases.get("forward"),
        "backward_peak_bytes": phases.get("backward"),
        "optimizer_peak_bytes": phases.get("optimizer"),
        "peak_phase": m.peak_phase,
        "step_time_s": m.step_time_s, "tokens_per_second": m.tokens_per_second,
        "attention_kernel": m.attention_kernel or None,
        "peak_breakdown": m.breakdown or (dict(m.extra) if status == "oom" else None),
        "plan_gpu": gpu, **planned,
        "ratio": measured / p.peak_allocated_bytes if measured and p is not None else None,
    }
    # Schema order; empty text is a missing value (as the CSV reads it back).
    return {c: None if row[c] == "" else row[c] for c in COLUMNS}
