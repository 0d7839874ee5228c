"""Every architecture the planner's table added, planned against the exact tracer.

Tiny configs of each model_type (real structure: qk-norms, sandwich and post norms,
fused experts, sinks), one method each so that the set covers full, LoRA, QLoRA and DoRA.
Bound: |planned / traced - 1| < 3%. Calibrated on these configs with every method (full,
lora, qlora, dora; checkpointing on and off): the worst was 1.0245 (QLoRA on a tiny
mixture of experts without checkpointing), every other case within 0.7%.
"""
import pytest

from planner import TrainSpec, plan
from planner.model.catalog import model_from_config

BASE = dict(pad_token_id=0, vocab_size=4096, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=4096,
            tie_word_embeddings=False)
MOE = dict(moe_intermediate_size=64, num_experts=8, num_local_experts=8, num_experts_per_tok=2, intermediate_size=64)
BOUND = 0.03

CASES = [
    ("qwen3", "lora", False), ("gemma3_text", "qlora", False), ("olmo2", "full", False),
    ("granite", "dora", False), ("smollm3", "lora", True), ("phi3", "qlora", True),
    ("qwen3_moe", "lora", False), ("mixtral", "qlora", True), ("gpt_oss", "lora", False),
]


@pytest.mark.slow
@pytest.mark.parametrize("model_type,method,gc", CASES)
def test_planned_equals_traced_within_bound(torch_stack, model_type, method, gc):
    from probes.fake import trace

    extra = MOE if model_type in ("qwen3_moe", "mixtral", "gpt_oss") else {}
    spec = model_from_config({"model_type": model_type, **BASE, **extra}, f"tiny-{model_type}")
    train = TrainSpec(method=method, rank=8, batch_size=2, seq_len=64, dtype="bf16", gradient_checkpointing=gc)
    planned = plan(spec, "a100-80gb", train, calibrations={}).peak_allocated_bytes
    traced = trace(spec, train).peak_allocated_bytes
    assert abs(planned / traced - 1) < BOUND, (planned, traced)


def test_the_bound_can_fail(torch_stack):
    """Negative control: a planner that forgot the merged expert weights of LoRA on a
    mixture of experts (the largest MoE-specific term) is caught by the same bound."""
    from planner.memory import terms as C
    from probes.fake import trace

    spec = model_from_config({"model_type": "qwen3_moe", **BASE, **MOE}, "tiny-qwen3_moe")
    train = TrainSpec(method="lora", rank=8, batch_size=2, seq_len=64, dtype="bf16")
    p = plan(spec, "a100-80gb", train, calibrations={})
    merged = C.moe_saved_parts(spec, train, C.precision(train, "bf16"))["merged"] * spec.num_layers
    traced = trace(spec, train).peak_allocated_bytes
    assert abs(p.peak_allocated_bytes / traced - 1) < BOUND
    assert abs((p.peak_allocated_bytes - merged) / traced - 1) >= BOUND


# Settings a training script sets, on a tiny Llama without checkpointing (tracer: dropout on
# CUDA's native_dropout path, eager as asked). With checkpointing the planner is low on these
# toy dimensions (a 512-token vocabulary lets in-layer moments win; see README).
SETTINGS = [("lora", dict(lora_dropout=0.05)), ("dora", dict(lora_dropout=0.1)),
            ("lora", dict(attn_implementation="eager")), ("qlora", dict(attn_implementation="eager"))]


@pytest.mark.slow
@pytest.mark.parametrize("method,settings", SETTINGS)
def test_training_settings_planned_equal_traced_within_bound(torch_stack, method, settings):
    from probes.fake import trace

    spec = model_from_config({"model_type": "llama", **BASE, "vocab_size": 512}, "tiny-llama")
    train = TrainSpec(method=method, rank=8, batch_size=2, seq_len=256, dtype="bf16", **settings)
    planned = plan(spec, "a100-80gb", train, calibrations={}).peak_allocated_bytes
    traced = trace(spec, train).peak_allocated_bytes
    assert abs(planned / traced - 1) < BOUND, (planned, traced)


# Eager attention where its seq x seq tensors dominate (4 heads, seq 1024, checkpointing): the
# softmax moments of the forward and of the backward are the peaks. Calibrated: LoRA 0.9993,
# full 0.9930 of the trace.
EAGER_LONG = dict(attn_implementation="eager", gradient_checkpointing=True, seq_len=1024, batch_size=1)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "full"])
def test_eager_softmax_moments_planned_equal_traced_within_bound(torch_stack, method):
    from probes.fake import trace

    spec = model_from_config({"model_type": "llama", **BASE, "vocab_size": 512}, "tiny-llama")
    train = TrainSpec(method=method, rank=8, dtype="bf16", **EAGER_LONG)
    p = plan(spec, "a100-80gb", train, calibrations={})
    traced = trace(spec, train).peak_allocated_bytes
    assert abs(p.peak_allocated_bytes / traced - 1) < BOUND, (p.peak_allocated_bytes, traced)
    # negative control: without the softmax workspace the plan misses the trace by far
    assert p.components["transient/attention"] > 0
    assert abs((p.peak_allocated_bytes - p.components["transient/attention"]) / traced - 1) >= BOUND


# ---------------------------------------------------------------- issue 18: mixture-of-experts families
# Tiny configs of each new family: the tracer equals a real CPU step to the byte (one method
# each, LoRA all-linear: what peft reaches differs by family), and the plan is within the bound.
MOE_FAMILIES = {
    "qwen2_moe": dict(moe_intermediate_size=64, shared_expert_intermediate_size=96, num_experts=8,
                      num_experts_per_tok=2),
    "olmoe": dict(intermediate_size=64, num_experts=8, num_experts_per_tok=2),
    # Llama 4: four layers that hold every kind (dense and MoE, chunked RoPE and full no-RoPE),
    # chunks shorter than the sequence, experts that see every token, a shared expert, a router
    # that peft cannot wrap (left out of all-linear by the builder)
    "llama4_text": dict(num_hidden_layers=4, intermediate_size=256, intermediate_size_mlp=384, num_local_experts=4,
                        num_experts_per_tok=1, interleave_moe_layer_step=2, attention_chunk_size=32),
    # Phi-3.5-MoE: LayerNorm with bias, q/k/v/o and lm_head biases, sparsemixer top-2, input jitter
    "phimoe": dict(intermediate_size=64, num_local_experts=8, num_experts_per_tok=2, attention_bias=True,
                   lm_head_bias=True, input_jitter_noise=0.01),
}


def _tiny_moe(model_type):
    return {"model_type": model_type, **BASE, "vocab_size": 512, **MOE_FAMILIES[model_type]}


@pytest.mark.slow
@pytest.mark.parametrize("model_type", sorted(MOE_FAMILIES))
def test_moe_family_fake_trace_equals_cpu_step_to_the_byte(torch_stack, model_type):
    from probes import cpu, fake

    spec = model_from_config(_tiny_moe(model_type), f"tiny-{model_type}")
    train = TrainSpec(method="lora", rank=8, batch_size=2, seq_len=64, dtype="bf16")
    real, traced = cpu.measure(spec, train), fake.trace(spec, train)
    assert traced.peak_allocated_bytes == real.peak_allocated_bytes
    assert traced.phase_peaks == real.phase_peaks and traced.breakdown == real.breakdown


@pytest.mark.slow
@pytest.mark.parametrize("model_type", sorted(MOE_FAMILIES))
@pytest.mark.parametrize("method,gc", [("qlora", True), ("full", False)])
def test_moe_family_planned_equals_traced_within_bound(torch_stack, model_type, method, gc):
    from probes.fake import trace

    spec = model_from_config({**_tiny_moe(model_type), "vocab_size": 4096}, f"tiny-{model_type}")
    train = TrainSpec(method=method, rank=8, batch_size=2, seq_len=64, dtype="bf16", gradient_checkpointing=gc)
    planned = plan(spec, "a100-80gb", train, calibrations={}).peak_allocated_bytes
    traced = trace(spec, train).peak_allocated_bytes
    assert abs(planned / traced - 1) < BOUND, (planned, traced)
