"""The time model's efficiency factors calibrated from measured CUDA rows, per GPU family.

Where data/probes/results.csv holds successful CUDA rows with a measured step time, `plan`
scales every efficiency factor of :mod:`planner.time.roofline` for that GPU family by the median
over the rows of planned / measured step seconds (the planned time with the default
factors, on the catalog GPU the row was planned for): one number per family, never per model
or method. Plans say so, with the number of rows; without rows the defaults stay, and
`plan` says there are none. CPU rows are never used: a CPU step is not comparable to a
GPU's. Pure Python (csv module), like :mod:`planner.memory.calibration`.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from functools import lru_cache

from planner.memory.calibration import measured_on_cuda, results_rows
from planner.model.catalog import CatalogError, get_gpu, get_model
from planner.model.precision import resolve_dtype
from planner.model.specs import TrainSpec
from planner.time.timing import step_time


@dataclass(frozen=True)
class SpeedCalibration:
    family: str
    factor: float  # planned / measured step seconds (median); efficiencies are multiplied by it
    rows: int

    def describe(self) -> str:
        return (f"time calibrated from {self.rows} CUDA row(s) of the {self.family} family in data/probes: "
                f"efficiency factors x {self.factor:.2f}")


def none_note(family: str) -> str:
    """What a plan says when its GPU family has no measured rows to calibrate from."""
    return (f"time planned with the default efficiency factors: data/probes has no CUDA rows of the "
            f"{family} family with a step time")


def _train(row: dict) -> TrainSpec:
    """The row's settings, every column the table has (an older table's missing ones at their
    defaults, what its probes ran)."""
    return TrainSpec.from_record(row)


def planned_step(row: dict):
    """(catalog GPU, planned StepTime with the default factors) of a probe row, planned on the
    GPU the row names (plan_gpu), or None where the row cannot be planned (unknown model or
    GPU, fp32, bad settings)."""
    try:
        gpu = get_gpu(row["plan_gpu"])
        model = get_model(row["model"])
        train = _train(row)
        dtype, _ = resolve_dtype(train.dtype, gpu.bf16, gpu.name)
        st = step_time(model, gpu, train, dtype)
    except (CatalogError, KeyError, TypeError, ValueError):
        return None
    return (gpu, st) if st else None


def measured_speed(row: dict) -> tuple[float, float] | None:
    """(planned tokens per second, measured MFU) of a successful CUDA row with a step time:
    the planner's model FLOPs of the step over (measured step seconds * the GPU's dense
    16-bit peak). None for any other row (a CPU step is not comparable to a GPU's)."""
    if not measured_on_cuda(row):
        return None
    try:
        measured = float(row["step_time_s"])
    except (KeyError, TypeError, ValueError):
        return None
    planned = planned_step(row) if measured > 0 else None
    if planned is None:
        return None
    gpu, st = planned
    return st.tokens_per_second, st.model_flops / (measured * gpu.tflops_dense_16bit * 1e12)


def from_rows(rows: list[dict]) -> dict[str, SpeedCalibration]:
    """Calibrations per family from results rows: successful CUDA rows with a step time."""
    ratios: dict[str, list[float]] = {}
    for row in rows:
        if not measured_on_cuda(row):
            continue
        try:
            measured = float(row["step_time_s"])
        except (KeyError, TypeError, ValueError):
            continue
        planned = planned_step(row) if measured > 0 else None
        if planned:
            gpu, st = planned
            ratios.setdefault(gpu.family, []).append(st.step_seconds / measured)
    return {f: SpeedCalibration(f, statistics.median(rs), len(rs)) for f, rs in ratios.items()}


@lru_cache(maxsize=None)
def load(path: str | None = None) -> dict[str, SpeedCalibration]:
    """Calibrations from a results table (:func:`planner.memory.calibration.results_rows`)."""
    return from_rows(results_rows(path))
