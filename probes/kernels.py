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
    """The attention kernel a tracked step ran: 'flash', 'efficient' (:func:`efficient_attention`,
    for unequal q / v head dims), 'math' or 'none'."""
    if ops.get("probes.efficient_attention"):
        return "efficient" + ("+math" if any(ops.get(name) for name in MATH_ATTENTION_OPS) else "")
    if any(ops.get(name) for name in FLASH_CPU_OPS):
        if any(ops.get(name) for name in MATH_ATTENTION_OPS):
            return "flash+math"
        return "flash"
    if any(ops.get(name) for name in MATH_ATTENTION_OPS):
        return "math"
    return "none"


def sdpa_choice(heads: int, kv_heads: int, head_dim: int, seq_len: int, dtype: torch.dtype,
                device: str, v_head_dim: int | None = None) -> str:
    """The SDPA backend torch picks for this attention shape (``torch._fused_sdp_choice``;
    ``v_head_dim``: v's head dim where it differs, multi-head latent attention's).

    Uses batch 1 (the batch size does not change the choice): small empty tensors.
    """
    q = torch.empty(1, heads, seq_len, head_dim, dtype=dtype, device=device)
    kv = torch.empty(1, kv_heads, seq_len, head_dim, dtype=dtype, device=device)
    v = kv if v_head_dim in (None, head_dim) else torch.empty(1, kv_heads, seq_len, v_head_dim, dtype=dtype,
                                                               device=device)
    choice = torch._fused_sdp_choice(q, kv, v, is_causal=True, enable_gqa=kv_heads != heads)
    return SDPA_BACKENDS.get(int(choice), str(choice))


def force_flash():
    """Context manager: SDPA must use the flash kernel (raises instead of falling back)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION])


# ---------------------------------------------------------------- unequal q / v head dims

# Multi-head latent attention (DeepSeek-V3) calls SDPA with q / k heads of nope + rope dims and
# v heads of v_head_dim (192 against 128). The CPU has no kernel for that but the math path,
# whose seq x seq probabilities no GPU keeps: CUDA's flash kernel refuses the shape (PyTorch's
# aten/src/ATen/native/transformers/cuda/sdp_utils.cpp, check_head_dim_size_flash: q, k and v
# of one last dimension) and torch picks the memory-efficient kernel, which lets v differ
# (check_head_dim_size_mem_efficient: q and k equal, each a multiple of the alignment). That
# kernel (_scaled_dot_product_efficient_attention) keeps q, k, v, its output and an fp32
# logsumexp of (batch, heads, seq rounded up to 32). :func:`efficient_attention` is an op with
# that saved set and those outputs, for the CPU (computed without autograd, its temporaries
# inside the kernel as a GPU's are) and for fake tensors alike; :func:`unequal_head_dims` sends
# SDPA calls with unequal q / v head dims to it inside a tracked step.
# With a mask (DeepSeek-V3.2's sparse-attention mask, always passed), SDPA's composite first
# makes the additive bias the kernel reads and keeps for backward (PyTorch's
# aten/src/ATen/native/transformers/attention.cpp: convert_boolean_attn_mask_, a bool mask to
# ``where(mask, 0, -inf)`` in q's dtype; preprocess_mask, the bias padded to a multiple of
# :data:`BIAS_ALIGN` keys when its rows are not aligned, then expanded to every head as a view):
# :func:`mask_bias` makes that tensor, the op keeps it.

LSE_PAD = 32  # the memory-efficient kernel's logsumexp is padded to a multiple of 32 positions
BIAS_ALIGN = 8  # preprocess_mask's mem_eff_alignment: a bias row padded to a multiple of 8 keys


def _acc(t):
    """``t`` in the accumulation dtype: fp32, or fp64 for fp64 inputs."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _math_attention(q, k, v, scale, is_causal, bias=None):
    scores = torch.matmul(_acc(q), _acc(k).transpose(-2, -1)) * scale
    if bias is not None:
        scores = scores + _acc(bias)
    if is_causal:
        s, n = scores.shape[-2:]
        scores = scores.masked_fill(torch.ones(s, n, dtype=torch.bool, device=q.device).triu(n - s + 1), float("-inf"))
    return scores


@torch.library.custom_op("probes::efficient_attention", mutates_args=())
def efficient_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                        is_causal: bool, bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention with the memory-efficient kernel's outputs: (batch, heads, seq, v dims) in q's
    dtype and the fp32 logsumexp, (batch, heads, seq padded to :data:`LSE_PAD`); ``bias``: the
    additive (batch, heads, seq, keys) bias of a mask (:func:`mask_bias`), or None."""
    scores = _math_attention(q, k, v, scale, is_causal, bias)
    lse = torch.logsumexp(scores, dim=-1)
    out = torch.matmul(torch.exp(scores - lse.unsqueeze(-1)), _acc(v)).to(q.dtype)
    b, h, s = lse.shape
    padded = torch.full((b, h, -(-s // LSE_PAD) * LSE_PAD), float("inf"), dtype=torch.float32, device=q.device)
    padded[..., :s] = lse  # (fp32, as the CUDA kernel's; fp64 inputs are for tests only)
    return out, padded


@efficient_attention.register_fake
def _(q, k, v, scale, is_causal, bias=None):
    b, h, s, _ = q.shape
    return (q.new_empty(b, h, s, v.shape[-1]),
            q.new_empty((b, h, -(-s // LSE_PAD) * LSE_PAD), dtype=torch.float32))


@torch.library.custom_op("probes::efficient_attention_backward", mutates_args=())
def efficient_attention_backward(grad: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 out: torch.Tensor, lse: torch.Tensor, scale: float,
                                 is_causal: bool, bias: torch.Tensor | None = None
                                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gradients of q, k and v (each in its input's dtype); the bias gets none (a mask's)."""
    scores = _math_attention(q, k, v, scale, is_causal, bias)
    probs = torch.exp(scores - torch.logsumexp(scores, dim=-1, keepdim=True))
    g = _acc(grad)
    dv = torch.matmul(probs.transpose(-2, -1), g)
    dp = torch.matmul(g, _acc(v).transpose(-2, -1))
    ds = probs * (dp - (g * _acc(out)).sum(-1, keepdim=True)) * scale
    return (torch.matmul(ds, _acc(k)).to(q.dtype), torch.matmul(ds.transpose(-2, -1), _acc(q)).to(k.dtype),
            dv.to(v.dtype))


@efficient_attention_backward.register_fake
def _(grad, q, k, v, out, lse, scale, is_causal, bias=None):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup(ctx, inputs, output):
    q, k, v, scale, is_causal, bias = inputs
    ctx.save_for_backward(q, k, v, *output, *(() if bias is None else (bias,)))
    ctx.scale, ctx.is_causal = scale, is_causal


def _backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, *bias = ctx.saved_tensors
    dq, dk, dv = efficient_attention_backward(grad_out, q, k, v, out, lse, ctx.scale, ctx.is_causal,
                                              bias[0] if bias else None)
    return dq, dk, dv, None, None, None


efficient_attention.register_autograd(_backward, setup_context=_setup)


def mask_bias(mask: torch.Tensor, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """The additive bias SDPA's composite hands the memory-efficient kernel for ``mask``: a bool
    mask as ``where(mask, 0, -inf)`` in q's dtype (a float mask in q's dtype, as autocast casts
    it), padded to :data:`BIAS_ALIGN` keys when a row's stride is not a multiple of it, and
    expanded to (batch, heads, q seq, keys) as a view (attention.cpp's convert_boolean_attn_mask_,
    preprocess_mask, pad_bias)."""
    if mask.dtype == torch.bool:
        bias = torch.where(mask, 0.0, torch.scalar_tensor(float("-inf"), dtype=query.dtype, device=mask.device))
    else:
        bias = mask.to(query.dtype)
    if any(stride % BIAS_ALIGN for stride in bias.stride()[:-1]) or bias.stride(-1) != 1:
        keys = bias.shape[-1]
        bias = torch.nn.functional.pad(bias, (0, BIAS_ALIGN - keys % BIAS_ALIGN))[..., :keys]
    return bias.expand(query.shape[0], query.shape[1], query.shape[2], key.shape[2])


@contextlib.contextmanager
def unequal_head_dims():
    """Inside the block, ``F.scaled_dot_product_attention`` with v heads narrower or wider than
    q / k heads runs :func:`efficient_attention` (what CUDA runs for them), its inputs cast to
    the autocast dtype first as autocast casts SDPA's, a mask as the bias :func:`mask_bias`
    makes; every other call (and every call on CUDA,
    which has the real kernel) is torch's own."""
    import torch.nn.functional as F

    original = F.scaled_dot_product_attention

    def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        if query.shape[-1] == value.shape[-1] or dropout_p or query.device.type == "cuda":
            return original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                            scale=scale, enable_gqa=enable_gqa)
        if key.shape[1] != query.shape[1]:
            raise ValueError("unequal q / v head dims with grouped k / v heads are not traced")
        if torch.is_autocast_enabled(query.device.type):
            dtype = torch.get_autocast_dtype(query.device.type)
            query, key, value = (t.to(dtype) for t in (query, key, value))
        bias = None if attn_mask is None else mask_bias(attn_mask, query, key)
        return efficient_attention(query, key, value, query.shape[-1] ** -0.5 if scale is None else scale,
                                   is_causal, bias)[0]

    F.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original
