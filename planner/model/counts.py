"""Parameter counts: the base model, the adapters, the trainable parameters.

Exact integers, each a sum over the tensor inventory (planner.model.inventory), checked against
published totals (tests/planner/test_counts.py) and against peft on meta-device models
(validate/invariants/planner.py).
"""
from __future__ import annotations

from functools import lru_cache

from planner.model import inventory as inv
from planner.model.specs import ModelSpec, TrainSpec


def embedding_params(model: ModelSpec) -> int:
    """Input embedding: vocab_size x hidden_size."""
    return model.vocab_size * model.hidden_size


def lm_head_params(model: ModelSpec) -> int:
    """Output projection: vocab_size x hidden_size, or 0 when tied to the input embedding."""
    return 0 if model.tie_word_embeddings else model.vocab_size * model.hidden_size


@lru_cache(maxsize=1024)
def role_params(model: ModelSpec, *roles: str) -> int:
    """The base model's parameters of some roles (planner.model.inventory: "norm", "final_norm",
    "linear", "bias", "router", "experts", "sinks", ...)."""
    return sum(t.elements for t in inv.base_tensors(model) if t.role in roles)


@lru_cache(maxsize=256)
def total_params(model: ModelSpec) -> int:
    """Every parameter of the base model (what HF's num_parameters() reports for a 16-bit model).

    Llama-2-7B: 32000*4096 (embed) + 32 * (4*4096^2 + 3*4096*11008 + 2*4096) + 4096
    + 32000*4096 (lm_head) = 6,738,415,616, the published total.
    """
    return sum(t.elements for t in inv.base_tensors(model))


def linear_weight_params(model: ModelSpec) -> int:
    """Decoder-layer Linear weights only (what 4-bit quantization packs)."""
    return role_params(model, "linear")


def adapter_params(model: ModelSpec, train: TrainSpec) -> int:
    """Trainable adapter parameters over all decoder layers (0 for full fine-tuning): LoRA on
    the targeted Linears, r * (in + out) each, + out for DoRA's magnitude (Hu et al. 2021;
    Liu et al. 2024, peft's lora_magnitude_vector), and on the targeted fused parameters."""
    return inv.sums(model, train, 2).elements["adapter"]


def saved_module_params(model: ModelSpec, train: TrainSpec) -> int:
    """Parameters of peft's modules_to_save copies: vocab_size x hidden_size for each of
    embed_tokens and lm_head. peft deep-copies each named module and trains the copy, so a
    tied embedding and lm_head both named become two independent matrices (peft's default
    ensure_weight_tying=False). 0 for full fine-tuning, which trains the modules themselves."""
    return inv.sums(model, train, 2).elements["saved_copy"]


def trainable_params(model: ModelSpec, train: TrainSpec) -> int:
    """Parameters that receive gradients: every parameter for full fine-tuning, else the
    adapters and the modules_to_save copies (what peft's print_trainable_parameters counts)."""
    return inv.sums(model, train, 2).trained_elements
