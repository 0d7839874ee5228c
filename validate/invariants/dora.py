"""DoRA invariants on real peft models (tiny random Llama, CPU; QDoRA on its 4-bit copy).

- the magnitude is W.norm(dim=1), one value per output row, exactly, at init;
- each DoRA layer's output equals a from-scratch float64 reference
  m * (W + s*B@A) / ||W + s*B@A||_row applied to x, at init and after perturbing A, B, m;
- merge_and_unload reproduces the unmerged forward;
- a zero-norm row does not give silent NaN: the guard (validate.guards) raises a clear error;
- QDoRA's magnitude is the row norm of the dequantized 4-bit weight, exactly.

Bands: ``python -m validate.calibrate dora`` (seeds 0-29, band = mean + k * sigma).
"""
from __future__ import annotations

import torch

from .. import guards
from .. import models as M
from ..result import InvariantResult, at_most, exact
from . import register

GROUP = "dora"


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max())


def dora_layers(model):
    return [(name, layer) for name, layer in M.adapter_layers(model) if M.ADAPTER in layer.lora_magnitude_vector]


def magnitude(layer) -> torch.Tensor:
    return layer.lora_magnitude_vector[M.ADAPTER].weight


def reference_forward(x: torch.Tensor, W: torch.Tensor, A: torch.Tensor, B: torch.Tensor, m: torch.Tensor,
                      scaling: float, bias: torch.Tensor | None = None, norm_dim: int = 1) -> torch.Tensor:
    """DoRA from scratch, float64: m * V / ||V|| with V = W + s * B @ A, applied to x.

    ``norm_dim=1`` normalizes each output row (Liu et al. 2024 with torch's out x in layout,
    as peft does); ``norm_dim=0`` (per input column) exists as a negative control.
    """
    V = W.double() + scaling * (B.double() @ A.double())
    norm = torch.linalg.vector_norm(V, dim=norm_dim)
    direction = V / (norm[:, None] if norm_dim == 1 else norm[None, :])
    y = x.double() @ (m.double()[:, None] * direction).T
    return y if bias is None else y + bias.double()


# ---------------------------------------------------------------- magnitude == ||W||_row at init

def check_magnitude(case: list[tuple[str, torch.Tensor, torch.Tensor]]) -> InvariantResult:
    """[(module, magnitude, dense base weight)]: magnitude == vector_norm(W, dim=1), bit for bit."""
    if not case:
        return InvariantResult("", float("nan"), "entries differing == 0", False, "no DoRA layers found")
    differ, entries, shapes = 0, 0, []
    for name, m, W in case:
        ref = torch.linalg.vector_norm(W.float(), dim=1)
        entries += ref.numel()
        if m.shape != ref.shape:
            differ += ref.numel()
            shapes.append(name.rsplit(".", 1)[-1])
            continue
        differ += int((m.detach().view(torch.int32) != ref.view(torch.int32)).sum())
    detail = f"{len(case)} layers, {entries} magnitudes vs vector_norm(W, dim=1)"
    if shapes:
        detail += f"; shape mismatch in {', '.join(shapes)}"
    return exact("", differ, detail, what="entries differing in any bit")


def _magnitude_case(model):
    return [(name, magnitude(layer), layer.base_layer.weight.detach()) for name, layer in dora_layers(model)]


def _wrong_axis_model():
    model = M.adapted("dora")[2]
    with torch.no_grad():
        for _, layer in dora_layers(model):
            W = layer.base_layer.weight
            if W.shape[0] == W.shape[1]:  # square layers: the column norm has the same shape
                magnitude(layer).copy_(torch.linalg.vector_norm(W, dim=0))
    return model


register("dora.magnitude_is_row_norm", GROUP, check_magnitude, lambda: _magnitude_case(M.adapted("dora")[2]),
         lambda: _magnitude_case(_wrong_axis_model()), "magnitude of square layers taken per input column (dim=0)")


# ---------------------------------------------------------------- forward == reference

# Calibrated (python -m validate.calibrate dora.forward): max over the 14 DoRA layers of
# max|peft layer(x) - float64 reference| / max|reference|, x ~ N(0, 1) of shape 4 x in, seeds 0-29.
# init:      mean 3.86e-07, sigma 8.53e-08, max 6.55e-07, k = 6 -> 8.98e-07
# perturbed: mean 3.57e-07, sigma 7.05e-08, max 5.63e-07, k = 6 -> 7.80e-07  (A, B += N(0, 0.02), m *= 1 + N(0, 0.1))
# One bound, rounded up: 9e-07. The wrong norm axis gives errors of order 1.
FORWARD_REL_BOUND = 9e-07


def check_forward(case: dict) -> InvariantResult:
    worst = 0.0
    with torch.no_grad():
        for name, layer in case["layers"]:
            x = case["x"][:, : layer.in_features]
            W = case["weight"](name, layer)
            y = layer(x)
            ref = reference_forward(x, W, layer.lora_A[M.ADAPTER].weight, layer.lora_B[M.ADAPTER].weight,
                                    magnitude(layer), layer.scaling[M.ADAPTER], layer.base_layer.bias,
                                    norm_dim=case["norm_dim"])
            worst = max(worst, _rel(y, ref))
    axis = "row" if case["norm_dim"] == 1 else "column"
    return at_most("", worst, FORWARD_REL_BOUND,
                   f"{case['what']}: max relative error over {len(case['layers'])} layers vs "
                   f"m * V / ||V||_{axis}, V = W + s*B@A (float64)")


def _dense(name, layer):
    return layer.base_layer.weight.detach()


def forward_case(seed: int = 0, perturbed: bool = False, norm_dim: int = 1) -> dict:
    model = M.adapted("dora", seed)[2]
    if perturbed:
        M.perturb(model, seed, magnitude=True)
    x = torch.randn(4, 128, generator=torch.Generator().manual_seed(40_000 + seed))
    return {"layers": dora_layers(model), "x": x, "weight": _dense, "norm_dim": norm_dim,
            "what": "perturbed A, B, m" if perturbed else "at init"}


def measure_forward(seed: int, perturbed: bool) -> float:
    return check_forward(forward_case(seed, perturbed)).measured


register("dora.forward_matches_reference[init]", GROUP, check_forward, lambda: forward_case(),
         lambda: forward_case(norm_dim=0), "reference normalized per input column")
register("dora.forward_matches_reference[perturbed]", GROUP, check_forward, lambda: forward_case(perturbed=True),
         lambda: forward_case(perturbed=True, norm_dim=0), "reference normalized per input column")


# ---------------------------------------------------------------- merged weight reproduces the forward

# Calibrated (python -m validate.calibrate dora.merge): max|merged logits - unmerged| /
# max|unmerged logits|, perturbed A, B, m, fp32, seeds 0-29.
# mean 3.65e-07, sigma 6.85e-08, max 5.04e-07, k = 6 -> 7.75e-07; bound 8e-07
MERGE_REL_BOUND = 8e-07


def check_merge(case: dict) -> InvariantResult:
    rel = _rel(case["merged"], case["unmerged"])
    return at_most("", rel, MERGE_REL_BOUND,
                   f"max|merged - unmerged| / max|unmerged| over {case['unmerged'].numel()} fp32 logits")


def merge_case(seed: int = 0, scale_error: float = 1.0) -> dict:
    model = M.perturb(M.adapted("dora", seed)[2], seed, magnitude=True)
    unmerged = M.logits(model)
    if scale_error != 1.0:
        for _, layer in dora_layers(model):
            layer.scaling[M.ADAPTER] *= scale_error
    return {"merged": M.logits(model.merge_and_unload()), "unmerged": unmerged}


def measure_merge(seed: int) -> float:
    return check_merge(merge_case(seed)).measured


register("dora.merged_reproduces_forward", GROUP, check_merge, lambda: merge_case(),
         lambda: merge_case(scale_error=1.5), "merged with 1.5x the scaling")


# ---------------------------------------------------------------- zero-norm rows

def check_zero_norm(case: dict) -> InvariantResult:
    """A zero-norm row must give a clear error (the guard) or finite outputs, never silent NaN."""
    model, guard = case["model"], case["guard"]
    with torch.no_grad():
        out = M.logits(model)
    bad = int((~torch.isfinite(out)).sum())
    raised = None
    if guard is not None:
        try:
            guard(model)
        except guards.ZeroNormRowError as exc:
            raised = str(exc)
    silent = 0 if raised else bad
    detail = f"peft forward: {bad} of {out.numel()} logits non-finite; "
    detail += f"guard raised ZeroNormRowError ({raised.split(':')[0]})" if raised else (
        "no guard" if guard is None else "guard did not raise")
    return exact("", silent, detail, what="silent non-finite logits")


def zero_row_model():
    """A DoRA model whose base q_proj of layer 0 has a zero row (as in a pruned model)."""
    base = M.build_tiny(0)
    with torch.no_grad():
        base.model.layers[0].self_attn.q_proj.weight[5].zero_()
    from peft import get_peft_model

    return get_peft_model(base, M.lora_config("dora")).eval()


register("dora.zero_norm_row_defined", GROUP, check_zero_norm,
         lambda: {"model": zero_row_model(), "guard": guards.check_dora_rows},
         lambda: {"model": zero_row_model(), "guard": None}, "no guard: peft's forward alone")


# ---------------------------------------------------------------- QDoRA magnitude from the dequantized weight

def _dequantized(layer) -> torch.Tensor:
    import bitsandbytes.functional as F

    w = layer.base_layer.weight
    return F.dequantize_4bit(w.data, w.quant_state)


def _qdora_case(original: bool = False):
    model = M.qdora()
    weights = M.saved_tiny().weights
    out = []
    for name, layer in dora_layers(model):
        W = weights[name.removeprefix("base_model.model.")] if original else _dequantized(layer)
        out.append((name, magnitude(layer), W))
    return out


register("dora.qdora_magnitude_from_dequantized", GROUP, check_magnitude, lambda: _qdora_case(),
         lambda: _qdora_case(original=True), "norms of the fp32 weights before quantization")

CALIBRATION = {
    "dora.forward[init]": lambda seed: measure_forward(seed, False),
    "dora.forward[perturbed]": lambda seed: measure_forward(seed, True),
    "dora.merge[fp32]": measure_merge,
}
