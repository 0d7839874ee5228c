"""``--precision mixed`` (fp32 master weights, autocast forward) with adapters: the planner's
phases against the exact tracer, on one GPU and one rank of two under FSDP.

What these pin (each with a negative control: the plan under the rule it replaced misses the
trace by more than the bound):
- frozen fp32 Linear weights' autocast copies are not cached: without checkpointing the
  matmuls keep them, with checkpointing no layer does (only lm_head's copy, outside the
  checkpointed layers, stays at the loss); under FSDP too;
- the first layer's q/k/v keep no copy when the embedding output needs no gradient;
- QLoRA / QDoRA make no copy of a 4-bit weight; bitsandbytes' backward dequantizes it to the
  quant state's fp32 and casts it to the compute dtype (c + 4 bytes per element);
- a trained fp32 lm_head (modules_to_save) gets its gradient in the compute dtype, cast to
  fp32, both live at once.

Bound: every phase within 0.1% of the trace. Calibrated on these tiny Llamas (hidden 128,
2 layers, batch 1 x 32): the worst phase was 0.07% off (FSDP's first-layer moment; the
tracer's 4-byte step counters and a few KiB of constants the planner leaves out); the terms
the negative controls remove are 0.3% to 25% of these totals. The wide-MLP QLoRA case is
held to 3% in backward (QLORA_BOUND, below).
"""
import pytest

from planner import TrainSpec, plan
from planner.memory import terms as C
from planner.model import counts
from planner.model.catalog import model_from_config

BOUND = 0.001
BASE = dict(model_type="llama", pad_token_id=0, vocab_size=4096, hidden_size=128, intermediate_size=256,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
            max_position_embeddings=4096, tie_word_embeddings=False)
# a small vocabulary and a wide MLP: the 4-bit down_proj's backward dequantization is the peak
WIDE = dict(BASE, vocab_size=512, intermediate_size=1024)
# Known misses outside this class, the same bytes under autocast as under mixed: the wide-MLP
# QLoRA forward (at the last down_proj's dense weight) is 1.8% under the trace, and its
# backward moment at down_proj's dequantization leaves out the gradients in flight there (the
# layer output's, lora_A's input gradient and its weight gradient: 2.7%). That case is held
# to QLORA_BOUND in backward, its forward is not compared.
NOT_MIXED = {("qlora", "forward")}
QLORA_BOUND = 0.03
CASES = {
    "lora_gc": (BASE, dict(method="lora", gradient_checkpointing=True)),
    "lora": (BASE, dict(method="lora")),
    "rslora_fp16_lm_head": (BASE, dict(method="rslora", dtype="fp16", gradient_checkpointing=True,
                                       modules_to_save=("lm_head",), optim="sgd")),
    "qlora": (WIDE, dict(method="qlora")),
    "lora_fsdp": (BASE, dict(method="lora", num_gpus=2, sharding="fsdp")),
    "lora_gc_fsdp": (BASE, dict(method="lora", gradient_checkpointing=True, num_gpus=2, sharding="fsdp")),
}


def case(name):
    config, settings = CASES[name]
    spec = model_from_config(dict(config), "tiny-llama-wide" if config is WIDE else "tiny-llama")
    train = TrainSpec(**{"rank": 8, "batch_size": 1, "seq_len": 32, "dtype": "bf16", "precision": "mixed",
                         **settings})
    return spec, train


_traces = {}


def traced(name):
    from probes import fake, parallel

    if name not in _traces:
        spec, train = case(name)
        _traces[name] = (parallel.trace(spec, train, train.num_gpus, train.sharding) if train.parallel
                         else fake.trace(spec, train)).phase_peaks
    return _traces[name]


def planned(name):
    spec, train = case(name)
    return plan(spec, "a100-80gb", train, calibrations={})


def off(planned_bytes, traced_bytes):
    return abs(planned_bytes / traced_bytes - 1)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_every_phase_planned_equals_traced(torch_stack, name):
    p, trace = planned(name), traced(name)
    for phase, size in trace.items():
        if (name, phase) in NOT_MIXED:
            continue
        bound = QLORA_BOUND if (name, phase) == ("qlora", "backward") else BOUND
        assert off(p.phases[phase], size) < bound, (phase, p.phases[phase], size)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lora_gc", "lora_gc_fsdp"])
def test_checkpointed_layers_keep_no_frozen_weight_copy(torch_stack, name):
    """The rule replaced: every layer's 16-bit Linear weight copy kept at the loss."""
    spec, train = case(name)
    copies = C.mixed_linear_copies(spec, train) * 2
    assert copies > 0
    p, trace = planned(name), traced(name)
    assert off(p.phases["forward"] + copies, trace["forward"]) >= BOUND


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lora", "lora_fsdp"])
def test_first_layer_attention_inputs_keep_no_copy(torch_stack, name):
    """Without checkpointing, the plan that keeps the first layer's q/k/v copies misses."""
    spec, train = case(name)
    prec = C.precision(train, "bf16")
    extra = C.first_layer_uncopied(spec, train, prec, backward=True) * prec.compute
    assert extra > 0
    assert off(planned(name).phases["backward"] + extra, traced(name)["backward"]) >= BOUND


@pytest.mark.slow
def test_4bit_weights_get_no_autocast_copy_and_an_fp32_backward_dequant(torch_stack):
    spec, train = case("qlora")
    prec = C.precision(train, "bf16")
    p, trace = planned("qlora"), traced("qlora")
    assert p.peak_moment == "layer_dequant"
    # the rule replaced: a bf16 copy of every (packed) Linear weight kept for backward
    assert off(p.phases["backward"] + counts.linear_weight_params(spec) * prec.compute,
               trace["backward"]) >= QLORA_BOUND
    # a c-byte dense weight only, as in the forward
    fp32_part = max(lin.in_features * lin.out_features for lin in spec.linears) * 4
    assert off(p.phases["backward"] - fp32_part, trace["backward"]) >= QLORA_BOUND
    # the forward and the optimizer step hold no copy of a 4-bit weight either
    copies = counts.linear_weight_params(spec) * prec.compute
    assert off(p.phases["optimizer"], trace["optimizer"]) < BOUND
    assert C.autocast_weight_copies(spec, train, prec) < copies


@pytest.mark.slow
def test_trained_fp32_lm_head_gradient_cast(torch_stack):
    spec, train = case("rslora_fp16_lm_head")
    prec = C.precision(train, "fp16")
    p, trace = planned("rslora_fp16_lm_head"), traced("rslora_fp16_lm_head")
    assert p.peak_moment == "lm_head"
    # the fp16 gradient beside the fp32 one it is cast to (the second lm_head moment)
    moments = C.lm_head_backward(spec, train, prec)
    assert moments[1][0] == spec.vocab_size * spec.hidden_size * (2 + 4)
    cast = spec.vocab_size * spec.hidden_size * 2
    assert off(p.phases["backward"] - cast, trace["backward"]) >= BOUND


def test_lm_head_grad_cast_only_where_a_cast_happens():
    """No cast for a 16-bit lm_head (autocast on a 16-bit model), no lm_head moment without a
    trained lm_head; a cast for QLoRA's fp32 lm_head under autocast."""
    spec, train = case("rslora_fp16_lm_head")
    t = TrainSpec(method="lora", dtype="bf16", modules_to_save=("lm_head",))
    assert len(C.lm_head_backward(spec, t, C.precision(t, "bf16"))) == 1
    t = TrainSpec(method="lora", dtype="bf16", precision="mixed")
    assert C.lm_head_backward(spec, t, C.precision(t, "bf16")) == ()
    t = TrainSpec(method="qlora", dtype="bf16", modules_to_save=("lm_head",))
    assert C.lm_head_backward(spec, t, C.precision(t, "bf16"))[1][0] == spec.vocab_size * spec.hidden_size * (2 + 4)


def test_dora_under_mixed_carries_a_note():
    """The DoRA / QDoRA transients under mixed are not modelled apart: the plan says so (and
    only there)."""
    spec, _ = case("lora")
    noted = lambda t: any("DoRA / QDoRA under --precision mixed" in n  # noqa: E731
                          for n in plan(spec, "a100-80gb", t, calibrations={}).notes)
    assert noted(TrainSpec(method="qdora", precision="mixed", dtype="bf16"))
    assert not noted(TrainSpec(method="qdora", dtype="bf16"))
    assert not noted(TrainSpec(method="lora", precision="mixed", dtype="bf16"))
