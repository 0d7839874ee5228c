"""Planner vs peft: parameter counts on the real module trees.

- trainable and total parameter counts from planner/ equal peft's on the same model built
  on the meta device, for every catalog model (whole for the base count, cut to 2 layers for
  the adapters), every method and several target sets and ranks (lora, rslora and qlora add the same adapters; dora and qdora add the magnitude);
- a 4-bit model's parameter count pitfall is handled: summing numel() over a bitsandbytes
  model counts packed bytes (two weights per uint8), half of each quantized weight; the
  true count takes each Params4bit's quant_state.shape.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .. import models as M
from ..result import InvariantResult, exact
from . import register

GROUP = "planner"

# planner method -> whether peft's adapter for it carries DoRA's magnitude vector.
# lora / rslora / qlora create the same A and B (rsLoRA changes only the scaling; QLoRA only
# the base weights' storage), dora / qdora add one magnitude per output row.
METHOD_DORA = {"lora": False, "rslora": False, "qlora": False, "dora": True, "qdora": True}


def target_sets(spec) -> dict[str, tuple[str, ...]]:
    """Named target-module sets for a model: all linear layers, attention q/v, the MLP (for a
    mixture of experts, whose MLP has no Linear, o_proj: its experts are in
    :func:`target_parameter_sets`)."""
    from planner.model.targets import all_names

    names = all_names(spec)  # every layer kind's (a hybrid's q_proj is in its full-attention layers)
    attention = tuple(n for n in names if n in ("q_proj", "v_proj", "qkv_proj"))
    mlp = tuple(n for n in names if n.split("_")[0] in ("gate", "up", "down")) or ("o_proj",)
    return {"all-linear": ("all-linear",), "attention": attention, "mlp": mlp}


def target_parameter_sets(spec) -> dict[str, tuple[str, ...]]:
    """The fused parameters each named set adapts too: a mixture of experts' "mlp" set is its
    experts (peft's target_parameters)."""
    from planner.model.targets import EXPERT_PARAMETERS

    return {"mlp": EXPERT_PARAMETERS} if spec.layer.moe is not None else {}


@dataclass(frozen=True)
class Config:
    """One peft configuration to build: DoRA or not, a target set name, a rank."""

    dora: bool
    targets: str
    rank: int

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(m for m, d in METHOD_DORA.items() if d == self.dora)


# What `validate` runs for every catalog model; the test suite adds WIDE_CONFIGS on whole models.
QUICK_CONFIGS = (Config(False, "all-linear", 16), Config(True, "attention", 8))
WIDE_CONFIGS = (Config(True, "all-linear", 64), Config(False, "mlp", 8), Config(False, "attention", 64),
                Config(True, "mlp", 4))


@dataclass(frozen=True)
class Pair:
    """Planner and peft counts of one (model, method, targets, rank)."""

    label: str
    planner_trainable: int
    planner_total: int
    peft_trainable: int
    peft_total: int

    @property
    def equal(self) -> bool:
        return (self.planner_trainable, self.planner_total) == (self.peft_trainable, self.peft_total)


def base_param_count(model) -> int:
    """Distinct parameters of a torch model (tied weights once), as peft and HF count them."""
    return sum(p.numel() for p in model.parameters())


def peft_counts(name: str, config: Config) -> tuple[int, int]:
    """(trainable, total) from peft's get_nb_trainable_parameters on the meta-device model."""
    from peft import get_peft_model

    from ..baselines import spec_for

    spec = spec_for(name)
    model = M.meta_model(name)
    targets = target_sets(spec)[config.targets]
    parameters = target_parameter_sets(spec).get(config.targets, ())
    try:
        with torch.device("meta"):  # adapters on meta too: no memory, no random init cost
            peft_model = get_peft_model(model, M.lora_config("dora" if config.dora else "lora", config.rank,
                                                             targets=list(targets) if targets != ("all-linear",)
                                                             else "all-linear", parameters=parameters))
    except ValueError:  # peft refuses the method here (DoRA on fused expert parameters)
        return None
    return peft_model.get_nb_trainable_parameters()


def count_pairs(names, configs, planner_method_override: str | None = None, layers: int | None = None) -> list[Pair]:
    """Planner vs peft for each model and config (and the full method, no peft needed, on the
    whole model). ``layers``: the adapter pairs on the model cut to that many decoder layers
    ("name@NL"), the planner's count of the same cut model against peft's: each layer's
    adapters are counted on the real widths, in a fraction of the time peft takes to wrap
    every layer of a 70B model (the full-depth adapter counts are the wide test's, one model
    per architecture)."""
    from planner import TrainSpec, get_model
    from planner.model import counts
    from planner.model.targets import UnsupportedMethod

    from ..baselines import spec_for

    pairs = []
    for whole in names:
        base = base_param_count(M.meta_model(whole))
        full = TrainSpec(method="full")
        whole_spec = get_model(whole)
        pairs.append(Pair(f"{whole} full", counts.trainable_params(whole_spec, full), counts.total_params(whole_spec),
                          base, base))
        name = f"{whole}@{layers}L" if layers else whole
        spec = spec_for(name)
        for config in configs:
            peft = peft_counts(name, config)
            targets = target_sets(spec)[config.targets]
            parameters = target_parameter_sets(spec).get(config.targets, ())
            for method in config.methods:
                train = TrainSpec(method=planner_method_override or method, rank=config.rank, target_modules=targets,
                                  target_parameters=parameters)
                label = f"{name} {method} {config.targets} r{config.rank}"
                try:
                    planned = (counts.trainable_params(spec, train),
                               counts.total_params(spec) + counts.adapter_params(spec, train))
                except UnsupportedMethod:
                    planned = None
                if planned is None or peft is None:  # refused: both must refuse (-1 marks a refusal)
                    planned, peft_pair = planned or (-1, -1), peft or (-1, -1)
                    pairs.append(Pair(f"{label} (refused)", *planned, *peft_pair))
                    continue
                pairs.append(Pair(label, *planned, *peft))
    return pairs


def check_counts(pairs: list[Pair]) -> InvariantResult:
    bad = [p for p in pairs if not p.equal]
    detail = f"{len(pairs)} (model, method, targets, rank) combinations"
    if bad:
        p = bad[0]
        detail += (f"; first mismatch {p.label}: trainable planner {p.planner_trainable} vs peft {p.peft_trainable}, "
                   f"total planner {p.planner_total} vs peft {p.peft_total}")
    return exact("", len(bad), detail, what="combinations differing")


def _catalog():
    from planner import model_names

    return model_names()


register("planner.counts_match_peft", GROUP, check_counts, lambda: count_pairs(_catalog(), QUICK_CONFIGS, layers=2),
         lambda: count_pairs(["qwen2.5-0.5b"], (Config(True, "attention", 8),), planner_method_override="lora"),
         "planner counts a peft DoRA adapter as plain LoRA (no magnitude)")


# ---------------------------------------------------------------- the 4-bit count pitfall

def true_param_count(model) -> int:
    """Parameters of a possibly 4-bit model: a Params4bit counts its unpacked shape."""
    total = 0
    for p in model.parameters():
        state = getattr(p, "quant_state", None)
        total += math.prod(state.shape) if p.__class__.__name__ == "Params4bit" and state is not None else p.numel()
    return total


def naive_param_count(model) -> int:
    """sum(numel) over parameters: what a generic torch script counts (the pitfall)."""
    return sum(p.numel() for p in model.parameters())


def check_four_bit_count(case: dict) -> InvariantResult:
    from planner import get_model
    from planner.model import counts

    model = case["model"]
    planner_total = counts.total_params(get_model(str(M.config_json_path())))
    counted = case["count"](model)
    return exact("", abs(counted - planner_total),
                 f"4-bit tiny Llama: {case['how']} {counted} vs planner total {planner_total}; "
                 f"naive sum(numel) {naive_param_count(model)}, HF num_parameters() {model.num_parameters()}",
                 what="parameters differing")


register("planner.four_bit_param_count", GROUP, check_four_bit_count,
         lambda: {"model": M.four_bit(), "count": true_param_count, "how": "Params4bit by quant_state.shape"},
         lambda: {"model": M.four_bit(), "count": naive_param_count, "how": "sum(numel)"},
         "count by sum(numel) (packed bytes)")
