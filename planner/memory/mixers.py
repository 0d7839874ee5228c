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
    """"torch" or "fused": the kernels a plan assumes ("auto": fused, what transformers picks
    with mamba-ssm and causal-conv1d installed; but the torch path for a 4-bit method on Mamba-2
    layers, since the fused kernel cannot take out_proj's packed weight: :func:`fused_refusal`)."""
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
    causal_conv1d_fn's F.conv1d, mamba2_chunk_scan, the gated RMSNorm), under autocast, per op:

    - the in_proj output (the conv reads a transposed split of it: its whole storage, T*proj*c);
      the conv output with its K - 1 padding positions, kept by SiLU (b*conv_dim*(S + K - 1)*c);
    - dt + dt_bias and softplus (2*T*H*c), dt.float() (T*H*4), x.float() (T*d*4), A (H*4);
    - per chunk scan: the two bool tril masks of each segment_sum (2*Q^2, 2*(n + 1)^2), exp of the
      intra-chunk segsum L (b*H*n*Q^2*4), the einsums' bf16 operand copies (C and B: 2*T*H*N*c;
      M and x: b*n*H*Q^2*c + T*d*c; B_decay and x: T*H*N*c + T*d*c; decay_chunk and states:
      b*H*(n + 1)^2*c + b*H*(n + 1)*P*N*c; C and states: T*H*N*c + b*n*H*N*P*c), G
      (b*n*Q^2*H*c), exp of the inter-chunk segsum (b*H*(n + 1)^2*4), the decays (2*T*H*4), the fp32
      B (T*H*N*4), C times states (T*d*c);
    - the gated RMSNorm: its fp32 input and gate, silu(gate), their product (4*T*d*4) and rstd
      (T*G*4).

    Tracer (saved-tensor hooks), tiny Granite-4.0-H Mamba layer (h 128, H 8 x P 32, N 16, G 1,
    Q 32), LoRA bf16 autocast, batch 1 x 64: 816,546 bytes, this sum to the byte. A sequence that
    is not a multiple of Q pads each chunk tensor to n*Q (counted as such)."""
    b, t, c = train.batch_size, train.tokens, prec.compute
    h, p, n_state, d = m.heads, m.head_dim, m.state, m.inner
    q, n = m.chunk, ceil_div(train.seq_len, m.chunk)
    conv = m.projection * t * c + b * m.conv_dim * (train.seq_len + m.conv_kernel - 1) * c
    dt = 2 * t * h * c + t * h * FP32 + t * d * FP32 + h * FP32
    tp = b * n * q  # padded tokens
    scan = (2 * q * q + b * h * n * q * q * FP32 + 2 * tp * h * n_state * c + b * n * q * q * h * c
            + b * n * h * q * q * c + tp * d * c + 2 * tp * h * FP32 + tp * h * n_state * FP32
            + tp * h * n_state * c + tp * d * c
            + 2 * (n + 1) ** 2 + b * h * (n + 1) ** 2 * FP32 + b * h * (n + 1) * p * n_state * c
            + b * h * (n + 1) ** 2 * c + tp * h * n_state * c + b * n * h * n_state * p * c + tp * d * c)
    norm = 4 * t * d * FP32 + t * m.groups * FP32
    return conv + dt + scan + norm


def short_conv_saved(m: ShortConv, path: str, train: TrainSpec, prec) -> int:
    """LFM2's gated short convolution (Lfm2ShortConv.forward): B*x keeps the in_proj output
    (its chunks are views: T*3h*c), the conv keeps its input B*x (T*h*c) and C times the conv
    output keeps that output: with torch's F.conv1d the padded one (b*h*(S + K - 1)*c), with
    causal-conv1d's CausalConv1dFn (causal_conv1d/causal_conv1d_interface.py, the
    ``ctx.save_for_backward(x, weight, bias, ...)`` at line 59: its input only) an unpadded
    T*h*c output."""
    t, c, h = train.tokens, prec.compute, m.width
    pad = 0 if path == "fused" else train.batch_size * h * (m.kernel - 1) * c
    return t * 3 * h * c + t * h * c + t * h * c + pad
