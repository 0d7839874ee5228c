"""What the mixers that are not attention keep for backward, one layer: Mamba-2 and LFM2's gated
short convolution, on either kernel path (planner.model.specs.KERNELS).

Notation as in :mod:`planner.memory.terms`: T = batch * seq tokens, b the batch, S the sequence,
c the bytes of the compute dtype. Mamba-2 (planner.model.architectures.Mamba2): H heads of P
dims, d = H*P, N the state, G groups, K the conv width, Q the chunk, n = ceil(S / Q) chunks.
"""
from __future__ import annotations

from planner.model.architectures import Mamba2, ShortConv
from planner.model.specs import ModelSpec, TrainSpec
from planner.units import FP32, ceil_div


def kernels_path(model: ModelSpec, train: TrainSpec) -> str:
    """"torch" or "fused": the kernels a plan assumes for the layers that have a fused kernel
    (Mamba-2, short convolution, Gated DeltaNet). ``auto`` is fused, what transformers picks with
    mamba-ssm, causal-conv1d and flash-linear-attention installed; but the torch path for a 4-bit
    method on Mamba-2 layers, since the fused kernel cannot take out_proj's packed weight
    (:func:`fused_refusal`)."""
    if train.kernels == "torch" or (train.kernels == "auto" and fused_refusal(model, train)):
        return "torch"
    return "fused"


def fused_refusal(model: ModelSpec, train: TrainSpec) -> str:
    """Why the fused Mamba-2 kernel cannot run ``train``, or "": mamba-ssm's
    mamba_split_conv1d_scan_combined multiplies by out_proj's weight itself (ssd_combined.py
    lines 880-884), which a 4-bit method has packed (bitsandbytes' Params4bit, uint8)."""
    if train.is_quantized and any(isinstance(k.layer.mixer, Mamba2) for k in model.kinds):
        return (f"{train.method} with the fused Mamba-2 kernel: mamba-ssm's mamba_split_conv1d_scan_combined "
                "multiplies by out_proj's weight itself, which bitsandbytes has packed to 4 bits")
    return ""


def runs_out_proj(model: ModelSpec, train: TrainSpec) -> bool:
    """Whether a Mamba-2 layer's out_proj runs as its module (with its adapter): not on the fused
    path, whose kernel multiplies by out_proj's weight itself (mamba-ssm's
    mamba_split_conv1d_scan_combined, outproj_weight): an adapter there keeps and adds nothing."""
    return not (isinstance(model.layer.mixer, Mamba2) and kernels_path(model, train) == "fused")


def mixer_saved(model: ModelSpec, train: TrainSpec, prec) -> int:
    """What one layer's non-attention mixer keeps for backward, beyond its Linears' adapters
    (their inputs: the adapter kind's ``saved``); 0 for a layer without one."""
    mixer = model.layer.mixer
    if isinstance(mixer, Mamba2):
        return (mamba_fused_saved if kernels_path(model, train) == "fused" else mamba_torch_saved)(mixer, train, prec)
    if isinstance(mixer, ShortConv):
        return short_conv_saved(mixer, kernels_path(model, train), train, prec)
    return 0


def mamba_fused_saved(m: Mamba2, train: TrainSpec, prec) -> int:
    """mamba-ssm's MambaSplitConv1dScanCombinedFn.forward (mamba_ssm/ops/triton/ssd_combined.py,
    the ``ctx.save_for_backward`` at line 888) keeps the in_proj output zxbcdt (T x (2d + 2GN + H),
    c bytes), the scan's output before the gate out_x (T x d, c bytes), the gated RMSNorm's rstd
    (fp32, one per token and group) and parameters; it recomputes the conv, the scan and the norm
    in backward, and runs out_proj inside itself (F.linear on out_proj's weight: what it keeps for
    out_proj is that same zxbcdt / out_x)."""
    t, c = train.tokens, prec.compute
    return t * (m.projection + m.inner) * c + t * m.groups * FP32


def mamba_torch_saved(m: Mamba2, train: TrainSpec, prec) -> int:
    """transformers' torch path (GraniteMoeHybridMambaLayer.forward without a kernel:
    causal_conv1d_fn's F.conv1d, mamba2_chunk_scan, the gated RMSNorm), per op. Three dtypes
    decide its bytes: x, in_proj's output (the Linear outputs' ``prec.hidden``: fp32 for a 4-bit
    in_proj, which returns its fp32 input's dtype); w, the mixer's own parameters (the residual
    stream's ``prec.stream``: fp32 for a 4-bit method, whose prepare_model_for_kbit_training casts
    them, and under ``mixed``); and whether autocast runs, which casts the conv's and the einsums'
    operands to c:

    - the conv: its input, the in_proj output's split (its whole storage, T*proj*x) where no cast
      copies it (x = w and, under autocast, = c), else the copy it runs on (T*conv_dim*k, k = c under
      autocast, else w), and under autocast the c copy of an fp32 conv weight (conv_dim*K*c); the
      output with its K - 1 padding positions, kept by SiLU (b*conv_dim*(S + K - 1)*k);
    - dt + dt_bias and softplus (2*T*H*x), dt.float() (T*H*4), A (H*4); x.float() (T*d*4), or
      where x is fp32 the conv's fp32 output it is a view of (T*conv_dim*4);
    - per chunk scan: the two bool tril masks of each segment_sum (2*Q^2, 2*(n + 1)^2), exp of the
      intra-chunk segsum L (b*H*n*Q^2*4), the einsums' operands, s bytes each (s = c under
      autocast, which casts them; else fp32, mamba2_chunk_scan's own dtype): C and B (2*T*H*N*s),
      M and x (b*n*H*Q^2*s + T*d*s), B_decay and x (T*H*N*s + T*d*s), states (b*H*(n + 1)*P*N*s)
      and, under autocast only, decay_chunk's cast (b*H*(n + 1)^2*c), C and states
      (T*H*N*s + b*n*H*N*P*s); G (b*n*Q^2*H*s), exp of the inter-chunk segsum (b*H*(n + 1)^2*4),
      the decays (2*T*H*4), the fp32 B (T*H*N*4), C times states (T*d*s);
    - the gated RMSNorm: its fp32 input (the scan's output, a view of its padded n*Q rows:
      b*n*Q*d*4), silu(gate) and the product (2*T*d*4), gate.to(fp32) (T*d*4) unless x is fp32
      (then the in_proj output itself, kept), and rstd (T*G*4);
    - trained mixer parameters (full fine-tuning): the products with them keep their other factor,
      D's the padded fp32 x (b*n*Q*d*4), the gated norm weight's the normalized fp32 input (T*d*4),
      A's dt (T*H*4), and exp(A_log) its output (H*4) (saved-tensor hooks, the tiny layer below,
      full fine-tuning autocast, pure and mixed at 2 x 72: 348,704 bytes more than LoRA, these).

    Tracer (saved-tensor hooks on the mixer), tiny Granite-4.0-H Mamba layer (h 128, H 8 x P 32,
    N 16, G 1, Q 32), batch 1 x 64: LoRA bf16 autocast 816,546 bytes, this sum to the byte, and
    LoRA pure bf16, QLoRA / QDoRA pure and autocast, LoRA mixed likewise, at 2 x 72 and 3 x 100
    too (tests/probes/test_hybrids_traced.py). A sequence that is not a multiple of Q pads each
    chunk tensor to n*Q (counted as such).

    At real widths (tracer, Nemotron-H-8B cut to 3 layers, full bf16 autocast, torch path, batch
    1 x 2048) these trained-parameter tensors and out_proj's input (the gated norm's output cast
    to c, counted with the Linears' inputs: terms.linear_inputs_saved) are 161 MiB more than
    LoRA's Mamba-2 layer; at 1 x 8192 the plan was 2.3% under without them."""
    b, t, c = train.batch_size, train.tokens, prec.compute
    x, w, autocast = prec.hidden, prec.stream, prec.autocast
    h, p, n_state, d = m.heads, m.head_dim, m.state, m.inner
    q, n = m.chunk, ceil_div(train.seq_len, m.chunk)
    tp = b * n * q  # padded tokens
    k = c if autocast else w  # the conv runs in
    viewed = x == w == k  # the conv reads in_proj's output itself
    proj = t * m.projection * x if viewed or x == FP32 else 0
    conv = (proj + (0 if viewed else t * m.conv_dim * k) + (m.conv_dim * m.conv_kernel * c if autocast and w != c else 0)
            + b * m.conv_dim * (train.seq_len + m.conv_kernel - 1) * k)
    dt = 2 * t * h * x + t * h * FP32 + h * FP32 + t * (m.conv_dim if x == FP32 else d) * FP32
    s = c if autocast else FP32
    scan = (2 * q * q + b * h * n * q * q * FP32 + 2 * tp * h * n_state * s + b * n * q * q * h * s
            + b * n * h * q * q * s + tp * d * s + 2 * tp * h * FP32 + tp * h * n_state * FP32
            + tp * h * n_state * s + tp * d * s
            + 2 * (n + 1) ** 2 + b * h * (n + 1) ** 2 * FP32 + b * h * (n + 1) * p * n_state * s
            + (b * h * (n + 1) ** 2 * c if autocast else 0) + tp * h * n_state * s + b * n * h * n_state * p * s
            + tp * d * s)
    norm = tp * d * FP32 + (2 + (x != FP32)) * t * d * FP32 + t * m.groups * FP32
    trained = (tp * d + t * d + t * h + h) * FP32 if train.method == "full" else 0
    return conv + dt + scan + norm + trained


def short_conv_saved(m: ShortConv, path: str, train: TrainSpec, prec) -> int:
    """LFM2's gated short convolution (Lfm2ShortConv.forward), in three dtypes: x, in_proj's
    output (the Linear outputs' ``prec.hidden``: fp32 for a 4-bit in_proj fed by its fp32 norm);
    w, the conv weight's (the residual stream's ``prec.stream``: fp32 where
    prepare_model_for_kbit_training casts it, and under ``mixed``); k, what the conv runs in.

    B*x keeps the in_proj output (its chunks are views: T*3h*x). With causal-conv1d's
    CausalConv1dFn (causal_conv1d/causal_conv1d_interface.py, the ``ctx.save_for_backward(x,
    weight, bias, ...)`` at line 59: its input only, no autocast cast) the conv keeps its input
    B*x (T*h*x) and C times its output keeps that unpadded output, allocated like its input
    (T*h*x). transformers' torch causal_conv1d_fn casts B*x to w, and F.conv1d runs in k (c under
    autocast, which casts its input and, where w is not c, its weight: h*K*c; else w): the conv
    keeps its k-byte input (T*h*k) and its output is padded (b*h*(S + K - 1)*k); the output cast
    back to x is that padded storage where k is x, else a new T*h*x tensor, which C times it
    keeps. Tracer, LFM2-1.2B 2 layers, QLoRA autocast, batch 1 x 8192 (x = w = 4, k = 2): fused
    an fp32 in_proj output, B*x and conv output; torch a bf16 conv input and an fp32 cast back
    of the output (the plan 1.6% / 1.3% under when all were counted c bytes)."""
    t, c, h = train.tokens, prec.compute, m.width
    x, w = prec.hidden, prec.stream
    if path == "fused":
        return t * 3 * h * x + 2 * t * h * x
    k = c if prec.autocast else w
    weight = h * m.kernel * c if prec.autocast and w != c else 0
    out = train.batch_size * h * (train.seq_len + m.kernel - 1) * k if k == x else t * h * x
    return t * 3 * h * x + t * h * k + weight + out
