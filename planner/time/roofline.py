"""The roofline: how long a piece of work takes on a GPU, from its FLOPs, bytes and size.

A kernel of ``flops`` FLOPs that moves ``bytes`` bytes takes
``max(flops / (peak * e_compute), bytes / (bandwidth * e_memory))`` (Williams, Waterman and
Patterson 2009, "Roofline: an insightful visual performance model"). ``peak`` is the GPU's
dense 16-bit tensor-core throughput and ``bandwidth`` its memory bandwidth, from the
vendor's datasheet (data/gpus.json), times the fraction of the peak the board sustains under
its power limit (``sustained_fraction`` there, each with its measurement). The efficiencies
depend on the problem's size, each rule from a published source; none is fitted to a model
or a method (``plan --calibrated`` rescales them per GPU family from CUDA probe rows, and
says so).

Matmul, :func:`matmul_efficiency` (M x K by K x N):

- the ceiling: a large 16-bit tensor-core GEMM reaches 0.75 of dense peak (CUTLASS's
  profiler documentation, NVIDIA/cutlass media/docs/profiler.md: an A100 f16 GEMM of
  3456 x 4096 x 8192 with 256 x 128 tiles at about 235 TFLOP/s of 312);
- tile quantization: the output is cut into tiles; a dimension not a multiple of the tile
  pads the last one ("Matrix Multiplication Background User's Guide", NVIDIA Deep Learning
  Performance docs, section 3.1);
- wave quantization: the tiles run in waves of one tile per SM; a last partial wave leaves
  SMs idle (same guide, section 3.2; the SM counts in data/gpus.json);
- the tile: cuBLAS picks among 256x128 ... 64x64 tiles (same guide, section 2.3, "Typical
  tile dimensions in cuBLAS"); larger tiles reuse each loaded operand more, smaller ones
  fill more SMs. A tile's operand reuse is its arithmetic intensity tm*tn/(tm + tn); tiles
  below 128 x 128's are taken to run at their intensity over 128 x 128's (the guide: "larger
  tiles ... are more efficient"), and cuBLAS is taken to pick the best tile;
- split-K: with few output tiles and a long K, the K loop is split over more SMs (CUTLASS
  "Efficient GEMM", parallelized reductions): splits of 2 and 4 where K / split >= 1024.

Small M (few tokens) is then slow for the reason the guide gives: few tiles, a partial wave.

Attention, :func:`attention_efficiency` (the fused flash / memory-efficient kernels):

- the ceiling: FlashAttention-2 reaches up to 73% of the A100's peak forward and about 63%
  forward + backward (Dao 2023, "FlashAttention-2", abstract and Figure 4 / section 4.1):
  0.70 forward, 0.60 backward (2.5x the forward's FLOPs: 3.5 / (1/0.70 + 2.5/0.60) = 0.62);
- on Hopper the same kernel reaches 35% of H100's peak (Shah et al. 2024, "FlashAttention-3",
  section 1): the ceilings halve (SDPA's flash backend is FlashAttention-2);
- before Ampere (T4, V100) SDPA runs its memory-efficient kernel (xFormers' CUTLASS kernel),
  about half FlashAttention-2's speed (FlashAttention-2 is about 2x FlashAttention, which
  matches xFormers: Dao 2023, abstract and Figure 4): the ceilings halve;
- the length: each 128-row query block pays a fixed prologue and epilogue (loading Q,
  rescaling, writing O) worth about 3 key blocks of work, so a query block with j key blocks
  runs at j / (j + 3) (head dim 128; twice the overhead at head dim 64); causal masking
  averages (n + 1) / 2 key blocks over n query blocks. On the A100 (causal, head dim 128,
  forward + backward) the rule gives 89, 117, 144, 165, 179, 186 TFLOP/s at 512, 1k ... 16k
  tokens, the rise of FlashAttention-2's Figure 4 (from about 90 at 512 tokens to about 180 at
  16k);
- wave quantization over the SMs of batch x heads x query blocks.

Memory-bound work, :func:`memory_efficiency`: 0.80 of datasheet bandwidth for streaming
kernels (BabelStream, Deakin et al. 2018; NVIDIA bandwidthTest), less for small kernels:
a kernel needs bandwidth x latency bytes in flight (Little's law; Volkov 2016, "Understanding
latency hiding on GPUs"), taken as 2 us of the GPU's bandwidth, so a kernel of x bytes runs
at 0.80 * x / (x + 2 us * bandwidth).

The host (:data:`HOSTS`): launching one eager PyTorch op costs the CPU about 10 us on a
workstation (He 2022, "Making Deep Learning Go Brrrr From First Principles", section
Overhead); a 2-vCPU cloud VM (Colab, Kaggle: a 2.0-2.2 GHz Xeon, one core and its hyperthread,
shared with the data loader) runs Python at about half a desktop core's clock: 20 us.

Pure arithmetic, no I/O.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from planner.model.specs import GpuSpec

MATMUL = "matmul"
SMALL_MATMUL = "small_matmul"
ATTENTION = "attention"
MEMORY = "memory"
KINDS = (MATMUL, SMALL_MATMUL, ATTENTION, MEMORY)
TILE = 128  # the reference tile: 128 x 128

# cuBLAS's typical 16-bit tensor-core tiles (Matrix Multiplication Background guide, 2.3)
TILES = ((256, 128), (128, 256), (128, 128), (256, 64), (64, 256), (128, 64), (64, 128), (64, 64))
SPLITS = (1, 2, 4)
SPLIT_MIN_K = 1024
MATMUL_CEILING = 0.75
ATTENTION_FORWARD = 0.70
ATTENTION_BACKWARD = 0.60
ATTENTION_BLOCK = 128
ATTENTION_OVERHEAD_BLOCKS = 3.0  # at head dim 128
MEMORY_CEILING = 0.80
MEMORY_LATENCY_S = 2e-6
LARGE = 1 << 20  # a dimension large enough to quantize nothing


@dataclass(frozen=True)
class Host:
    """The CPU that launches the step's eager ops: seconds of host time per op."""

    name: str
    dispatch_seconds: float
    why: str


HOSTS = {
    "workstation": Host("workstation", 10e-6, "a desktop or server core at 3.5-5 GHz: about 10 us per eager op "
                        "(He 2022, 'Making Deep Learning Go Brrrr')"),
    "cloud-2vcpu": Host("cloud-2vcpu", 20e-6, "a 2-vCPU cloud VM (Colab, Kaggle: one 2.0-2.2 GHz Xeon core and its "
                        "hyperthread, shared with the data loader): about half a desktop core's speed, 20 us per op"),
}
DEFAULT_HOST = "workstation"


@dataclass(frozen=True)
class Efficiency:
    """The ceilings of the size rules (module docstring), the host's dispatch time per op, and
    a calibration ``scale`` on every GPU-side efficiency (1.0: none)."""

    matmul: float = MATMUL_CEILING
    attention_forward: float = ATTENTION_FORWARD
    attention_backward: float = ATTENTION_BACKWARD
    memory: float = MEMORY_CEILING
    dispatch_seconds: float = HOSTS[DEFAULT_HOST].dispatch_seconds

    def scaled(self, factor: float) -> "Efficiency":
        """Every GPU-side ceiling times ``factor`` (a calibration; dispatch unchanged)."""
        return Efficiency(self.matmul * factor, self.attention_forward * factor,
                          self.attention_backward * factor, self.memory * factor, self.dispatch_seconds)

    def on_host(self, host: str | Host) -> "Efficiency":
        """These ceilings with ``host``'s dispatch time per op (a :data:`HOSTS` name)."""
        h = host if isinstance(host, Host) else host_named(host)
        return Efficiency(self.matmul, self.attention_forward, self.attention_backward, self.memory,
                          h.dispatch_seconds)


DEFAULT = Efficiency()


def host_named(name: str) -> Host:
    try:
        return HOSTS[name]
    except KeyError:
        raise ValueError(f"unknown host {name!r} (choose from {', '.join(HOSTS)})") from None


def peak_flops(gpu: GpuSpec) -> float:
    """The dense 16-bit peak the board sustains: datasheet x sustained_fraction."""
    return gpu.tflops_dense_16bit * 1e12 * gpu.sustained_fraction


def _waves(tiles: int, sms: int) -> float:
    """Wave quantization: tiles / (whole waves x SMs); 1.0 when the SM count is unknown."""
    if sms <= 0:
        return 1.0
    waves = tiles / sms
    return waves / math.ceil(waves)


def matmul_efficiency(m: int, n: int, k: int, gpu: GpuSpec, eff: Efficiency = DEFAULT) -> float:
    """The fraction of peak an (m x k) @ (k x n) 16-bit GEMM achieves (module docstring): the
    ceiling times the best tile's tile quantization, wave quantization and operand reuse."""
    m, n, k = max(1, int(m)), max(1, int(n)), max(1, int(k))
    reference = TILE * TILE / (2 * TILE)
    best = 0.0
    for tm, tn in TILES:
        rows, cols = math.ceil(m / tm), math.ceil(n / tn)
        tile_q = (m * n) / (rows * tm * cols * tn)
        reuse = min(1.0, (tm * tn / (tm + tn)) / reference)
        for split in SPLITS:
            if split > 1 and k / split < SPLIT_MIN_K:
                break
            best = max(best, tile_q * reuse * _waves(rows * cols * split, gpu.sm_count))
    return eff.matmul * best


def attention_ceiling(gpu: GpuSpec, backward: bool, eff: Efficiency = DEFAULT) -> float:
    """The attention kernel's best fraction of peak on ``gpu`` (module docstring): FlashAttention-2's
    on Ampere and Ada, half of it on Hopper (FA2 there) and before Ampere (the memory-efficient kernel)."""
    ceiling = eff.attention_backward if backward else eff.attention_forward
    major = int(str(gpu.compute_capability).split(".")[0] or 0)
    return ceiling * (0.5 if major < 8 or major == 9 else 1.0)


def attention_efficiency(seq: int, head_dim: int, causal: bool, backward: bool, rows: int, gpu: GpuSpec,
                         eff: Efficiency = DEFAULT) -> float:
    """The fraction of peak the fused attention kernel achieves on sequences of ``seq`` tokens
    (module docstring); ``rows`` is batch x heads (the blocks' other grid dimension)."""
    blocks = max(1, math.ceil(seq / ATTENTION_BLOCK))
    keys = (blocks + 1) / 2 if causal else blocks
    overhead = ATTENTION_OVERHEAD_BLOCKS * 128 / max(head_dim, 32)
    length = keys / (keys + overhead)
    return attention_ceiling(gpu, backward, eff) * length * _waves(max(1, rows) * blocks, gpu.sm_count)


def memory_efficiency(bytes_per_kernel: float, gpu: GpuSpec, eff: Efficiency = DEFAULT) -> float:
    """The fraction of datasheet bandwidth a streaming kernel moving ``bytes_per_kernel`` bytes
    achieves (module docstring): the ceiling, less for kernels smaller than latency x bandwidth."""
    in_flight = MEMORY_LATENCY_S * gpu.bandwidth_gbs * 1e9
    return eff.memory * bytes_per_kernel / (bytes_per_kernel + in_flight)


@dataclass(frozen=True)
class Work:
    """One piece of a step: FLOPs and bytes of one kernel class, under a term's key.

    ``layer``: part of a decoder layer's forward (what checkpointing recomputes);
    ``narrow``: a small matmul's small dimension (the rank), for tile quantization;
    ``shape``: (M, N, K) of each of its matmuls (None: large, no quantization);
    ``attention``: (seq, head_dim, causal, backward, batch x heads) of an attention kernel;
    ``kernels``: how many kernels the bytes are spread over (small kernels stream slower).
    """

    term: str
    flops: float
    nbytes: float
    kind: str
    layer: bool = False
    narrow: int | None = None
    shape: tuple | None = None
    attention: tuple | None = None
    kernels: int = 0


def compute_efficiency(w: Work, gpu: GpuSpec, eff: Efficiency = DEFAULT) -> float:
    """The fraction of peak FLOPs ``w``'s kernels achieve, by its kind and size."""
    if w.kind == ATTENTION:
        if w.attention is None:
            return attention_ceiling(gpu, False, eff) * 0.9
        return attention_efficiency(*w.attention, gpu, eff)
    if w.kind == SMALL_MATMUL:
        return matmul_efficiency(LARGE, w.narrow or TILE, LARGE, gpu, eff)
    if w.kind in (MATMUL, MEMORY):
        return matmul_efficiency(*w.shape, gpu, eff) if w.shape else eff.matmul
    raise ValueError(f"unknown kernel class {w.kind!r} (choose from {', '.join(KINDS)})")


def work_seconds(w: Work, gpu: GpuSpec, eff: Efficiency = DEFAULT) -> tuple[float, float]:
    """(roofline seconds, compute seconds) of one piece of work: max(compute, memory) time."""
    compute = w.flops / (peak_flops(gpu) * compute_efficiency(w, gpu, eff)) if w.flops else 0.0
    if w.nbytes:
        e_mem = memory_efficiency(w.nbytes / w.kernels, gpu, eff) if w.kernels else eff.memory
        memory = w.nbytes / (gpu.bandwidth_gbs * 1e9 * e_mem)
    else:
        memory = 0.0
    return max(compute, memory), compute


def seconds(flops: float, nbytes: float, kind: str, gpu: GpuSpec, eff: Efficiency = DEFAULT,
            narrow: int | None = None) -> float:
    """Roofline time of one kernel class's work of no stated size: max(compute, memory)."""
    return work_seconds(Work("", flops, nbytes, kind, narrow=narrow), gpu, eff)[0]
