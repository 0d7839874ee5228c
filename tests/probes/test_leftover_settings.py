"""The first decoder layer when only some of its modules are targeted (random tier leftovers):
with a frozen embedding and no checkpointing, autograd records an op of layer 0 only when one
of its inputs needs a gradient, so the layer keeps only what the targeted modules' gradients
need (terms.first_layer_unrecorded; the dropout parts through the adapter kind's
``dropout_unrecorded``).

The random tier's over-plans of this class: Granite-3.3-8B 2 layers QDoRA eager on k_proj and
down_proj (layer 0 keeps no c-byte probabilities and no k copy), Llama-3.2-1B 2 layers DoRA on
up_proj only (layer 0 keeps no attention tensor, no post-attention norm input, no gate or up
output). Planned against the exact tracer on tiny models with an 8k vocabulary, so that the
start of backward (every activation beside the logits' gradients) is the backward peak.

Bound: forward and backward within 0.1% of the trace (calibrated on these cases and on tiny
Llama with every single target under LoRA, QLoRA, DoRA, QDoRA in autocast, pure and mixed
precision: worst 0.04%, a few KiB of DoRA's norm vectors and the step's input ids). The
negative controls show the plan without the new terms missing by more.
"""
from dataclasses import replace

import pytest

from planner import TrainSpec, plan
from planner.model.catalog import model_from_config
from probe_traces import traced
from planner.memory.moments import clear_caches

BOUND = 0.001
BASE = dict(pad_token_id=0, vocab_size=8192, hidden_size=128, intermediate_size=352, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=False)
GRANITE = dict(model_type="granite", embedding_multiplier=12.0, residual_multiplier=0.22,
               attention_multiplier=0.0078125, logits_scaling=16.0)
LLAMA = dict(model_type="llama")
PHI3 = dict(model_type="phi3", num_key_value_heads=4)

# name: (config, method, dtype, precision, targets, attention, dropout)
CASES = {
    # the Granite class: k needs a gradient, q and v do not (eager attention)
    "granite-qdora-eager-k-down": (GRANITE, "qdora", "bf16", "autocast", ("k_proj", "down_proj"), "eager", 0.05),
    # the Llama-3.2-1B class: nothing in attention is targeted (SDPA keeps nothing in layer 0)
    "llama-dora-up-only": (LLAMA, "dora", "fp16", "autocast", ("up_proj",), "sdpa", 0.0),
    "llama-dora-down-only-dropout": (LLAMA, "dora", "bf16", "autocast", ("down_proj",), "sdpa", 0.05),
    "llama-lora-v-eager": (LLAMA, "lora", "bf16", "autocast", ("v_proj",), "eager", 0.0),
    "llama-qlora-pure-o-only": (LLAMA, "qlora", "bf16", "pure", ("o_proj",), "sdpa", 0.0),
    "phi3-qdora-down-only": (PHI3, "qdora", "bf16", "autocast", ("down_proj",), "sdpa", 0.0),
}


def case(name):
    config, method, dtype, precision, target, attention, dropout = CASES[name]
    spec = model_from_config({**BASE, **config}, f"tiny-{config['model_type']}-partial")
    train = TrainSpec(method=method, rank=8, target_modules=target, batch_size=2, seq_len=256, dtype=dtype,
                      precision=precision, optim="sgd", attn_implementation=attention, lora_dropout=dropout)
    return spec, train


def off(spec, train):
    planned = plan(spec, "a100-80gb", train, calibrations={}).phases
    trace = traced(spec, train)
    return max(abs(planned[p] / trace[p] - 1) for p in ("forward", "backward"))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_first_layer_partial_targets_planned_equal_traced(torch_stack, name):
    assert off(*case(name)) < BOUND


@pytest.mark.slow
@pytest.mark.parametrize("name", ["granite-qdora-eager-k-down", "llama-dora-up-only", "llama-dora-down-only-dropout"])
def test_first_layer_partial_targets_bound_can_fail(torch_stack, monkeypatch, name):
    """Negative control: a plan that keeps the whole first layer (no first_layer_unrecorded,
    and the DoRA dropout rule of before: the first layer's q/k/v dropout_saved whole) misses."""
    from planner.memory import terms as C
    from planner.memory.variants import Dora

    spec, train = case(name)
    assert C.first_layer_unrecorded(spec, train, C.precision(train, train.dtype)) > 0
    monkeypatch.setattr(C, "first_layer_unrecorded", lambda *a: 0)
    monkeypatch.setattr(Dora, "dropout_unrecorded", Dora.dropout_saved)
    clear_caches()
    try:
        assert off(spec, train) > BOUND
    finally:
        clear_caches()


def test_first_layer_unrecorded_by_hand():
    """The terms on Granite-3.3-8B's shapes: eager attention with only k targeted keeps neither
    the k copy nor the c-byte probabilities in layer 0; nothing with checkpointing, for full
    fine-tuning, or with embed_tokens trained."""
    from planner.memory import terms as C
    from validate.baselines import spec_for

    spec = spec_for("granite-3.3-8b@2L")
    train = TrainSpec(method="qdora", rank=8, target_modules=("k_proj", "down_proj"), batch_size=1, seq_len=1920,
                      dtype="bf16", attn_implementation="eager")
    prec = C.precision(train, "bf16")
    scores = 32 * 1920 * 1920
    assert C.first_layer_unrecorded(spec, train, prec) == 1920 * 4096 * 2 + scores * 2
    for other in (dict(gradient_checkpointing=True), dict(method="full"), dict(modules_to_save=("embed_tokens",))):
        t = replace(train, **other)
        assert C.first_layer_unrecorded(spec, t, C.precision(t, "bf16")) == 0
