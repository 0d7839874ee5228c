"""Parameter counts: the base model, the adapted modules, the trainable parameters.

Exact integers, checked against published totals (tests/planner/test_counts.py) and
against peft on meta-device models (validate/invariants/planner.py).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from functools import lru_cache

from .architectures import Linear
from .specs import ALL_LINEAR, ModelSpec, TrainSpec


def embedding_params(model: ModelSpec) -> int:
    """Input embedding: vocab_size x hidden_size."""
    return model.vocab_size * model.hidden_size


def lm_head_params(model: ModelSpec) -> int:
    """Output projection: vocab_size x hidden_size, or 0 when tied to the input embedding."""
    return 0 if model.tie_word_embeddings else model.vocab_size * model.hidden_size


def moe_params(model: ModelSpec) -> int:
    """A mixture of experts' parameters, all layers: the router (E x h, + E with a bias) and the
    fused experts, gate_up (E x 2I x h) and down (E x h x I), + E*(2I + h) with biases
    (gpt-oss); 0 for a dense model."""
    moe = model.layer.moe
    if moe is None:
        return 0
    e, h, i = moe.experts, model.hidden_size, moe.intermediate
    router = e * h + (e if moe.router_bias else 0)
    experts = e * 3 * i * h + (e * (2 * i + h) if moe.expert_bias else 0)
    return model.num_layers * (router + experts)


def sink_params(model: ModelSpec) -> int:
    """Attention sinks (gpt-oss): one learned logit per head per layer."""
    return model.num_layers * model.num_heads if model.traits.attention_sinks else 0


def norm_params(model: ModelSpec) -> int:
    """Norm weights (and LayerNorm biases): each decoder layer's norms, plus the final norm (hidden_size)."""
    return model.num_layers * sum(norm.params for norm in model.layer.norms) + model.hidden_size


def linear_params(model: ModelSpec) -> int:
    """All decoder-layer Linear weights and biases: sum of in*out (+ out for a bias), times layers."""
    return model.num_layers * sum(lin.params for lin in model.linears)


def linear_weight_params(model: ModelSpec) -> int:
    """Decoder-layer Linear weights only (what 4-bit quantization packs): sum of in*out, times layers."""
    return model.num_layers * sum(lin.in_features * lin.out_features for lin in model.linears)


def total_params(model: ModelSpec) -> int:
    """Every parameter of the base model (what HF's num_parameters() reports for a 16-bit model).

    Llama-2-7B: 32000*4096 (embed) + 32 * (4*4096^2 + 3*4096*11008 + 2*4096) + 4096
    + 32000*4096 (lm_head) = 6,738,415,616, the published total.
    """
    return (embedding_params(model) + linear_params(model) + norm_params(model) + lm_head_params(model)
            + moe_params(model) + sink_params(model))


@lru_cache(maxsize=256)
def targeted_linears(model: ModelSpec, targets: tuple[str, ...]) -> tuple[Linear, ...]:
    """The decoder Linear modules an adapter targets.

    ``all-linear`` is every Linear of the decoder layers; like peft, it excludes the output
    layer (lm_head). Names are matched exactly against the layer's module names.
    """
    if ALL_LINEAR in targets:
        return model.linears
    known = model.linear_names
    unknown = [t for t in targets if t not in known]
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, known, n=1)
            hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ValueError(f"{model.name} has no module {', '.join(hints)}; "
                         f"its Linear modules are {', '.join(known)} (or use {ALL_LINEAR})")
    return tuple(lin for lin in model.linears if lin.name in targets)


@lru_cache(maxsize=256)
def targeted_names(model: ModelSpec, train: TrainSpec) -> frozenset[str]:
    """The names of the Linear modules ``train``'s adapter targets; none for full fine-tuning."""
    if not train.is_adapter:
        return frozenset()
    return frozenset(lin.name for lin in targeted_linears(model, train.target_modules))


def lora_params_per_linear(lin: Linear, rank: int, dora: bool) -> int:
    """LoRA A (r x in) and B (out x r): r * (in + out); DoRA adds the magnitude vector (out).

    Hu et al. 2021 (LoRA), Liu et al. 2024 (DoRA); peft stores DoRA's magnitude as one
    value per output row (lora_magnitude_vector).
    """
    return rank * (lin.in_features + lin.out_features) + (lin.out_features if dora else 0)


@dataclass(frozen=True)
class ParamTarget:
    """A parameter LoRA adapts directly (peft's target_parameters): a fused expert weight, as
    ``experts`` stacked (in x out) matrices, or the router's (E x h) weight (experts = 1)."""

    name: str  # "experts.gate_up_proj", "experts.down_proj", "<router>.weight"
    part: str  # "gate_up", "down", "router"
    rank: int
    experts: int
    in_features: int
    out_features: int

    @property
    def params(self) -> int:
        """peft's ParamWrapper: lora_A (r*E x in) and lora_B (out x r*E): E*r*(in + out)."""
        return self.experts * self.rank * (self.in_features + self.out_features)

    @property
    def weight(self) -> int:
        """Elements of the adapted weight (E*in*out): what the merged W + s*B@A materializes."""
        return self.experts * self.in_features * self.out_features


EXPERT_PARAMETERS = ("experts.gate_up_proj", "experts.down_proj")


class UnsupportedMethod(ValueError):
    """A method the libraries refuse for this model and these targets (not a bad number)."""


@lru_cache(maxsize=256)
def targeted_parameters(model: ModelSpec, train: TrainSpec) -> tuple[ParamTarget, ...]:
    """The fused parameters an adapter targets.

    Explicit ``target_parameters`` (peft matches them as suffixes: "experts.gate_up_proj" or
    "mlp.experts.gate_up_proj") get the rank as given. ``all-linear`` on a family whose
    checkpoint conversion peft knows (Mixtral, Qwen3-MoE) is rewritten by peft
    (``convert_peft_config_for_transformers``) to the router at rank r, gate_up at 2r (alpha
    doubled: its rank_pattern) and down at r; for gpt-oss all-linear stays on the attention.
    """
    moe = model.layer.moe
    if not train.is_adapter:
        return ()
    if moe is None:
        if train.target_parameters:
            raise ValueError(f"{model.name} has no fused expert parameters to target "
                             f"({', '.join(train.target_parameters)}); use --target-modules")
        return ()
    e, h, i, r = moe.experts, model.hidden_size, moe.intermediate, train.rank
    wanted: dict[str, int] = {}
    if ALL_LINEAR in train.target_modules and moe.peft_converts:
        wanted = {"router": r, "gate_up": 2 * r, "down": r}
    for name in train.target_parameters:
        part = next((p for p in ("gate_up", "down") if name.endswith(f"experts.{p}_proj")), None)
        if part is None:
            raise ValueError(f"unknown target parameter {name!r} for {model.name} "
                             f"(its fused experts are {', '.join(EXPERT_PARAMETERS)})")
        wanted[part] = r
    shapes = {"router": (1, h, e, f"{moe.router}.weight"), "gate_up": (e, h, 2 * i, EXPERT_PARAMETERS[0]),
              "down": (e, i, h, EXPERT_PARAMETERS[1])}
    out = []
    for part in ("router", "gate_up", "down"):
        if part in wanted:
            n, fan_in, fan_out, name = shapes[part]
            out.append(ParamTarget(name, part, wanted[part], n, fan_in, fan_out))
    if out and train.is_dora:
        raise UnsupportedMethod(f"peft refuses DoRA on fused expert parameters ({model.name}: "
                         f"{', '.join(t.name for t in out)}); adapt the attention only, e.g. "
                         f"--target-modules {','.join(model.linear_names)}")
    return tuple(out)


@lru_cache(maxsize=256)
def adapter_params(model: ModelSpec, train: TrainSpec) -> int:
    """Trainable adapter parameters over all decoder layers (0 for full fine-tuning): LoRA on
    the targeted Linears and on the targeted fused parameters."""
    if not train.is_adapter:
        return 0
    per_layer = sum(lora_params_per_linear(lin, train.rank, train.is_dora)
                    for lin in targeted_linears(model, train.target_modules))
    per_layer += sum(t.params for t in targeted_parameters(model, train))
    return model.num_layers * per_layer


def saved_module_params(model: ModelSpec, train: TrainSpec) -> int:
    """Parameters of peft's modules_to_save copies: vocab_size x hidden_size for each of
    embed_tokens and lm_head. peft deep-copies each named module and trains the copy, so a
    tied embedding and lm_head both named become two independent matrices (peft's default
    ensure_weight_tying=False). 0 for full fine-tuning, which trains the modules themselves."""
    if not train.is_adapter:
        return 0
    return len(train.modules_to_save) * embedding_params(model)


def trainable_params(model: ModelSpec, train: TrainSpec) -> int:
    """Parameters that receive gradients: every parameter for full fine-tuning, else the
    adapters and the modules_to_save copies (what peft's print_trainable_parameters counts)."""
    if train.method == "full":
        return total_params(model)
    return adapter_params(model, train) + saved_module_params(model, train)


def trains_embedding(train: TrainSpec) -> bool:
    """Whether the input embedding gets a gradient: full fine-tuning, or embed_tokens in modules_to_save."""
    return train.method == "full" or "embed_tokens" in train.modules_to_save


def trains_lm_head(train: TrainSpec) -> bool:
    """Whether the output projection gets a gradient: full fine-tuning, or lm_head in modules_to_save."""
    return train.method == "full" or "lm_head" in train.modules_to_save


def check_rank(model: ModelSpec, train: TrainSpec) -> None:
    """A LoRA rank above min(in, out) of a targeted layer cannot add expressiveness: refuse it."""
    if not train.is_adapter:
        return
    for lin in targeted_linears(model, train.target_modules):
        if train.rank > min(lin.in_features, lin.out_features):
            raise ValueError(f"rank {train.rank} is larger than {lin.name} "
                             f"({lin.in_features} -> {lin.out_features}) of {model.name}")
