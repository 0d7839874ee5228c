"""Stand-ins for the fused Gated DeltaNet kernels, so that a CPU or fake step keeps what they keep.

On a GPU with flash-linear-attention and causal-conv1d installed, transformers' Gated DeltaNet
layers (modeling_qwen3_5, modeling_qwen3_5_moe, modeling_qwen3_next) call those packages'
kernels in place of their torch fallbacks: the decorator
``use_kernel_func_from_hub_with_fallback`` (transformers/integrations/hub_kernels.py) imports
``fla.chunk_gated_delta_rule`` and ``causal_conv1d.causal_conv1d_fn`` once, when the module is
imported, and each layer's forward looks the functions up as module globals
(``torch_chunk_gated_delta_rule``, ``causal_conv1d_fn``). :func:`fused_kernels` replaces those
globals, while a step runs, with wrappers around two custom ops whose outputs are what the
kernels' autograd Functions keep for backward, with their shapes and dtypes:

- ``chunk_gated_delta_rule`` (flash-linear-attention, fla/ops/gated_delta_rule/chunk.py,
  ``ChunkGatedDeltaRuleFunction.forward``): ``input_guard`` makes q, k, v contiguous;
  ``l2norm_fwd`` (fla/modules/l2norm.py) returns the normalized q and k in their dtype and an
  fp32 rstd per row; ``chunk_local_cumsum`` the fp32 cumulative g; ``chunk_gated_delta_rule_fwd_intra``
  (fla/ops/gated_delta_rule/chunk_fwd.py) the (B, T, H, 64) matrix A in k's dtype;
  ``ctx.save_for_backward(q, q_rstd, k, k_rstd, v, g, beta_raw, beta, A, initial_state, ...)``;
  the output is ``o.to(q.dtype)``. Backward returns dq, dk, dv, dg, dbeta shaped as their inputs,
  beside a workspace of the bytes its kernels hold at their peak (:func:`backward_workspace`).
- ``causal_conv1d_fn`` (causal-conv1d, causal_conv1d/causal_conv1d_interface.py,
  ``CausalConv1dFn.forward``): SiLU inside the kernel, ``ctx.save_for_backward(x, weight, bias,
  seq_idx, initial_states)`` (x not copied when its channel stride is 1, as transformers'
  transposed projection is); backward returns dx and dweight.

The CPU implementations compute the outputs with transformers' torch reference (the l2norm,
``torch_chunk_gated_delta_rule``, F.conv1d + SiLU) so that a real CPU step gives the torch
path's values (tests compare them); A is left zero and the backward returns zeros: the ops model
memory, not gradients. Neither op allocates anything the tracker does not see: the tracker
counts each op's outputs.
"""
from __future__ import annotations

import contextlib
import importlib

import torch
import torch.nn.functional as F

CHUNK = 64
MODULES = ("transformers.models.qwen3_5.modeling_qwen3_5", "transformers.models.qwen3_5_moe.modeling_qwen3_5_moe",
           "transformers.models.qwen3_next.modeling_qwen3_next")


_REFERENCE = []  # transformers' torch_chunk_gated_delta_rule, taken before any patch


def _reference():
    if not _REFERENCE:
        from transformers.models.qwen3_5 import modeling_qwen3_5

        _REFERENCE.append(modeling_qwen3_5.torch_chunk_gated_delta_rule)
    return _REFERENCE[0]


def _l2norm(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    xf = x.float()
    rstd = torch.rsqrt((xf * xf).sum(-1) + 1e-6)
    return (xf * rstd.unsqueeze(-1)).to(x.dtype), rstd.reshape(-1)


@torch.library.custom_op("ftmem_fla::chunk_gated_delta_rule", mutates_args=())
def _chunk_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
               scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                      torch.Tensor, torch.Tensor, torch.Tensor]:
    with torch.autocast("cpu", enabled=False):
        return _chunk_reference(q, k, v, g, beta, _reference())


def _chunk_reference(q, k, v, g, beta, torch_chunk_gated_delta_rule):
    qn, q_rstd = _l2norm(q)
    kn, k_rstd = _l2norm(k)
    o, _ = torch_chunk_gated_delta_rule(qn, kn, v, g=g, beta=beta, use_qk_l2norm_in_kernel=False)
    b, t, h = g.shape
    pad = (-t) % CHUNK
    g_cum = F.pad(g.float(), (0, 0, 0, pad)).reshape(b, -1, CHUNK, h).cumsum(2).reshape(b, -1, h)[:, :t].contiguous()
    a = torch.zeros(b, t, h, CHUNK, dtype=k.dtype)
    # transformers' v is a slice of the conv output, never contiguous: input_guard copies it
    return o.to(q.dtype), qn, q_rstd, kn, k_rstd, v.clone(memory_format=torch.contiguous_format), g_cum, a


@_chunk_fwd.register_fake
def _(q, k, v, g, beta, scale):
    b, t, hk, dk = q.shape
    h = v.shape[2]
    rows = b * t * hk
    return (q.new_empty(b, t, h, v.shape[3]), torch.empty_like(q, memory_format=torch.contiguous_format),
            q.new_empty(rows, dtype=torch.float32), torch.empty_like(k, memory_format=torch.contiguous_format),
            k.new_empty(rows, dtype=torch.float32), torch.empty_like(v, memory_format=torch.contiguous_format),
            g.new_empty(b, t, h, dtype=torch.float32), k.new_empty(b, t, h, CHUNK))


def backward_workspace(q: torch.Tensor, v: torch.Tensor) -> int:
    """Bytes flash-linear-attention's backward holds at its peak beyond the gradients it
    returns (fla/ops/gated_delta_rule/chunk.py, ``chunk_gated_delta_rule_bwd``, whose locals all
    live until it returns): per (token, value head) in k's dtype, w and the w, k gradients
    (``recompute_w_u_fwd``, ``chunk_bwd_dqkwg``, ``prepare_wy_repr_bwd``: dq, dk, dw, dk2, w:
    5*dk), u, v_new and three v gradients (4*dv), db; in fp32 dg (one per key block of 64,
    ``chunk_bwd_dqkwg``'s NK on a GPU tiling K by 64) and dg2; and per chunk the states h and
    their gradients dh (``chunk_gated_delta_rule_fwd_h``, ``chunk_gated_delta_rule_bwd_dhu``:
    2*B*N*H*dk*dv), less the returned gradients' own bytes."""
    b, t, hk, dk = q.shape
    h, dv = v.shape[2], v.shape[3]
    c = q.element_size()
    rows = b * t * h
    chunks = -(-t // CHUNK)
    peak = rows * ((5 * dk + 4 * dv + 1) * c + (-(-dk // 64) + 1) * 4) + 2 * b * chunks * h * dk * dv * c
    returned = 2 * b * t * hk * dk * c + rows * (dv * c + 4 + c)
    return max(peak - returned, 0)


@torch.library.custom_op("ftmem_fla::chunk_gated_delta_rule_bwd", mutates_args=())
def _chunk_bwd(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
               beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                            torch.Tensor]:
    return (torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v), torch.zeros_like(g), torch.zeros_like(beta),
            torch.empty(backward_workspace(q, v), dtype=torch.uint8))


@_chunk_bwd.register_fake
def _(do, q, k, v, g, beta):
    return (torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), torch.empty_like(g),
            torch.empty_like(beta), q.new_empty(backward_workspace(q, v), dtype=torch.uint8))


def _chunk_setup(ctx, inputs, output):
    q, k, v, g, beta, _ = inputs
    _, qn, q_rstd, kn, k_rstd, vc, g_cum, a = output
    ctx.save_for_backward(qn, q_rstd, kn, k_rstd, vc, g_cum, beta, a)
    ctx.dtypes = (q.dtype, k.dtype, v.dtype, g.dtype)


def _chunk_backward(ctx, do, *unused):
    qn, _, kn, _, vc, g_cum, beta, _ = ctx.saved_tensors
    dq, dk, dv, dg, db, _ = _chunk_bwd(do, qn, kn, vc, g_cum, beta)  # the workspace freed at once
    return dq, dk, dv, dg, db, None


_chunk_fwd.register_autograd(_chunk_backward, setup_context=_chunk_setup)


@torch.library.custom_op("ftmem_cc::causal_conv1d", mutates_args=())
def _conv_fwd(x: torch.Tensor, weight: torch.Tensor, silu: bool) -> torch.Tensor:
    with torch.autocast("cpu", enabled=False):
        out = F.conv1d(x, weight.unsqueeze(1), padding=weight.shape[-1] - 1, groups=x.shape[1])[..., :x.shape[-1]]
        return (F.silu(out) if silu else out).contiguous()


@_conv_fwd.register_fake
def _(x, weight, silu):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("ftmem_cc::causal_conv1d_bwd", mutates_args=())
def _conv_bwd(dout: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros_like(x), torch.zeros_like(weight)


@_conv_bwd.register_fake
def _(dout, x, weight):
    return torch.empty_like(x), torch.empty_like(weight)


def _conv_setup(ctx, inputs, output):
    x, weight, _ = inputs
    ctx.save_for_backward(x, weight)


def _conv_backward(ctx, dout):
    x, weight = ctx.saved_tensors
    dx, dw = _conv_bwd(dout, x, weight)
    return dx, dw, None


_conv_fwd.register_autograd(_conv_backward, setup_context=_conv_setup)


def chunk_gated_delta_rule(query, key, value, g, beta, initial_state=None, output_final_state=False,
                           use_qk_l2norm_in_kernel=False, **kwargs):
    """flash-linear-attention's ``chunk_gated_delta_rule`` as transformers calls it (training:
    no initial state, no final state; q and k l2-normalized in the kernel)."""
    if initial_state is not None or output_final_state or not use_qk_l2norm_in_kernel:
        raise NotImplementedError("the fused stand-in models training steps (no cache, qk l2norm in the kernel)")
    o = _chunk_fwd(query, key, value, g, beta, query.shape[-1] ** -0.5)[0]
    return o, None


def causal_conv1d_fn(x, weight, bias=None, activation=None, **kwargs):
    """causal-conv1d's ``causal_conv1d_fn`` as transformers calls it (no bias in these models)."""
    if bias is not None:
        raise NotImplementedError("the fused stand-in models the bias-free conv1d of these models")
    return _conv_fwd(x, weight, activation in ("silu", "swish"))


@contextlib.contextmanager
def fused_kernels(enabled: bool = True):
    """While the block runs, transformers' Gated DeltaNet modules call the fused stand-ins
    (module docstring); nothing changes when ``enabled`` is False."""
    if not enabled:
        yield
        return
    _reference()
    saved = []
    for name in MODULES:
        module = importlib.import_module(name)
        saved.append((module, module.torch_chunk_gated_delta_rule, module.causal_conv1d_fn))
        module.torch_chunk_gated_delta_rule = chunk_gated_delta_rule
        module.causal_conv1d_fn = causal_conv1d_fn
    try:
        yield
    finally:
        for module, chunk, conv in saved:
            module.torch_chunk_gated_delta_rule = chunk
            module.causal_conv1d_fn = conv


def wants_fused(train) -> bool:
    """Whether a step of ``train`` runs the fused kernels: ``auto`` and ``fused`` (planner:
    planner.memory.mixers.kernels_path); models without Gated DeltaNet layers never call them."""
    return train.kernels != "torch"
