"""The fused kernels of the Mamba-2 and short-convolution layers, as ops the tracer can run.

transformers 5.23 looks the kernels up when a modeling file is imported
(``use_kernel_func_from_hub_with_fallback``: the Hub's kernels, else the mamba-ssm / causal-conv1d
packages, else its own torch code) and the layers call the module-level names
``mamba2_split_conv1d_scan_combined`` (GraniteMoeHybridMambaLayer.forward,
NemotronHMamba2Mixer.forward: in training it runs the whole mixer, conv, scan, gated norm and
out_proj, in one autograd Function, and only a kernel returns something there) and
``causal_conv1d_fn`` (Lfm2ShortConv.forward). A step of ``--kernels fused`` (or ``auto``,
what transformers picks with those packages installed) swaps those names for the ops here while
it runs (:func:`fused_kernels`).

Each op is a ``torch.library.custom_op``: on real tensors it computes the reference result with
torch ops (transformers' own torch path), so its outputs can be checked against the torch
path; its fake implementation allocates the outputs the kernel returns; its autograd keeps
exactly what the kernel's ``forward`` passes to ``save_for_backward``:

- mamba-ssm (mamba_ssm/ops/triton/ssd_combined.py, MambaSplitConv1dScanCombinedFn.forward,
  ``ctx.save_for_backward`` at line 888): the in_proj output ``zxbcdt``, the conv weight and
  bias, ``out_x`` (the scan's output before the gate, (b, s, H, P) in x's dtype), A, D,
  dt_bias, the gated norm's weight and ``rstd`` (fp32, one per row and group: _layer_norm_fwd),
  out_proj's weight and bias (the kernel casts them to the autocast dtype first, lines 880-883);
  its backward (same file, lines 903-985) recomputes the conv output (T x conv_dim) and the
  gated-norm output (T x d), and allocates dzxbcdt (like zxbcdt), dxBC (T x conv_dim), out_proj's
  input gradient (T x d) and its weight gradient (h x d, made even when the weight is frozen);
- causal-conv1d (causal_conv1d/causal_conv1d_interface.py, CausalConv1dFn.forward,
  ``ctx.save_for_backward(x, weight, bias, seq_idx, initial_states)`` at line 59): its input
  (made contiguous when neither its channel nor its sequence stride is 1, line 23), weight and
  bias; the output is allocated like the input (causal_conv1d_fwd_function); its backward
  allocates dx like x, dweight and dbias.

Note: the fused Mamba op reads ``self.out_proj.weight`` itself, so peft's LoRA on out_proj adds
nothing to the output (peft refuses it outright for nemotron_h; for granitemoehybrid it trains
an adapter the step never uses), and a 4-bit out_proj (QLoRA) reaches the kernel packed: the op
refuses a weight that is not floating point, as F.linear inside the kernel would.
"""
import contextlib
from typing import Optional

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensor

LIBRARY = "ftmem"


def _is_fake(t: torch.Tensor) -> bool:
    return isinstance(t, FakeTensor)


# ---------------------------------------------------------------- reference computations (torch)

def _conv(x, weight, bias, activation: bool):
    """Depthwise causal conv over the last dim of x (b, d, s): transformers' causal_conv1d_fn."""
    out = F.conv1d(x.to(weight.dtype), weight.unsqueeze(1), bias, padding=weight.shape[-1] - 1,
                   groups=x.shape[1])[..., :x.shape[-1]]
    return (F.silu(out) if activation else out).to(x.dtype)


def _mamba_reference(zxbcdt, conv_w, conv_b, dt_bias, A, D, norm_w, out_w, out_b, chunk, headdim, ngroups, eps,
                     dt_min, dt_max, out_dtype):
    """The mixer as the fused kernel computes it, in torch ops: conv + SiLU, the chunked scan
    (transformers' mamba2_chunk_scan), out_x in x's dtype, the gated RMSNorm (norm_before_gate
    False: rms(out_x * silu(z)) per group), out_proj. Returns (out, out_x, rstd)."""
    from transformers.models.granitemoehybrid.modeling_granitemoehybrid import mamba2_chunk_scan

    b, s, _ = zxbcdt.shape
    heads = D.shape[0]
    d = heads * headdim
    state = (conv_w.shape[0] - d) // (2 * ngroups)
    z, xbc, dt = torch.split(zxbcdt, [d, d + 2 * ngroups * state, heads], dim=-1)
    xbc = _conv(xbc.transpose(1, 2), conv_w, conv_b, True).transpose(1, 2)
    x, bb, cc = torch.split(xbc, [d, ngroups * state, ngroups * state], dim=-1)
    y = mamba2_chunk_scan(x.reshape(b, s, heads, headdim), dt, A, bb.reshape(b, s, ngroups, state),
                          cc.reshape(b, s, ngroups, state), chunk_size=chunk, D=D, dt_bias=dt_bias, dt_softplus=True,
                          dt_limit=(dt_min, dt_max))
    out_x = y.reshape(b, s, d).to(x.dtype)
    g = (out_x.float() * F.silu(z.float())).reshape(b * s, ngroups, d // ngroups)
    rstd = torch.rsqrt(g.pow(2).mean(-1) + eps)  # (b*s, G)
    normed = (g * rstd[..., None]).reshape(b, s, d).to(out_x.dtype) * norm_w.to(out_x.dtype)
    out = F.linear(normed.to(out_dtype), out_w.to(out_dtype), None if out_b is None else out_b.to(out_dtype))
    return out, out_x, rstd.t().reshape(-1).contiguous()


# ---------------------------------------------------------------- Mamba-2: mamba_split_conv1d_scan_combined

@torch.library.custom_op(f"{LIBRARY}::mamba_split_conv1d_scan", mutates_args=())
def mamba_split_conv1d_scan(zxbcdt: torch.Tensor, conv_w: torch.Tensor, conv_b: Optional[torch.Tensor],
                            dt_bias: torch.Tensor, A: torch.Tensor, D: torch.Tensor, norm_w: torch.Tensor,
                            out_w: torch.Tensor, out_b: Optional[torch.Tensor], chunk: int, headdim: int, ngroups: int,
                            eps: float, dt_min: float, dt_max: float, out_dtype: torch.dtype
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return tuple(t.clone() if t._base is not None else t for t in _mamba_reference(
            zxbcdt, conv_w, conv_b, dt_bias, A, D, norm_w, out_w, out_b, chunk, headdim, ngroups, eps, dt_min, dt_max,
            out_dtype))


@mamba_split_conv1d_scan.register_fake
def _(zxbcdt, conv_w, conv_b, dt_bias, A, D, norm_w, out_w, out_b, chunk, headdim, ngroups, eps, dt_min, dt_max,
      out_dtype):
    b, s, _ = zxbcdt.shape
    d = D.shape[0] * headdim
    out = zxbcdt.new_empty((b, s, out_w.shape[0]), dtype=out_dtype)
    out_x = zxbcdt.new_empty((b, s, d))
    rstd = zxbcdt.new_empty((ngroups * b * s,), dtype=torch.float32)
    return out, out_x, rstd


_MAMBA_INPUTS = ("zxbcdt", "conv_w", "conv_b", "dt_bias", "A", "D", "norm_w", "out_w", "out_b")


def _mamba_setup(ctx, inputs, output):
    zxbcdt, conv_w, conv_b, dt_bias, A, D, norm_w, out_w, out_b = inputs[:9]
    ctx.args = inputs[9:]
    _, out_x, rstd = output
    # what MambaSplitConv1dScanCombinedFn.forward saves (ssd_combined.py line 888)
    ctx.save_for_backward(zxbcdt, conv_w, conv_b, out_x, A, D, dt_bias, norm_w, rstd, out_w, out_b)


def _mamba_backward(ctx, dout, _dout_x, _drstd):
    zxbcdt, conv_w, conv_b, out_x, A, D, dt_bias, norm_w, rstd, out_w, out_b = ctx.saved_tensors
    chunk, headdim, ngroups, eps, dt_min, dt_max, out_dtype = ctx.args
    inputs = (zxbcdt, conv_w, conv_b, dt_bias, A, D, norm_w, out_w, out_b)
    needs = ctx.needs_input_grad[:9]
    if not _is_fake(zxbcdt):  # real tensors: the reference's gradients
        with torch.enable_grad():
            leaves = [None if t is None else t.detach().requires_grad_(n) for t, n in zip(inputs, needs)]
            out = _mamba_reference(*leaves, chunk, headdim, ngroups, eps, dt_min, dt_max, out_dtype)[0]
            wanted = [t for t, n in zip(leaves, needs) if n and t is not None]
            grads = iter(torch.autograd.grad(out, wanted, dout))
        return tuple(next(grads) if n and t is not None else None for t, n in zip(leaves, needs)) + (None,) * 7
    # the kernel's backward (ssd_combined.py lines 903-985): recomputed conv output and gated-norm
    # output, dzxbcdt, dxBC, out_proj's input and weight gradients
    b, s, _ = zxbcdt.shape
    d = D.shape[0] * headdim
    conv_dim = conv_w.shape[0]
    xbc_conv = zxbcdt.new_empty((b, s, conv_dim))  # noqa: F841 (live until the end of backward)
    out_recompute = zxbcdt.new_empty((b, s, d), dtype=out_x.dtype)  # noqa: F841
    dzxbcdt = torch.empty_like(zxbcdt)
    dxbc = zxbcdt.new_empty((b, s, conv_dim))  # noqa: F841
    dout_lin = dout.new_empty((b, s, d))  # noqa: F841
    dout_w = dout.new_empty(out_w.shape)
    grads = {"zxbcdt": dzxbcdt, "out_w": dout_w}
    return tuple((grads.get(name) if name in grads else torch.empty_like(t)) if n and t is not None else None
                 for name, t, n in zip(_MAMBA_INPUTS, inputs, needs)) + (None,) * 7


torch.library.register_autograd(f"{LIBRARY}::mamba_split_conv1d_scan", _mamba_backward, setup_context=_mamba_setup)


def mamba_split_conv1d_scan_combined(zxbcdt, conv1d_weight, conv1d_bias, dt_bias, A, D, chunk_size,
                                     initial_states=None, seq_idx=None, dt_limit=(0.0, float("inf")),
                                     return_final_states=False, activation="silu", rmsnorm_weight=None,
                                     rmsnorm_eps=1e-6, outproj_weight=None, outproj_bias=None, headdim=None,
                                     ngroups=1, norm_before_gate=True, **kwargs):
    """What the layers call in training (mamba-ssm's signature): the fused op, for the
    configuration the hybrids use (a gated norm after the gate, out_proj inside, SiLU)."""
    if (initial_states is not None or seq_idx is not None or return_final_states or rmsnorm_weight is None
            or outproj_weight is None or norm_before_gate or activation not in ("silu", "swish")):
        raise NotImplementedError("the traced fused Mamba-2 op covers the hybrids' training call only")
    if not outproj_weight.is_floating_point():
        raise TypeError(f"out_proj's weight reaches the fused Mamba kernel as {outproj_weight.dtype} (a 4-bit "
                        "weight): its F.linear cannot run it")
    device = zxbcdt.device.type if zxbcdt.device.type != "meta" else "cpu"
    out_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else zxbcdt.dtype
    out, _, _ = mamba_split_conv1d_scan(zxbcdt, conv1d_weight, conv1d_bias, dt_bias, A, D, rmsnorm_weight,
                                        outproj_weight, outproj_bias, chunk_size, headdim, ngroups, rmsnorm_eps,
                                        float(dt_limit[0]), float(dt_limit[1]), out_dtype)
    return out


# ---------------------------------------------------------------- causal-conv1d: causal_conv1d_fn

@torch.library.custom_op(f"{LIBRARY}::causal_conv1d", mutates_args=())
def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], activation: bool) -> torch.Tensor:
    with torch.no_grad():
        return torch.empty_like(x).copy_(_conv(x, weight, bias, activation))


@causal_conv1d.register_fake
def _(x, weight, bias, activation):
    return torch.empty_like(x)


def _conv_setup(ctx, inputs, output):
    x, weight, bias, activation = inputs
    ctx.activation = activation
    ctx.save_for_backward(x, weight, bias)  # causal_conv1d_interface.py line 59


def _conv_backward(ctx, dout):
    x, weight, bias = ctx.saved_tensors
    needs = ctx.needs_input_grad[:3]
    if not _is_fake(x):
        with torch.enable_grad():
            leaves = [None if t is None else t.detach().requires_grad_(n) for t, n in zip((x, weight, bias), needs)]
            out = _conv(*leaves, ctx.activation)
            wanted = [t for t, n in zip(leaves, needs) if n and t is not None]
            grads = iter(torch.autograd.grad(out, wanted, dout))
        return tuple(next(grads) if n and t is not None else None for t, n in zip(leaves, needs)) + (None,)
    return tuple(torch.empty_like(t) if n and t is not None else None for t, n in zip((x, weight, bias), needs)) + (None,)


torch.library.register_autograd(f"{LIBRARY}::causal_conv1d", _conv_backward, setup_context=_conv_setup)


def causal_conv1d_fn(x, weight, bias=None, seq_idx=None, initial_states=None, return_final_states=False,
                     final_states_out=None, activation=None, **kwargs):
    """causal-conv1d's signature: the traced op (its input made contiguous as CausalConv1dFn does
    when neither its channel nor its sequence stride is 1)."""
    if seq_idx is not None or initial_states is not None or return_final_states:
        raise NotImplementedError("the traced causal_conv1d op covers the plain training call only")
    if x.stride(2) != 1 and x.stride(1) != 1:
        x = x.contiguous()
    return causal_conv1d(x, weight, bias, activation in ("silu", "swish"))


# ---------------------------------------------------------------- where transformers looks them up

# modeling module -> the module-level names the layers call, and what replaces each
PATCHES = {
    "transformers.models.granitemoehybrid.modeling_granitemoehybrid": {
        "mamba2_split_conv1d_scan_combined": mamba_split_conv1d_scan_combined},
    "transformers.models.nemotron_h.modeling_nemotron_h": {
        "mamba2_split_conv1d_scan_combined": mamba_split_conv1d_scan_combined},
    "transformers.models.lfm2.modeling_lfm2": {"causal_conv1d_fn": causal_conv1d_fn},
}
MODEL_TYPES = {"granitemoehybrid": "transformers.models.granitemoehybrid.modeling_granitemoehybrid",
               "nemotron_h": "transformers.models.nemotron_h.modeling_nemotron_h",
               "lfm2": "transformers.models.lfm2.modeling_lfm2"}


def has_fused_kernels(model_type: str) -> bool:
    return model_type in MODEL_TYPES


MAMBA_MODEL_TYPES = ("granitemoehybrid", "nemotron_h")


@contextlib.contextmanager
def fused_kernels(model_type: str, kernels: str, quantized: bool = False):
    """While the block runs, the layers of ``model_type`` call the traced fused ops (``kernels``
    "fused" or "auto"); nothing changes for "torch" or another model type, nor for "auto" with a
    4-bit method on Mamba-2 layers, whose fused kernel cannot take the packed out_proj (the plan
    then assumes the torch path too: planner.memory.mixers.fused_refusal)."""
    module_name = MODEL_TYPES.get(model_type)
    if kernels == "auto" and quantized and model_type in MAMBA_MODEL_TYPES:
        kernels = "torch"
    if kernels == "torch" or module_name is None:
        yield
        return
    import importlib

    module = importlib.import_module(module_name)
    saved = {name: getattr(module, name) for name in PATCHES[module_name]}
    try:
        for name, fn in PATCHES[module_name].items():
            setattr(module, name, fn)
        yield
    finally:
        for name, fn in saved.items():
            setattr(module, name, fn)
