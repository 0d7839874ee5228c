"""Parameter counts: the base model, the adapted modules, the trainable parameters.

Exact integers, checked against published totals (tests/planner/test_counts.py) and
against peft on meta-device models (validate/invariants/planner.py).
"""
from __future__ import annotations

import difflib

from .architectures import Linear
from .specs import ALL_LINEAR, ModelSpec, TrainSpec


def embedding_params(model: ModelSpec) -> int:
    """Input embedding: vocab_size x hidden_size."""
    return model.vocab_size * model.hidden_size


def lm_head_params(model: ModelSpec) -> int:
    """Output projection: vocab_size x hidden_size, or 0 when tied to the input embedding."""
    return 0 if model.tie_word_embeddings else model.vocab_size * model.hidden_size


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
    return embedding_params(model) + linear_params(model) + norm_params(model) + lm_head_params(model)


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


def adapter_params(model: ModelSpec, train: TrainSpec) -> int:
    """Trainable adapter parameters over all decoder layers (0 for full fine-tuning)."""
    if not train.is_adapter:
        return 0
    per_layer = sum(lora_params_per_linear(lin, train.rank, train.is_dora)
                    for lin in targeted_linears(model, train.target_modules))
    return model.num_layers * per_layer


def trainable_params(model: ModelSpec, train: TrainSpec) -> int:
    """Parameters that receive gradients: every parameter for full fine-tuning, else the adapters."""
    return total_params(model) if train.method == "full" else adapter_params(model, train)


def check_rank(model: ModelSpec, train: TrainSpec) -> None:
    """A LoRA rank above min(in, out) of a targeted layer cannot add expressiveness: refuse it."""
    if not train.is_adapter:
        return
    for lin in targeted_linears(model, train.target_modules):
        if train.rank > min(lin.in_features, lin.out_features):
            raise ValueError(f"rank {train.rank} is larger than {lin.name} "
                             f"({lin.in_features} -> {lin.out_features}) of {model.name}")
