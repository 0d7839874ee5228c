"""Runtime terms calibrated from real GPU rows (probe --device cuda), per GPU family.

The tracer measures torch allocations exactly; what a GPU holds beyond them (the CUDA
context and cuBLAS workspaces, the caching allocator's reserve) can only be measured on a
GPU. Where data/probes/results.csv holds successful CUDA rows, `plan` replaces its two
estimates for that GPU family by the medians of the rows:

- runtime/cuda_context: the median measured cuda_context_bytes;
- runtime/allocator: the median of (peak reserved - peak allocated) / peak allocated,
  applied as a fraction of the planned allocated peak.

Plans say which figures are calibrated and from how many rows of which GPU. Pure Python
(csv module): the planner still imports no torch or pandas.
"""
from __future__ import annotations

import csv
import statistics
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import data

from planner.model.catalog import get_gpu, gpu_names
from planner.units import MIB


@dataclass(frozen=True)
class Calibration:
    family: str
    cuda_context_bytes: int
    allocator_fraction: float
    rows: int
    devices: tuple[str, ...]

    def describe(self) -> str:
        return (f"runtime terms calibrated from {self.rows} CUDA row(s) of the {self.family} family "
                f"({', '.join(self.devices)}) in data/probes: CUDA context "
                f"{self.cuda_context_bytes / MIB:.0f} MiB, allocator reserve "
                f"{self.allocator_fraction:.1%} of allocated")


def _compact(text: str) -> str:
    return "".join(ch for ch in text.lower() if ch.isalnum())


def family_of(device_name: str) -> str | None:
    """The catalog GPU family of a device name as torch / NVML report it ("NVIDIA H100 80GB HBM3")."""
    name = _compact(device_name)
    gpus = [get_gpu(g) for g in gpu_names()]
    for gpu in gpus:  # the exact catalog name first
        if _compact(gpu.full_name) == name:
            return gpu.family
    # then the catalog alias ("rtx4090", "a100-80gb" by its model token "a100"), longest first
    tokens = sorted(((_compact(g.name), g) for g in gpus), key=lambda t: -len(t[0]))
    tokens += sorted(((_compact(g.name.split("-")[0]), g) for g in gpus), key=lambda t: -len(t[0]))
    for token, gpu in tokens:
        if any(ch.isdigit() for ch in token) and token in name:
            return gpu.family
    return None


def measured_on_cuda(row: dict) -> bool:
    """A successful row measured on a CUDA GPU: the only rows that calibrate anything."""
    return row.get("device") == "cuda" and row.get("status") == "ok"


def results_rows(path: str | None = None) -> list[dict]:
    """The rows of a results table as text (default: the committed data/probes/results.csv);
    a missing or unreadable table gives none, never an error: the planner then uses its
    estimates."""
    p = Path(path) if path else data.path("probes", "results.csv")
    try:
        with open(p, newline="") as f:
            return list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


def from_rows(rows: list[dict]) -> dict[str, Calibration]:
    """Calibrations per family from results rows (only successful rows measured on CUDA)."""
    by_family: dict[str, list[dict]] = {}
    for row in rows:
        if not measured_on_cuda(row):
            continue
        try:
            int(row["peak_allocated_bytes"]), int(row["peak_reserved_bytes"]), int(row["cuda_context_bytes"])
        except (KeyError, TypeError, ValueError):
            continue
        family = family_of(row.get("device_name", ""))
        if family:
            by_family.setdefault(family, []).append(row)
    out = {}
    for family, group in by_family.items():
        fractions = [(int(r["peak_reserved_bytes"]) - int(r["peak_allocated_bytes"])) / int(r["peak_allocated_bytes"])
                     for r in group if int(r["peak_allocated_bytes"]) > 0]
        out[family] = Calibration(
            family=family,
            cuda_context_bytes=int(statistics.median(int(r["cuda_context_bytes"]) for r in group)),
            allocator_fraction=max(0.0, statistics.median(fractions)) if fractions else 0.0,
            rows=len(group),
            devices=tuple(sorted({r.get("device_name", "") for r in group})),
        )
    return out


@lru_cache(maxsize=None)
def load(path: str | None = None) -> dict[str, Calibration]:
    """Calibrations from a results table (:func:`results_rows`)."""
    return from_rows(results_rows(path))
