"""The roofline: how long a piece of work takes on a GPU, from its FLOPs and bytes moved.

A kernel of ``flops`` FLOPs that moves ``bytes`` bytes takes
``max(flops / (peak * e_kind), bytes / (bandwidth * e_mem))`` (Williams, Waterman and
Patterson 2009, "Roofline: an insightful visual performance model"), where ``peak`` is the
GPU's dense 16-bit tensor-core throughput and ``bandwidth`` its memory bandwidth, both from
the vendor's datasheet (data/gpus.json), and ``e`` the fraction of them that real kernels
of that class achieve. The factors are few, one per kernel class, the same for every GPU,
model and method; none is fitted to a measured step (``plan --calibrated`` rescales them
per GPU family from CUDA probe rows, and says so). How each was chosen:

=============  =====  ====================================================================
class          e      source and reasoning
=============  =====  ====================================================================
matmul         0.70   large 16-bit GEMMs (thousands wide, as a 7B model's projections)
                      reach 70-80% of dense peak in NVIDIA's GEMM measurements ("Matrix
                      Multiplication Background User's Guide", NVIDIA Deep Learning
                      Performance docs); the low end, for the medium shapes of fine-tuning.
small_matmul   0.70   the same, times tile quantization: a GEMM with a dimension r smaller
               x r/128  than the 128-wide output tile fills r/128 of each tile (same guide,
                      "Tile Quantization"), so a rank-16 LoRA matmul runs at 0.70 * 16/128.
                      Its byte side (reading the T x in activations) usually binds anyway.
attention      0.50   FlashAttention-2 forward + backward reaches 50-73% of the A100's
                      peak (Dao 2023, "FlashAttention-2", section 4.1); the low end, for
                      head_dim 64-128 at fine-tuning lengths and SDPA's other kernels.
memory         0.80   achieved / datasheet bandwidth of streaming kernels: 80-90% on HBM
                      and GDDR GPUs (BabelStream, Deakin et al. 2018; NVIDIA bandwidthTest);
                      the low end, for PyTorch's unfused elementwise kernels.
dispatch       10 us  host time to launch one eager PyTorch op (He 2022, "Making Deep
                      Learning Go Brrrr From First Principles", section Overhead: on the
                      order of 10 microseconds per op). The GPU hides it when its kernels
                      take longer; a step is never faster than its ops' dispatch.
=============  =====  ====================================================================

Pure arithmetic, no I/O.
"""
from __future__ import annotations

from dataclasses import dataclass

from planner.model.specs import GpuSpec

MATMUL = "matmul"
SMALL_MATMUL = "small_matmul"
ATTENTION = "attention"
MEMORY = "memory"
KINDS = (MATMUL, SMALL_MATMUL, ATTENTION, MEMORY)
TILE = 128  # the output tile width of cuBLAS / CUTLASS 16-bit tensor-core GEMMs


@dataclass(frozen=True)
class Efficiency:
    """Achieved fractions of the datasheet figures, per kernel class (module docstring)."""

    matmul: float = 0.70
    attention: float = 0.50
    memory: float = 0.80
    dispatch_seconds: float = 10e-6

    def compute(self, kind: str, narrow: int | None = None) -> float:
        """The fraction of dense peak FLOPs a kernel of ``kind`` achieves; ``narrow`` is the
        small dimension of a small matmul (the LoRA rank)."""
        if kind == MATMUL:
            return self.matmul
        if kind == SMALL_MATMUL:
            return self.matmul * min(1.0, (narrow or TILE) / TILE)
        if kind == ATTENTION:
            return self.attention
        if kind == MEMORY:
            return self.matmul  # a memory-bound kernel's FLOPs (if any) at matmul speed
        raise ValueError(f"unknown kernel class {kind!r} (choose from {', '.join(KINDS)})")

    def scaled(self, factor: float) -> "Efficiency":
        """Every GPU-side fraction times ``factor`` (a calibration; dispatch unchanged)."""
        return Efficiency(self.matmul * factor, self.attention * factor, self.memory * factor,
                          self.dispatch_seconds)


DEFAULT = Efficiency()


def seconds(flops: float, nbytes: float, kind: str, gpu: GpuSpec, eff: Efficiency = DEFAULT,
            narrow: int | None = None) -> float:
    """Roofline time of one kernel class's work: max(compute time, memory time)."""
    compute = flops / (gpu.tflops_dense_16bit * 1e12 * eff.compute(kind, narrow)) if flops else 0.0
    memory = nbytes / (gpu.bandwidth_gbs * 1e9 * eff.memory) if nbytes else 0.0
    return max(compute, memory)


@dataclass(frozen=True)
class Work:
    """One piece of a step: FLOPs and bytes of one kernel class, under a term's key.

    ``layer``: part of a decoder layer's forward (what checkpointing recomputes);
    ``narrow``: a small matmul's small dimension (the rank), for tile quantization.
    """

    term: str
    flops: float
    nbytes: float
    kind: str
    layer: bool = False
    narrow: int | None = None
