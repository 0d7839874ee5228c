"""What a Gated DeltaNet layer's token mixer keeps for backward, on each kernel path.

The mixer (transformers 5.23 modeling_qwen3_5.Qwen3_5GatedDeltaNet.forward, the same in
modeling_qwen3_next and modeling_qwen3_5_moe): in_proj_qkv's output goes through a depthwise
causal conv1d with SiLU (``causal_conv1d_fn``) and splits into q, k (key heads of dk) and v
(value heads of dv); beta = sigmoid(in_proj_b(x)); g = -exp(A_log) * softplus(in_proj_a(x) +
dt_bias) in fp32; the gated delta rule (``chunk_gated_delta_rule``, q and k l2-normalized in
the kernel) makes the output, which a gated RMSNorm over each value head (z = in_proj_z(x) the
gate) hands to out_proj. The Linears' own saved sets are their adapters' (planner.memory.variants).

Notation: B batch, S sequence, T = B*S tokens, Hk / H key / value heads, dk / dv their widths,
K the conv kernel, D = 2*Hk*dk + H*dv the conv's channels, V = H*dv; a = bytes of the Linear
outputs (:attr:`Precision.hidden`: fp32 for the 4-bit methods), c = the compute dtype's, m =
the dtype the chunked matmuls run in (c under autocast, else fp32). C = 64 positions a chunk,
P = S rounded up to C, N = P / C chunks.

Two paths (TrainSpec.kernels, planned and named in the plan's notes):

- ``torch``: transformers' fallbacks, ``causal_conv1d_fn`` (F.conv1d, then SiLU) and
  ``torch_chunk_gated_delta_rule``, whose autograd keeps its chunked fp32 tensors
  (:func:`torch_saved`);
- ``fused``: causal-conv1d's ``CausalConv1dFn`` (causal_conv1d/causal_conv1d_interface.py,
  ``CausalConv1dFn.forward``: ``ctx.save_for_backward(x, weight, bias, seq_idx,
  initial_states)``, SiLU inside the kernel) and flash-linear-attention's
  ``ChunkGatedDeltaRuleFunction`` (fla/ops/gated_delta_rule/chunk.py, ``forward``:
  ``ctx.save_for_backward(q, q_rstd, k, k_rstd, v, g, beta_raw, beta, A, initial_state, ...)``
  with q and k l2-normalized by ``l2norm_fwd`` (fp32 rstd per row), g its chunk-local cumsum
  (fp32), A the (B, S, H, 64) WY matrix in k's dtype (fla/ops/gated_delta_rule/chunk_fwd.py,
  ``chunk_gated_delta_rule_fwd_intra``), v made contiguous by ``input_guard``) (:func:`fused_saved`).
"""
from __future__ import annotations

from planner.units import FP32, ceil_div

CHUNK = 64  # the chunk both paths use (transformers' chunk_size default, fla's BT)


def kernels(model, train) -> str | None:
    """The path ``train`` plans for ``model``'s DeltaNet layers ("torch" or "fused",
    planner.memory.mixers.kernels_path), None without any."""
    from planner.memory.mixers import kernels_path

    return kernels_path(model, train) if any(k.layer.deltanet is not None for k in model.kinds) else None


def core_saved(model, train, prec) -> int:
    """What one DeltaNet layer's mixer keeps for backward, beside its Linears' adapters: the
    parts both paths share (:func:`shared_saved`) and the conv and delta rule's own."""
    path = kernels(model, train)
    own = torch_saved(model, train, prec) if path == "torch" else fused_saved(model, train, prec)
    return shared_saved(model, train, prec) + own


def shared_saved(model, train, prec) -> int:
    """The torch ops around the kernels (the same on both paths):

    - beta = sigmoid(b): its output, T*H*a;
    - g: softplus keeps its fp32 input (T*H*4); the product with -exp(A_log) keeps that (H*4)
      and, when A_log is trained (full fine-tuning), the softplus output (T*H*4);
    - the gated RMSNorm (Qwen3_5RMSNormGated.forward): the fp32 copy of the mixer's output
      (T*V*4, pow and mul), the rsqrt per head row (T*H*4), the fp32 gate z and its SiLU
      (2*T*V*4) and the weighted normal w * x (T*V*a); when its weight is trained, x too (T*V*a).
    """
    net = model.layer.deltanet
    t, a, heads, values = train.tokens, prec.hidden, net.value_heads, net.values
    full = train.method == "full"
    g = t * heads * FP32 + heads * FP32 + (t * heads * FP32 if full else 0)
    norm = 3 * t * values * FP32 + t * heads * FP32 + t * values * a + (t * values * a if full else 0)
    return t * heads * a + g + norm


def fused_saved(model, train, prec) -> int:
    """The fused kernels' saved tensors (module docstring): the conv's input x (the in_proj_qkv
    output, T*D*a; transformers' transpose is channel-last, so no copy); the delta rule's
    l2-normalized q and k with fp32 rstd per row (T*Hk*(dk*a + 4) each), v's contiguous copy
    (T*V*a), the fp32 cumulative g (T*H*4) and A (T*H*64*a); beta is the sigmoid's output,
    counted in :func:`shared_saved`."""
    net = model.layer.deltanet
    t, a = train.tokens, prec.hidden
    qk = 2 * t * net.key_heads * (net.key_dim * a + FP32)
    return t * net.conv_dim * a + qk + t * net.values * a + t * net.value_heads * (FP32 + CHUNK * a)


def torch_saved(model, train, prec) -> int:
    """torch's saved tensors on transformers' fallback path (read off the tracer; each term
    the op that keeps it):

    - conv1d keeps its input (T*D, c under autocast, which runs conv1d in the compute dtype,
      else a) and SiLU its input, the padded conv output (B*D*(S + K - 1), same dtype);
    - per value head (q and k repeated to H heads when Hk < H), fp32: l2norm keeps q and k
      (B*H*S*dk each) and their rsqrt (B*H*S each); beta padded (B*H*P) and v padded (B*H*P*dv)
      by v * beta, k padded (B*H*P*dk) by k * beta, k_beta (B*H*P*dk) and exp(cumsum g)
      (B*H*P) by the decayed k_beta, the scaled q (B*H*P*dk) and two more exp tables (2*B*H*P)
      by the decays of q and k, exp of each chunk's total decay (B*H*N);
    - the chunk-local tables: the causal mask (C*C bool), the pairwise decays (B*H*N*C*C*4),
      the UT system solved twice (B*H*N*C*C*4) and its solutions, the new values and decayed
      keys (B*H*P*(dv + dk)*4); k_beta k^T and q k^T in m bytes (2*B*H*N*C*C*m) kept by their
      products with the decays, and under autocast the c-byte copies of both matmuls' inputs
      (4*B*H*P*dk*c);
    - the scan over N chunks: each chunk's fp32 state (B*H*dk*dv*4); under autocast the c-byte
      copies of its matmul inputs: the state twice, the chunk's intra attention (C*C), v_new
      twice, k^T (B*H*C*(C + 2*dv + dk)*c and 2*B*H*dk*dv*c), and, from the second chunk on,
      the chunk's decayed keys and q (2*B*H*C*dk*c), whose gradient needs the state; without
      autocast the matmuls keep fp32 tensors instead: the intra attention and the decayed q and
      k whole (B*H*N*C*C*4 + 2*B*H*P*dk*4) and each chunk's v_new (B*H*C*dv*4).
    """
    net = model.layer.deltanet
    b, s, t, a, c = train.batch_size, train.seq_len, train.tokens, prec.hidden, prec.compute
    h, dk, dv, k = net.value_heads, net.key_dim, net.value_dim, net.conv_kernel
    n = ceil_div(s, CHUNK)
    p, rows = n * CHUNK, b * h
    conv_bytes = c if prec.autocast else a
    conv = t * net.conv_dim * conv_bytes + b * net.conv_dim * (s + k - 1) * conv_bytes
    per_head = (2 * rows * s * (dk + 1) * FP32  # l2norm's q, k and rsqrt
                + rows * p * (1 + dv + dk) * FP32  # beta, v, k padded
                + rows * p * (dk + 1) * FP32  # k_beta, exp(cumsum)
                + rows * p * (dk + 2) * FP32  # scaled q, two exp tables
                + rows * n * FP32)  # each chunk's decay
    tables = CHUNK * CHUNK + 2 * rows * n * CHUNK * CHUNK * FP32 + rows * p * (dv + dk) * FP32
    matmul = c if prec.autocast else FP32
    tables += 2 * rows * n * CHUNK * CHUNK * matmul
    state = rows * dk * dv
    scan = n * state * FP32
    if prec.autocast:
        tables += 4 * rows * p * dk * c
        scan += n * (2 * state + rows * CHUNK * (CHUNK + 2 * dv + dk)) * c + (n - 1) * 2 * rows * CHUNK * dk * c
    else:
        scan += rows * n * CHUNK * CHUNK * FP32 + 2 * rows * p * dk * FP32 + n * rows * CHUNK * dv * FP32
    return conv + per_head + tables + scan
