"""LoRA invariants on real peft models (tiny random Llama, CPU).

- B is exactly zero at init, A is not;
- the adapted model's logits equal the base model's bit for bit at init (fp32, bf16), and
  differ after one training step;
- the adapter's output delta is (alpha/r) * B @ A applied to x (rsLoRA: alpha/sqrt(r)),
  with the scaling taken from the planner's TrainSpec;
- merge_and_unload gives the unmerged outputs within a calibrated tolerance;
- merge then unmerge restores the base weights within a calibrated tolerance.

Tolerance bands sit next to their checks, with how they were calibrated
(``python -m validate.calibrate lora``: seeds 0-29, band = mean + k * sigma, rounded up).
"""
from __future__ import annotations

import torch

from .. import models as M
from ..result import InvariantResult, at_most, exact, greater
from . import register

GROUP = "lora"
RANK, ALPHA = 8, 16  # models.lora_config defaults: alpha = 2r


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({4: torch.int32, 2: torch.int16}[t.element_size()])


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|, in float64."""
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max())


# ---------------------------------------------------------------- B == 0, A != 0 at init

def check_b_zero(model) -> InvariantResult:
    bs = [layer.lora_B[M.ADAPTER].weight for _, layer in M.adapter_layers(model)]
    if not bs:
        return InvariantResult("", float("nan"), "non-zero B entries == 0", False, "no LoRA layers found")
    nonzero = sum(int(torch.count_nonzero(b)) for b in bs)
    entries = sum(b.numel() for b in bs)
    return exact("", nonzero, f"{len(bs)} lora_B matrices, {entries} entries", what="non-zero B entries")


def check_a_nonzero(model) -> InvariantResult:
    as_ = [layer.lora_A[M.ADAPTER].weight for _, layer in M.adapter_layers(model)]
    if not as_:
        return InvariantResult("", float("nan"), "all-zero A matrices == 0", False, "no LoRA layers found")
    zero = sum(int(torch.count_nonzero(a) == 0) for a in as_)
    frac = min(float(torch.count_nonzero(a)) / a.numel() for a in as_)
    return exact("", zero, f"{len(as_)} lora_A matrices; smallest non-zero fraction {frac:.4f}",
                 what="all-zero A matrices")


def _init_model():
    return M.adapted("lora")[2]


def _nonzero_b():
    model = _init_model()
    with torch.no_grad():
        M.adapter_layers(model)[0][1].lora_B[M.ADAPTER].weight[0, 0] = 1e-4
    return model


def _zero_a():
    model = _init_model()
    with torch.no_grad():
        M.adapter_layers(model)[3][1].lora_A[M.ADAPTER].weight.zero_()
    return model


register("lora.b_zero_at_init", GROUP, check_b_zero, _init_model, _nonzero_b, "one B entry set to 1e-4")
register("lora.a_nonzero_at_init", GROUP, check_a_nonzero, _init_model, _zero_a, "one A matrix zeroed")


# ---------------------------------------------------------------- identity at init

def check_identity(case: tuple[torch.Tensor, torch.Tensor]) -> InvariantResult:
    """(base logits, adapted logits): every logit identical in every bit."""
    base, adapted = case
    if base.shape != adapted.shape or base.dtype != adapted.dtype:
        return InvariantResult("", float(base.numel()), "logits differing in any bit == 0", False,
                               f"shape/dtype {tuple(adapted.shape)} {adapted.dtype} != {tuple(base.shape)} {base.dtype}")
    differ = int((_bits(base) != _bits(adapted)).sum())
    diff = float((base.double() - adapted.double()).abs().max())
    return exact("", differ, f"{base.numel()} {str(base.dtype).removeprefix('torch.')} logits, max |diff| {diff:.3g}",
                 what="logits differing in any bit")


def _identity_case(dtype, perturbed: bool = False):
    _, base_logits, model = M.adapted("lora", 0, dtype)
    if perturbed:
        with torch.no_grad():
            for _, layer in M.adapter_layers(model):
                layer.lora_B[M.ADAPTER].weight.normal_(0, 0.02, generator=torch.Generator().manual_seed(1))
    return base_logits, M.logits(model)


for _dtype, _tag in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
    register(f"lora.identity_at_init[{_tag}]", GROUP, check_identity,
             lambda d=_dtype: _identity_case(d), lambda d=_dtype: _identity_case(d, perturbed=True),
             "B perturbed with N(0, 0.02)")


# ---------------------------------------------------------------- one training step changes the output

def check_step_changes(case: dict) -> InvariantResult:
    """After one optimizer step the logits must differ from the base model's."""
    diff = float((case["before"].double() - case["after"].double()).abs().max())
    return greater("", diff, 0.0, f"max |logit change| after one Adam step (lr {case['lr']:g}); "
                                  f"B changed in {case['b_changed']}/{case['layers']} layers, "
                                  f"A in {case['a_changed']}/{case['layers']} (A's gradient is exactly 0 while B = 0)")


def _step_case(lr: float):
    _, base_logits, model = M.adapted("lora")
    model.train()
    layers = M.adapter_layers(model)
    a0 = [layer.lora_A[M.ADAPTER].weight.detach().clone() for _, layer in layers]
    b0 = [layer.lora_B[M.ADAPTER].weight.detach().clone() for _, layer in layers]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    ids = M.input_ids()
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    model.eval()
    return {"before": base_logits, "after": M.logits(model), "lr": lr, "layers": len(layers),
            "a_changed": sum(not torch.equal(a, layer.lora_A[M.ADAPTER].weight) for a, (_, layer) in zip(a0, layers)),
            "b_changed": sum(not torch.equal(b, layer.lora_B[M.ADAPTER].weight) for b, (_, layer) in zip(b0, layers))}


register("lora.step_changes_output", GROUP, check_step_changes, lambda: _step_case(1e-3),
         lambda: _step_case(0.0), "a step with learning rate 0")


# ---------------------------------------------------------------- delta == scaling * B @ A

# Calibrated (python -m validate.calibrate lora.delta): max over layers of
# max|peft delta - float64 reference| / max|reference|, peft fp32, B ~ N(0, 0.02), seeds 0-29.
# lora:   mean 2.15e-07, sigma 3.55e-08, max 2.86e-07, k = 6 -> 4.28e-07
# rslora: mean 2.06e-07, sigma 3.00e-08, max 2.83e-07, k = 6 -> 3.86e-07
# One bound for both, rounded up: 4.5e-07. A wrong scaling gives errors of order 1.
DELTA_REL_BOUND = 4.5e-07


def check_delta(case: dict) -> InvariantResult:
    """Layer output minus base output == scaling * x @ A.T @ B.T (float64 reference)."""
    worst, scalings = 0.0, set()
    with torch.no_grad():
        for _, layer in case["layers"]:
            x = case["x"][:, : layer.in_features]
            a, b = layer.lora_A[M.ADAPTER].weight, layer.lora_B[M.ADAPTER].weight
            delta = layer(x) - layer.base_layer(x)
            ref = (x.double() @ a.double().T @ b.double().T) * case["scaling"]
            worst = max(worst, _rel(delta, ref))
            scalings.add(layer.scaling[M.ADAPTER])
    return at_most("", worst, DELTA_REL_BOUND,
                   f"{case['method']}: expected scaling {case['scaling']:g} (planner TrainSpec), "
                   f"peft's {', '.join(f'{s:g}' for s in sorted(scalings))}; max relative error over "
                   f"{len(case['layers'])} layers")


def delta_case(method: str, seed: int = 0, expected_from: str | None = None) -> dict:
    """A perturbed adapter's layers, an input, and the scaling the planner expects for a method."""
    from planner import TrainSpec

    model = M.perturb(M.adapted(method, seed)[2], seed, magnitude=False)
    x = torch.randn(4, 128, generator=torch.Generator().manual_seed(30_000 + seed))
    scaling = TrainSpec(method=expected_from or method, rank=RANK, alpha=ALPHA).scaling
    return {"layers": M.adapter_layers(model), "x": x, "scaling": scaling, "method": method}


def measure_delta(method: str, seed: int) -> float:
    return check_delta(delta_case(method, seed)).measured


register("lora.delta_is_scaled_BA[lora]", GROUP, check_delta, lambda: delta_case("lora"),
         lambda: delta_case("lora", expected_from="rslora"), "expected scaling alpha/sqrt(r) on a LoRA adapter")
register("lora.delta_is_scaled_BA[rslora]", GROUP, check_delta, lambda: delta_case("rslora"),
         lambda: delta_case("rslora", expected_from="lora"), "expected scaling alpha/r on an rsLoRA adapter")


# ---------------------------------------------------------------- merge_and_unload

# Calibrated (python -m validate.calibrate lora.merge): max|merged logits - unmerged| /
# max|unmerged logits|, A and B perturbed with N(0, 0.02), seeds 0-29.
# fp32: mean 3.98e-07, sigma 7.24e-08, max 5.68e-07, k = 6 -> 8.32e-07; bound 9e-07
# bf16: mean 7.54e-03, sigma 1.22e-03, max 1.06e-02, k = 6 -> 1.48e-02; bound 1.5e-02
# (bf16: the merged weight W + s*B@A is rounded to bf16, the unmerged path adds an fp32
# adapter output to a bf16 base output.)
MERGE_REL_BOUND = {torch.float32: 9e-07, torch.bfloat16: 1.5e-02}


def check_merge(case: dict) -> InvariantResult:
    rel = _rel(case["merged"], case["unmerged"])
    return at_most("", rel, MERGE_REL_BOUND[case["dtype"]],
                   f"max|merged - unmerged| / max|unmerged| over {case['unmerged'].numel()} "
                   f"{str(case['dtype']).removeprefix('torch.')} logits")


def merge_case(dtype, seed: int = 0, scale_error: float = 1.0) -> dict:
    model = M.perturb(M.adapted("lora", seed, dtype)[2], seed, magnitude=False)
    unmerged = M.logits(model)
    if scale_error != 1.0:
        for _, layer in M.adapter_layers(model):
            layer.scaling[M.ADAPTER] *= scale_error
    merged = model.merge_and_unload()
    return {"merged": M.logits(merged), "unmerged": unmerged, "dtype": dtype}


def measure_merge(dtype, seed: int) -> float:
    return check_merge(merge_case(dtype, seed)).measured


# ---------------------------------------------------------------- merge then unmerge

# Calibrated (python -m validate.calibrate lora.unmerge): max over layers of
# max|W after merge+unmerge - W| / max|W|, seeds 0-29.
# fp32: mean 9.83e-08, sigma 1.06e-08, max 1.12e-07, k = 6 -> 1.62e-07; bound 1.7e-07
# bf16: mean 6.66e-03, sigma 4.38e-04, max 7.58e-03, k = 6 -> 9.29e-03; bound 9.5e-03
# Not bit for bit: (W + d) - d rounds twice; in bf16 the error is about one bf16 ulp of max|W|.
UNMERGE_REL_BOUND = {torch.float32: 1.7e-07, torch.bfloat16: 9.5e-03}


def check_unmerge(case: dict) -> InvariantResult:
    worst = max(_rel(after, before) for before, after in zip(case["before"], case["after"]))
    exact_layers = sum(torch.equal(b, a) for b, a in zip(case["before"], case["after"]))
    return at_most("", worst, UNMERGE_REL_BOUND[case["dtype"]],
                   f"max|W' - W| / max|W| over {len(case['before'])} base weights "
                   f"({exact_layers} restored bit for bit), {str(case['dtype']).removeprefix('torch.')}")


def unmerge_case(dtype, seed: int = 0, scale_error: float = 1.0) -> dict:
    model = M.perturb(M.adapted("lora", seed, dtype)[2], seed, magnitude=False)
    layers = M.adapter_layers(model)
    before = [layer.base_layer.weight.detach().clone() for _, layer in layers]
    model.merge_adapter()
    if scale_error != 1.0:
        for _, layer in layers:
            layer.scaling[M.ADAPTER] *= scale_error
    model.unmerge_adapter()
    after = [layer.base_layer.weight.detach().clone() for _, layer in layers]
    return {"before": before, "after": after, "dtype": dtype}


def measure_unmerge(dtype, seed: int) -> float:
    return check_unmerge(unmerge_case(dtype, seed)).measured


for _dtype, _tag in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
    register(f"lora.merge_matches_unmerged[{_tag}]", GROUP, check_merge, lambda d=_dtype: merge_case(d),
             lambda d=_dtype: merge_case(d, scale_error=1.5), "merged with 1.5x the scaling")
for _dtype, _tag in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
    register(f"lora.unmerge_restores_base[{_tag}]", GROUP, check_unmerge, lambda d=_dtype: unmerge_case(d),
             lambda d=_dtype: unmerge_case(d, scale_error=1.5), "unmerged with 1.5x the scaling")

# What validate.calibrate measures for this group: name -> f(seed) -> float.
CALIBRATION = {
    "lora.delta[lora]": lambda seed: measure_delta("lora", seed),
    "lora.delta[rslora]": lambda seed: measure_delta("rslora", seed),
    "lora.merge[fp32]": lambda seed: measure_merge(torch.float32, seed),
    "lora.merge[bf16]": lambda seed: measure_merge(torch.bfloat16, seed),
    "lora.unmerge[fp32]": lambda seed: measure_unmerge(torch.float32, seed),
    "lora.unmerge[bf16]": lambda seed: measure_unmerge(torch.bfloat16, seed),
}
