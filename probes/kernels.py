"""Which kernels a step runs, and what they allocate that the byte tracker must see.

Attention. transformers' SDPA path calls ``F.scaled_dot_product_attention(q, k, v,
is_causal=True)`` with no mask (for plain, unpadded batches) and ``enable_gqa=True`` for
grouped-query models. On CPU (real or fake tensors) torch 2.13 dispatches that to
``_scaled_dot_product_flash_attention_for_cpu``, which, like CUDA flash attention, saves
only the output and a float32 logsumexp of shape (batch, heads, seq) for backward: O(seq),
never the seq x seq probabilities of the math path. GQA runs in the kernel (no repeated K/V).
The tracked backends force that kernel with ``sdpa_kernel(FLASH_ATTENTION)`` (an error, not
a silent fallback, if it cannot run) and record which attention ops ran.

What differs on CUDA (not seen by the tracer, part of the planner's runtime terms):
flash / memory-efficient kernels also return two small int64 RNG tensors; memory-efficient
attention pads the logsumexp to a multiple of 32 positions; CUDA flash backward allocates
an fp32 ``dq`` accumulator and, for GQA, full-head ``dk``/``dv`` before summing them to the
KV heads, inside the kernel; cuBLAS / cuDNN workspaces.

Other differences from a CUDA step (each small; the planner's runtime terms cover them):
``max_memory_allocated`` counts every block rounded up to 512 bytes (the tracer counts
exact ``nbytes``: up to 0.5 KiB per live tensor, ~1-2 MiB at a 7B peak); AdamW's ``step``
counters are CPU scalars on CUDA too (capturable=False) but count 4 bytes each here; the
CUDA context, cuBLAS workspaces and the caching allocator's reserve are not tensors.
Autocast: CPU and CUDA autocast lists agree on the ops these models run (linear / matmul /
SDPA in the compute dtype; transformers upcasts logits to fp32 itself before the loss;
RMSNorm and rotary embeddings compute in fp32 explicitly), so dtypes match, except for the
ops of :data:`CUDA_FP32_OPS` (nn.LayerNorm's layer_norm, xIELU's expm1 and softplus), which
the step runs in fp32 as CUDA does (:func:`cuda_autocast_layer_norm`).
On a GPU without flash attention for the shape (T4 / V100, or head_dim > 256), CUDA may fall
back to memory-efficient or, with GQA, the math kernel: the row's ``attention_kernel``
records what torch chose there (``torch._fused_sdp_choice``).

4-bit matmul. bitsandbytes' ``gemm_4bit`` op is one fused op to a dispatch mode, but on CUDA
for training-sized inputs (more than 512 rows on every architecture it tunes for, fewer
on some) it runs as dequantize-to-dense + ``F.linear``: a dense (out x in) weight in the
compute dtype is allocated for every 4-bit matmul. Its CPU kernel without the optional
``kernels`` package is the same two steps. :data:`EXPANSIONS` makes the tracker run the op
as those steps, so the transient weight is counted (on CPU and fake alike).
"""
from __future__ import annotations

import contextlib

import torch

FLASH_CPU_OPS = ("_scaled_dot_product_flash_attention_for_cpu",
                 "_scaled_dot_product_flash_attention_for_cpu_backward")
# Ops that mean the probabilities were materialized (math SDPA or eager attention).
MATH_ATTENTION_OPS = ("_softmax", "_safe_softmax", "_scaled_dot_product_attention_math")
SDPA_BACKENDS = {0: "math", 1: "flash", 2: "efficient", 3: "cudnn", 4: "overrideable"}


# The ops of CUDA autocast's float32 list (torch's autocast docs, "CUDA Ops that can autocast to
# float32") that CPU autocast leaves in the input's dtype and these models run on 16-bit
# tensors, each with the module class that runs it: nn.LayerNorm (StarCoder2) and transformers'
# XIELUActivation (Apertus: expm1 on the MLP's pre-activation, softplus on its two scalars).
CUDA_FP32_OPS = (("LayerNorm", ("layer_norm",)), ("XIELUActivation", ("expm1", "softplus")))


def _upcast(t):
    return t.float() if isinstance(t, torch.Tensor) and t.dtype in (torch.bfloat16, torch.float16) else t


def _fp32_kernel(op: str):
    """An AutocastCPU kernel for aten ``op`` that runs it as CUDA autocast does: its 16-bit
    tensor arguments cast to fp32, the op run below autocast, its output fp32."""
    exclude = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU)
    target = getattr(torch.ops.aten, op)

    def kernel(*args, **kwargs):
        with torch._C._ExcludeDispatchKeyGuard(exclude):
            return target(*(_upcast(a) for a in args), **{k: _upcast(v) for k, v in kwargs.items()})

    return kernel


@contextlib.contextmanager
def cuda_autocast_layer_norm(model):
    """Make CPU autocast run the ops of :data:`CUDA_FP32_OPS` as CUDA autocast does, in fp32
    (input and output), while the block runs, for a model with a module that runs them
    (nn.LayerNorm: StarCoder2; XIELUActivation: Apertus).

    CUDA's autocast lists ``layer_norm``, ``expm1`` and ``softplus`` among the ops it casts to
    float32; CPU autocast leaves them in the input's dtype, so a CPU or fake step would keep
    16-bit tensors where a GPU keeps fp32 ones. The kernels are registered under the
    AutocastCPU key for the block only, and only for such a model: a registration for the
    whole process changed the memory of unrelated runs (the gloo FSDP rank of a Llama, which
    has no LayerNorm, no longer equalled its trace). Outside autocast, and on CUDA, nothing
    changes."""
    classes = {type(m).__name__ for m in model.modules()}
    ops = [op for name, names in CUDA_FP32_OPS if name in classes for op in names]
    if not ops:
        yield
        return
    lib = torch.library.Library("aten", "IMPL")
    for op in ops:
        lib.impl(op, _fp32_kernel(op), "AutocastCPU")
    try:
        yield
    finally:
        lib._destroy()


def expansions() -> dict:
    """{op overload: python implementation} for :class:`probes.tracker.ByteTracker`."""
    try:
        import bitsandbytes  # noqa: F401  (registers the ops)
        from bitsandbytes.backends.default.ops import _gemm_4bit_default_impl
    except ImportError:  # pragma: no cover - bitsandbytes is a dependency of probes
        return {}
    return {torch.ops.bitsandbytes.gemm_4bit.default: _gemm_4bit_default_impl}


def attention_kernel_from_ops(ops: dict) -> str:
    """The attention kernel a tracked step ran: 'flash', 'math' or 'none'."""
    if any(ops.get(name) for name in FLASH_CPU_OPS):
        if any(ops.get(name) for name in MATH_ATTENTION_OPS):
            return "flash+math"
        return "flash"
    if any(ops.get(name) for name in MATH_ATTENTION_OPS):
        return "math"
    return "none"


def sdpa_choice(heads: int, kv_heads: int, head_dim: int, seq_len: int, dtype: torch.dtype,
                device: str) -> str:
    """The SDPA backend torch picks for this attention shape (``torch._fused_sdp_choice``).

    Uses batch 1 (the batch size does not change the choice): three small empty tensors.
    """
    q = torch.empty(1, heads, seq_len, head_dim, dtype=dtype, device=device)
    kv = torch.empty(1, kv_heads, seq_len, head_dim, dtype=dtype, device=device)
    choice = torch._fused_sdp_choice(q, kv, kv, is_causal=True, enable_gqa=kv_heads != heads)
    return SDPA_BACKENDS.get(int(choice), str(choice))


def force_flash():
    """Context manager: SDPA must use the flash kernel (raises instead of falling back)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION])
